"""PROTOCOL.md's promises that outside clients found broken (issue 14, items 1-9 and 13), checked on the bytes a
real daemon sends: a subprocess on 127.0.0.1, raw DEALER sockets, replies decoded with plain msgpack as a client
in another language would, and the daemon's resident memory read from /proc.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from daemon.testing import Client, DaemonProcess
from protocol import DecodeParams, Generate, Hello, Stream, Unload, pcm_decode, pcm_encode, unpack
from protocol.framing import MAX_NESTING, OVERSIZE_FACTOR

pytestmark = pytest.mark.slow

SR = 32000
MAX_BYTES = 24 * 1024 * 1024  # small enough to send many oversized requests quickly
QUICK = dict(duration_s=0.2, preset="live", params=DecodeParams(decoding_steps=(1, 1, 1, 1)))
JS_SAFE = 2**53 - 1  # Number.MAX_SAFE_INTEGER: larger integers lose digits in a default msgpack-javascript decode


def _daemon(tmp_path_factory, *extra: str) -> DaemonProcess:
    cache = tmp_path_factory.getbasetemp() / "magnet-rt-cache"
    return DaemonProcess("--model", "tiny-random", "--device", "cpu", "--max-message-bytes", str(MAX_BYTES), *extra,
                         env={"MAGNET_RT_CACHE": str(cache), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = _daemon(tmp_path_factory)
    d.start()
    yield d
    assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture
def dealer(daemon, zctx):
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(daemon.endpoint)
    yield sock
    sock.close()


def raw_reply(sock: zmq.Socket, timeout_s: float = 20.0) -> dict:
    """The next reply as a plain msgpack map (what a non-Python client decodes), after checking it is valid."""
    assert sock.poll(int(timeout_s * 1000)), "no reply"
    data = sock.recv()
    unpack(data)  # and it is a valid message
    return msgpack.unpackb(data, raw=False)


def req(type_: str, rid: str = "r1", **fields) -> bytes:
    return msgpack.packb({"v": 1, "type": type_, "id": rid, **fields}, use_bin_type=True)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---- 1. f32 PCM is in [-1, 1] ---------------------------------------------------------------------------------
def test_f32_pcm_is_clipped_on_encode_and_refused_beyond_unit_range_on_decode():
    x = np.array([[0.5, 1.5, -2.0, 1.0]], dtype=np.float32)
    got = np.frombuffer(pcm_encode(x, "f32"), dtype="<f4")
    assert got.tolist() == [0.5, 1.0, -1.0, 1.0]
    with pytest.raises(Exception, match="outside"):
        pcm_decode(np.array([0.0, 1.01], dtype="<f4").tobytes(), "f32", 1)
    assert pcm_decode(np.array([-1.0, 1.0], dtype="<f4").tobytes(), "f32", 1).tolist() == [[-1.0, 1.0]]


def test_daemon_refuses_inline_f32_beyond_unit_range(dealer):
    data = np.r_[np.zeros(SR // 2), 1.5].astype("<f4").tobytes()
    dealer.send(req("inpaint", source={"audio": {"data": data, "sample_rate": SR, "channels": 1}}, start_s=0.1,
                    end_s=0.3, prompt="x", **{"preset": "live"}))
    err = raw_reply(dealer)
    assert (err["code"], err["details"]) == ("invalid_audio", {"field": "source.audio.data"}), err
    assert "outside [-1, 1]" in err["message"]


# ---- 2. seeds the daemon picks survive a JavaScript decode ------------------------------------------------------
def test_picked_seeds_are_exact_as_doubles(daemon, zctx):
    c = Client(zctx, daemon.endpoint)
    try:
        for k in range(6):  # the old 62-bit picks were below 2^53 with probability 2^-9 each
            msgs = c.request(Generate(id=f"s{k}", prompt="x", variations=2, stream=Stream(audio=False), **QUICK))
            accepted, done = msgs[0], msgs[-1]
            assert done.TYPE == "done", msgs[-1]
            for seed in (accepted.seed, *done.seeds):
                assert seed <= JS_SAFE and int(float(seed)) == seed, seed
    finally:
        c.close()


# ---- 3. too_large, 4. nesting, 5. nil ids, 6. reasons ---------------------------------------------------------------
def test_frame_over_the_limit_gets_too_large_with_a_nil_id(dealer):
    dealer.send(b"\x00" * (MAX_BYTES + 1024))
    err = raw_reply(dealer)
    assert err["code"] == "too_large" and "id" in err and err["id"] is None, err
    assert err["details"] == {"size": MAX_BYTES + 1024, "max": MAX_BYTES}
    dealer.send(req("ping", "after"))
    assert raw_reply(dealer)["type"] == "pong"


def test_frame_over_twice_the_limit_drops_the_peer_without_reply(daemon, zctx):
    big = zctx.socket(zmq.DEALER)
    big.linger = 0
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    big.connect(daemon.endpoint)
    try:
        big.send(b"\x00" * (OVERSIZE_FACTOR * MAX_BYTES + 1))
        assert monitor.poll(20_000), "the daemon did not drop the peer"
        assert not big.poll(0)
    finally:
        big.disable_monitor()
        monitor.close(linger=0)
        big.close()


def _nest(levels: int) -> object:
    """A value that makes a message `levels` deep: the message map is level 1."""
    v: object = 1
    for _ in range(levels - 1):
        v = [v]
    return v


def test_nesting_beyond_four_levels_is_bad_request_even_in_unknown_fields(dealer):
    dealer.send(req("ping", "deep4", extra=_nest(MAX_NESTING)))
    assert raw_reply(dealer)["type"] == "pong"
    for levels in (MAX_NESTING + 1, 6):
        dealer.send(req("ping", "deep", extra={"a": {"b": _nest(levels - 2)}}))
        err = raw_reply(dealer)
        assert err["code"] == "bad_request" and err["id"] is None and "deeper than 4 levels" in err["message"], err


@pytest.mark.parametrize("frame", [b"\xc1\xc1 garbage", b"", b"\x01\x02", req("ping")[:-2]])
def test_bad_request_always_says_why_and_carries_the_id_key(dealer, frame):
    dealer.send(frame)
    err = raw_reply(dealer)
    assert err["code"] == "bad_request" and "id" in err and err["id"] is None, err
    reason = err["message"].partition(": ")[2]
    assert len(reason) > 5, err["message"]


def test_missing_v_is_invalid_field_naming_v(dealer):
    dealer.send(msgpack.packb({"type": "ping", "id": "nv"}))
    err = raw_reply(dealer)
    assert (err["code"], err["id"], err["details"]) == ("invalid_field", "nv", {"field": "v"}), err


# ---- 7. unknown_preset lists what welcome offers --------------------------------------------------------------------
def test_unknown_preset_lists_only_the_offered_presets(daemon, zctx):
    c = Client(zctx, daemon.endpoint)
    try:
        welcome = c.call(Hello(id="h", client="t"))
        assert "rescored" not in welcome.presets
        for preset in ("nope", "rescored"):
            err = c.request(Generate(id=f"p-{preset}", prompt="x", preset=preset))[-1]
            listed = err.message.partition("its presets: ")[2].split(", ")
            assert err.code == "unknown_preset" and listed == list(welcome.presets), err
    finally:
        c.close()


# ---- 9. memory stays flat across refused oversized requests -----------------------------------------------------
def test_rss_stays_flat_across_repeated_oversized_requests(daemon, dealer):
    """Inline audio just under the frame limit (refused once decoded: its last sample is beyond [-1, 1]) and frames
    over the limit (too_large), 8 rounds each after two warm-up rounds. Bound: the growth after warm-up stays under
    half of one request's size (before the fix each refused inpaint kept ~3 copies of its audio until a GC)."""
    samples = np.zeros((MAX_BYTES - 4096) // 4, dtype="<f4")
    samples[-1] = 2.0
    audio = samples.tobytes()
    inpaint = req("inpaint", source={"audio": {"data": audio, "sample_rate": 16000, "channels": 1}}, start_s=0.1,
                  end_s=0.3, prompt="x", preset="live")
    oversize = b"\x00" * (MAX_BYTES + MAX_BYTES // 2)

    def round_trip() -> None:
        dealer.send(inpaint)
        assert raw_reply(dealer)["code"] == "invalid_audio"
        dealer.send(oversize)
        assert raw_reply(dealer)["code"] == "too_large"

    for _ in range(2):  # warm-up: glibc raises its mmap threshold after the first large frees (a one-time step)
        round_trip()
    base = rss_bytes(daemon.proc.pid)
    peak, deadline = base, time.monotonic() + 120
    for _ in range(8):
        round_trip()
        peak = max(peak, rss_bytes(daemon.proc.pid))
        assert time.monotonic() < deadline
    growth = peak - base
    print(f"RSS after warm-up {base / 2**20:.0f} MiB, peak over 8 rounds +{growth / 2**20:.1f} MiB")
    assert growth < MAX_BYTES // 2, f"RSS grew by {growth / 2**20:.1f} MiB over 8 rounds (base {base / 2**20:.0f} MiB)"


# ---- 13. the default model cannot be unloaded ------------------------------------------------------------------------
def test_unloading_the_default_model_is_refused_and_it_keeps_serving(daemon, zctx):
    c = Client(zctx, daemon.endpoint)
    try:
        err = c.call(Unload(id="u", model="tiny-random"))
        assert (err.TYPE, err.code, err.details) == ("error", "invalid_field", {"field": "model"}), err
        assert "default model" in err.message
        assert c.request(Generate(id="g", prompt="x", **QUICK))[-1].TYPE == "done"
    finally:
        c.close()


# ---- 8. shutdown: no request is accepted after the signal; a second signal cancels the running ones -----------------
def test_requests_after_sigterm_are_refused_and_a_second_signal_cancels(tmp_path_factory, zctx):
    d = _daemon(tmp_path_factory)
    d.start()
    c = Client(zctx, d.endpoint, ping_every_s=0)
    try:
        slow = dict(prompt="x", duration_s=4.0, preset="live", params=DecodeParams(decoding_steps=(200, 1, 1, 1)),
                    stream=Stream(audio=False))
        c.send(Generate(id="run", **slow))
        assert c.next("run").TYPE == "accepted"
        assert c.next("run", timeout=30).TYPE == "progress"
        d.terminate()
        for k in range(20):  # right after the signal: every one is refused, none accepted then cancelled
            c.send(Generate(id=f"late{k}", prompt="x", **QUICK))
        for k in range(20):
            first = c.next(f"late{k}", timeout=20)
            assert (first.TYPE, getattr(first, "code", None)) == ("error", "shutting_down"), first
        d.terminate()  # a second signal: the running request is cancelled at its next step
        msgs = [m for m in c.until_terminal("run", timeout=30) if m.TYPE != "progress"]
        assert [m.TYPE for m in msgs] == ["cancelled"], msgs
        assert d.wait(30) == 0, d.log()[-3000:]
    finally:
        c.close()
        d.kill()


# ---- 18. the daemon says how many CPU threads it chose ---------------------------------------------------------------
def test_daemon_logs_its_cpu_threads(daemon):
    assert "torch CPU threads: 1" in daemon.log()  # OMP_NUM_THREADS=1 in its environment
