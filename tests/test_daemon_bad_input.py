"""The catalogue of bad inputs: each gets the right typed `error` on the socket that sent it, and the same
socket is served again right after (a `ping` answered). Then the cases that need more than one frame: a
frame over ZMQ_MAXMSGSIZE, a duplicate id, a full queue.
"""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
import soundfile as sf
import zmq
from zmq.utils.monitor import recv_monitor_message

from daemon.testing import Client, DaemonProcess
from protocol import Cancel, DecodeParams, Generate, Ping, Stream, unpack

pytestmark = pytest.mark.slow

SR = 32000
MAX_BYTES = 4 * 1024 * 1024
SLOW = DecodeParams(decoding_steps=(200, 1, 1, 1))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    allowed, outside = tmp_path_factory.mktemp("allowed"), tmp_path_factory.mktemp("outside")
    tone = (0.1 * np.sin(np.arange(SR // 2) / 10)).astype(np.float32)
    sf.write(allowed / "ok.wav", tone, SR)
    sf.write(outside / "secret.wav", tone, SR)
    os.symlink(outside / "secret.wav", allowed / "escape.wav")
    os.mkfifo(allowed / "fifo.wav")
    sf.write(allowed / "long.wav", np.zeros(8000 * 601, np.int16), 8000)  # 601 s: beyond inpaint's 10 minutes
    return allowed, outside


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, dirs):
    cache = tmp_path_factory.getbasetemp() / "magnet-rt-cache"
    d = DaemonProcess("--model", "tiny-random", "--device", "cpu", "--allow-dir", str(dirs[0]),
                      "--max-message-bytes", str(MAX_BYTES), "--max-queue", "2",
                      env={"MAGNET_RT_CACHE": str(cache), "OMP_NUM_THREADS": "2"})
    d.start()
    yield d
    assert d.stop() == 0, d.log()[-3000:]


def raw(msg: dict) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def req(type_: str, rid: str = "r1", **fields) -> bytes:
    return raw({"v": 1, "type": type_, "id": rid, **fields})


def f32(x) -> dict:
    return {"data": np.asarray(x, dtype="<f4").tobytes(), "sample_rate": SR, "channels": 1}


CLIP = f32(np.zeros(SR))  # 1 s of silence
LIVE = {"preset": "live", "params": {"decoding_steps": [1, 1, 1, 1]}}


def inpaint(source: dict, start: float = 0.2, end: float = 0.5, **kw) -> bytes:
    return req("inpaint", source=source, start_s=start, end_s=end, prompt="x", **LIVE, **kw)


def path_source(name: str):
    return lambda dirs: {"path": str(dirs[0] / name) if name else ""}


# (case, frames -- bytes, tuple of frames, or a function of the folders --, code, reply id, details subset)
CASES = [
    ("not msgpack", b"\xc1\xc1 this is not msgpack", "bad_request", None, {}),
    ("empty frame", b"", "bad_request", None, {}),
    ("two frames", (req("ping"), b"extra"), "bad_request", None, {}),
    ("msgpack array", raw([1, 2, 3]), "bad_request", None, {}),
    ("msgpack string", raw("generate"), "bad_request", None, {}),
    ("truncated map", req("ping")[:-3], "bad_request", None, {}),
    ("ext type", raw({"v": 1, "type": "ping", "id": "r1", "t": msgpack.ExtType(5, b"x")}), "bad_request", None, {}),
    ("unknown type", req("teleport"), "unknown_type", "r1", {"type": "teleport"}),
    ("daemon-side type", req("pong", time=1.0), "unknown_type", "r1", {"type": "pong"}),
    ("wrong version", raw({"v": 99, "type": "ping", "id": "r1"}), "unsupported_version", "r1", {"supported": [1]}),
    ("missing version", raw({"type": "ping", "id": "r1"}), "invalid_field", "r1", {"field": "v"}),
    ("missing id", raw({"v": 1, "type": "ping"}), "invalid_field", None, {"field": "id"}),
    ("missing field", req("cancel"), "invalid_field", "r1", {"field": "target"}),
    ("mistyped field", req("generate", prompt="x", duration_s="long"), "invalid_field", "r1",
     {"field": "duration_s"}),
    ("bool as int", req("generate", prompt="x", variations=True), "invalid_field", "r1", {"field": "variations"}),
    ("str as bin", inpaint({"audio": {**CLIP, "data": "abcd"}}), "invalid_field", "r1",
     {"field": "source.audio.data"}),
    ("no prompt", req("generate"), "invalid_field", "r1", {"field": "prompt"}),
    ("tempo beyond 400 bpm", req("generate", prompt="drum and bass at 999 bpm"), "invalid_field", "r1",
     {"field": "prompt"}),
    ("tempo in one of the prompts", req("generate", prompts=["house, 124 bpm", "dub, 5 bpm"]), "invalid_field", "r1",
     {"field": "prompts"}),
    ("tempo of an inpaint prompt", req("inpaint", source={"audio": CLIP}, start_s=0.2, end_s=0.6,
                                       prompt="1000 bpm"), "invalid_field", "r1", {"field": "prompt"}),
    ("too many outputs", req("generate", prompts=["a", "b", "c"], variations=8), "invalid_field", "r1",
     {"field": "variations"}),
    ("negative seed", req("generate", prompt="x", seed=-1), "invalid_field", "r1", {"field": "seed"}),
    ("seed beyond the engine", req("generate", prompt="x", seed=2**63 - 1), "invalid_field", "r1", {"field": "seed"}),
    ("duration beyond long-form", req("generate", prompt="x", duration_s=700.0), "invalid_field", "r1",
     {"field": "duration_s"}),
    ("bad decoding steps", req("generate", prompt="x", params={"decoding_steps": [1, 2]}), "invalid_field", "r1",
     {"field": "params.decoding_steps"}),
    ("unknown preset", req("generate", prompt="x", preset="nope"), "unknown_preset", "r1", {"preset": "nope"}),
    ("unknown model", req("generate", prompt="x", model="nope"), "unknown_model", "r1", {"model": "nope"}),
    ("model not loaded", req("generate", prompt="x", model="facebook/magnet-small-10secs"), "model_not_loaded",
     "r1", {"model": "facebook/magnet-small-10secs"}),
    ("load unknown model", req("load", model="nope"), "unknown_model", "r1", {"model": "nope"}),
    ("load a model that cannot be fetched", req("load", model="facebook/magnet-small-10secs"), "unknown_model", "r1",
     {"model": "facebook/magnet-small-10secs"}),  # tests run with HF_HUB_OFFLINE=1 (conftest)
    ("cancel unknown target", req("cancel", target="ghost"), "not_found", "r1", {"target": "ghost"}),
    ("NaN audio", inpaint({"audio": f32([0.0] * 1000 + [np.nan] + [0.0] * 31000)}), "invalid_audio", "r1",
     {"field": "source.audio.data"}),
    ("inf audio", inpaint({"audio": f32([np.inf] * SR)}), "invalid_audio", "r1", {"field": "source.audio.data"}),
    ("empty audio", inpaint({"audio": {**CLIP, "data": b""}}), "invalid_audio", "r1", {}),
    ("odd byte count", inpaint({"audio": {**CLIP, "data": b"\x00" * 4001}}), "invalid_audio", "r1", {}),
    ("bad sample rate", inpaint({"audio": {**CLIP, "sample_rate": 100}}), "invalid_audio", "r1", {}),
    ("three channels", inpaint({"audio": {**CLIP, "channels": 3}}), "invalid_audio", "r1", {}),
    ("file over the 10 minute limit", lambda d: inpaint({"path": str(d[0] / "long.wav")}), "invalid_audio", "r1",
     {"field": "source.path"}),
    ("region outside the clip", inpaint({"audio": CLIP}, 0.5, 2.0), "invalid_region", "r1", {"field": "end_s"}),
    ("region shorter than a span", inpaint({"audio": CLIP}, 0.40, 0.43), "invalid_region", "r1", {}),
    ("continue by less than a span", req("continue", source={"audio": CLIP}, prompt="x", duration_s=0.01),
     "invalid_region", "r1", {"field": "duration_s"}),
    ("source with audio and path", inpaint({"audio": CLIP, "path": "/tmp/x.wav"}), "invalid_field", "r1",
     {"field": "source"}),
    ("path outside allowed dirs", lambda d: inpaint({"path": str(d[1] / "secret.wav")}), "forbidden_path", "r1", {}),
    ("path traversal", lambda d: inpaint({"path": f"{d[0]}/../{d[1].name}/secret.wav"}), "forbidden_path", "r1",
     {}),
    ("symlink escape", lambda d: inpaint({"path": str(d[0] / "escape.wav")}), "forbidden_path", "r1", {}),
    ("fifo", lambda d: inpaint({"path": str(d[0] / "fifo.wav")}), "forbidden_path", "r1", {}),
    ("relative path", inpaint({"path": "ok.wav"}), "forbidden_path", "r1", {}),
    ("device file", inpaint({"path": "/dev/zero"}), "forbidden_path", "r1", {}),
    ("missing file", lambda d: inpaint({"path": str(d[0] / "missing.wav")}), "invalid_audio", "r1",
     {"field": "source.path"}),
    ("region beyond a file clip", lambda d: inpaint({"path": str(d[0] / "ok.wav")}, 0.2, 0.9), "invalid_region",
     "r1", {"field": "end_s"}),
]


@pytest.mark.parametrize(("frames", "code", "rid", "details"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_typed_error_and_socket_is_served_again(daemon, zctx, dirs, frames, code, rid, details):
    c = Client(zctx, daemon.endpoint)
    try:
        frames = frames(dirs) if callable(frames) else frames
        c.send_raw(*(frames if isinstance(frames, tuple) else (frames,)))
        err = c.next(rid, timeout=30)
        assert err.TYPE == "error" and err.code == code, err
        assert err.id == rid and err.message
        assert details.items() <= err.details.items(), err.details
        assert c.call(Ping(id="after")).TYPE == "pong"
    finally:
        c.close()


def test_non_msgpack_from_bare_dealer_gets_a_msgpack_map_with_code(daemon, zctx):
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(daemon.endpoint)
    try:
        sock.send(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.poll(10_000), "no answer"
        reply = msgpack.unpackb(sock.recv(), raw=False)
        assert isinstance(reply, dict) and reply["code"] == "bad_request" and reply["type"] == "error"
    finally:
        sock.close()


def test_oversize_frame_drops_peer_and_daemon_serves_others(daemon, zctx):
    big = zctx.socket(zmq.DEALER)
    big.linger = 0
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    big.connect(daemon.endpoint)
    big.send(b"\x00" * (2 * MAX_BYTES + 1024))  # beyond ZMQ_MAXMSGSIZE (2x the limit): libzmq drops the peer
    try:
        assert monitor.poll(20_000), "the daemon did not drop the peer"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not big.poll(0)  # and sent nothing back
    finally:
        big.disable_monitor()
        monitor.close(linger=0)
        big.close()
    c = Client(zctx, daemon.endpoint)
    try:
        assert c.call(Ping(id="p")).TYPE == "pong"
        msgs = c.request(Generate(id="g", prompt="x", duration_s=0.2, preset="live",
                                  params=DecodeParams(decoding_steps=(1, 1, 1, 1))), timeout=60)
        assert msgs[-1].TYPE == "done"
    finally:
        c.close()


def test_duplicate_id_and_full_queue(daemon, zctx):
    c = Client(zctx, daemon.endpoint)
    slow = dict(prompt="x", duration_s=4.0, preset="live", params=SLOW, stream=Stream(audio=False))
    try:
        c.send(Generate(id="run", **slow))
        assert c.next("run").TYPE == "accepted"
        assert c.next("run", timeout=30).TYPE == "progress"
        c.send(Generate(id="run", prompt="y", duration_s=0.2))
        dup = c.next(None)  # duplicate_id comes with a nil id (PROTOCOL.md §8)
        assert (dup.code, dup.details) == ("duplicate_id", {"id": "run"})
        for rid in ("q1", "q2"):  # --max-queue 2
            c.send(Generate(id=rid, **slow))
            assert c.next(rid).TYPE == "accepted"
        c.send(Generate(id="q3", **slow))
        busy = c.next("q3")
        assert (busy.code, busy.details) == ("busy", {"queue": 2, "max_queue": 2})
        for rid in ("q2", "q1", "run"):
            c.send(Cancel(id=f"cancel-{rid}", target=rid))
        for rid in ("q2", "q1", "run"):
            assert c.until_terminal(rid)[-1].TYPE == "cancelled"
            assert c.next(f"cancel-{rid}").TYPE == "cancel_reply"
        assert c.call(Ping(id="p")).TYPE == "pong"
    finally:
        c.close()


def test_unpack_is_the_only_decoder_used():
    """The replies above were all decoded by protocol.unpack, which validates them against PROTOCOL.md."""
    assert unpack(msgpack.packb({"v": 1, "type": "pong", "id": "x", "time": 1.0})).TYPE == "pong"
