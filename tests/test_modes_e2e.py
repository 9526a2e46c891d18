"""The modes of `generate` end to end (PROTOCOL.md §6): rescored, hybrid, long-form and endless, against a real
daemon started with `--rescorer tiny-random` on 127.0.0.1, through raw DEALER sockets, the Python client and the
CLI. tiny-random makes noise: the checks are about lengths, order, seeds, prompts per window and terminals.
Few decoding steps keep each window well under a second on two CPU cores; every wait has a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq
from conftest import sigint_default

from clients.client import MagnetClient
from daemon.testing import Client, DaemonProcess
from protocol import Cancel, DecodeParams, Generate, Hello, SetPrompt, Status, pcm_decode

pytestmark = pytest.mark.slow

SR, FR = 32000, 50
STEPS = DecodeParams(decoding_steps=(3, 1, 1, 1))
EXE = Path(sys.executable).parent / "magnet-rt"


def gen(rid: str, **kw) -> Generate:
    kw.setdefault("prompt", "dusty breakbeat")
    kw.setdefault("params", STEPS)
    return Generate(id=rid, preset="live", seed=kw.pop("seed", 5), **kw)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "magnet-rt-cache"  # shared with the other daemon tests
    d = DaemonProcess("--model", "tiny-random", "--device", "cpu", "--rescorer", "tiny-random",
                      "--endless-ahead", "0",
                      env={"MAGNET_RT_CACHE": str(cache), "OMP_NUM_THREADS": "2"})
    d.start()
    yield d
    assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture
def client(daemon):
    ctx = zmq.Context()
    c = Client(ctx, daemon.endpoint)
    yield c
    c.close()
    ctx.destroy(linger=0)


def audio_of(msgs) -> np.ndarray:
    chunks = [m for m in msgs if m.TYPE == "audio"]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    return np.concatenate([pcm_decode(c.data, c.format, c.channels) for c in chunks], axis=-1)


def test_welcome_announces_the_rescorer_and_long_form(client):
    w = client.call(Hello(id="h", client="pytest"))
    assert w.rescorer == "tiny-random" and "rescored" in w.presets
    assert (w.limits.max_duration_s, w.limits.max_long_duration_s) == (10.0, 600.0)


def test_rescored_round_trip_differs_from_plain(client):
    """`rescore` changes which spans are re-masked, hence the take (same seed); the preset works too."""
    plain = audio_of(client.request(gen("p", duration_s=2.0), timeout=60))
    msgs = client.request(gen("r", duration_s=2.0, rescore=1.0), timeout=60)
    assert msgs[0].TYPE == "accepted" and msgs[-1].TYPE == "done", [m.TYPE for m in msgs]
    rescored = audio_of(msgs)
    assert rescored.shape == plain.shape == (1, 2 * SR) and np.isfinite(rescored).all()
    assert not np.array_equal(rescored, plain)
    assert msgs[-1].time_to_first_audio_s is not None and msgs[-1].time_to_first_audio_s > 0
    preset = client.request(Generate(id="r2", prompt="x", preset="rescored", params=STEPS, duration_s=1.0,
                                     seed=1), timeout=60)
    assert preset[-1].TYPE == "done"


def test_hybrid_round_trip(client):
    msgs = client.request(gen("h", duration_s=2.0, hybrid_s=0.5, variations=2), timeout=60)
    done = msgs[-1]
    assert done.TYPE == "done", msgs[-1]
    assert done.seeds == (5, 6) and done.timings["hybrid_ar"] > 0
    chunks = [m for m in msgs if m.TYPE == "audio"]
    for v in (0, 1):
        x = np.concatenate([pcm_decode(c.data, c.format, c.channels) for c in chunks if c.variation == v], -1)
        assert x.shape == (1, 2 * SR) and np.isfinite(x).all()
    # hybrid_s must lie inside the clip (the encoder checks it against duration_s; the daemon against the
    # model's segment when duration_s is nil)
    err = client.request(gen("h2", hybrid_s=10.0), timeout=10)[-1]
    assert (err.TYPE, err.code, err.details.get("field")) == ("error", "invalid_field", "hybrid_s")


def test_long_form_streams_windows_in_order_and_exactly_25_s(client):
    t0 = time.monotonic()
    msgs = client.request(gen("L", duration_s=25.0, chunk_s=2.0), timeout=120)
    kinds = [m.TYPE for m in msgs]
    assert kinds[0] == "accepted" and kinds[-1] == "done", kinds
    windows = [m for m in msgs if m.TYPE == "window"]
    assert [w.window for w in windows] == list(range(len(windows))) and len(windows) > 1  # 10 s windows
    audio = audio_of(msgs)
    assert audio.shape == (1, 25 * SR) and np.isfinite(audio).all()  # exactly 25 s of samples
    chunks = [m for m in msgs if m.TYPE == "audio"]
    starts = [c.start_s for c in chunks]
    assert starts == sorted(starts) and starts[0] == 0.0
    for c, nxt in zip(chunks, chunks[1:], strict=False):  # contiguous: each chunk starts where the last ended
        assert abs(c.start_s + len(c.data) / 4 / SR - nxt.start_s) < 1e-6
    # windows are announced before their audio, each covering where the stream stands
    for w in windows:
        assert w.prompt == "dusty breakbeat" and w.seed >= 0
    assert abs(sum(w.duration_s for w in windows) - 25.0) < 1e-6
    # the first audio leaves after the first window, long before the whole request ends
    first_audio = kinds.index("audio")
    assert kinds.index("window") < first_audio < kinds.index("window", first_audio)
    done = msgs[-1]
    assert (done.frames, done.duration_s, done.windows) == (25 * FR, 25.0, len(windows))
    assert 0 < done.time_to_first_audio_s < done.timings["wall"] <= time.monotonic() - t0
    print(f"\nlong-form 25 s: time to first audio {done.time_to_first_audio_s:.3f} s, "
          f"total {done.timings['wall']:.3f} s, {done.windows} windows")


def test_long_form_refuses_what_it_cannot_do(client):
    for kw, field in ((dict(variations=2), "variations"), (dict(loudness=-14.0), "loudness"),
                      (dict(hybrid_s=1.0), "hybrid_s"), (dict(overlap_s=9.99), "overlap_s")):
        err = client.request(gen("bad", duration_s=25.0, **kw), timeout=10)[-1]
        assert (err.TYPE, err.code, err.details.get("field")) == ("error", "invalid_field", field), (kw, err)


def test_endless_set_prompt_and_cancel(client):
    client.send(gen("E", endless=True, prompt="first"))
    assert client.next("E", 10).TYPE == "accepted"
    windows, audio, reply, t0 = [], [], None, time.monotonic()
    while True:
        m = client.next("E", 60)
        if m.TYPE == "window":
            windows.append(m)
            if len(windows) == 1:
                bad = client.call(SetPrompt(id="sp0", target="E", prompt="second at 999 bpm"))
                assert (bad.TYPE, bad.code, bad.details["field"]) == ("error", "invalid_field", "prompt"), bad
                reply = client.call(SetPrompt(id="sp", target="E", prompt="second"))
                status = client.call(Status(id="st"))
                entry = next(q for q in status.queue if q.id == "E")
                assert (entry.mode, entry.state) == ("endless", "running") and entry.window >= 1
            if reply is not None and len(windows) > reply.window:
                client.send(Cancel(id="c", target="E"))
                break
        elif m.TYPE == "audio":
            audio.append(m)
        else:  # the steps of the window being decoded
            assert m.TYPE == "progress" and m.window == len(windows), m
    rest = client.until_terminal("E", 60)
    assert rest[-1].TYPE == "cancelled" and rest[-1].by == "c"
    assert client.next("c", 10).TYPE == "cancel_reply"
    windows += [m for m in rest if m.TYPE == "window"]
    audio += [m for m in rest if m.TYPE == "audio"]
    assert len(windows) >= 2
    assert reply.TYPE == "set_prompt_reply" and reply.target == "E" and reply.window >= 1
    assert [w.prompt for w in windows[:reply.window]] == ["first"] * reply.window
    assert all(w.prompt == "second" for w in windows[reply.window:])  # applied from the window it named
    assert [a.seq for a in audio] == list(range(len(audio)))
    assert [a.start_s for a in audio] == sorted(a.start_s for a in audio)
    assert [a.last for a in audio].count(True) <= 1
    print(f"\nendless: first window after {windows[0].elapsed_s:.3f} s, {len(windows)} windows in "
          f"{time.monotonic() - t0:.2f} s")
    # the request is over: set_prompt and cancel find nothing
    assert client.call(SetPrompt(id="sp2", target="E", prompt="x")).code == "not_found"


def test_set_prompt_on_a_plain_request_is_refused(client):
    client.send(gen("P", duration_s=10.0, params=DecodeParams(decoding_steps=(200, 1, 1, 1))))
    assert client.next("P", 10).TYPE == "accepted"
    err = client.call(SetPrompt(id="sp", target="P", prompt="x"))
    assert (err.code, err.details.get("field")) == ("invalid_field", "target")
    client.send(Cancel(id="c", target="P"))
    assert client.until_terminal("P", 60)[-1].TYPE == "cancelled"


def test_python_client_set_prompt_and_long_form(daemon):
    with MagnetClient(daemon.endpoint) as c:
        res = c.generate_audio("warm pad", duration_s=12.0, preset="live", params=STEPS, seed=3, chunk_s=4.0)
        assert res.audio[0].shape == (1, 12 * SR) and res.seeds == [3]
        stream = c.generate("one", endless=True, preset="live", params=STEPS, seed=3)
        prompts = []
        with stream:
            for ev in stream:
                if ev.TYPE == "window":
                    prompts.append(ev.prompt)
                    if len(prompts) == 1:
                        assert c.set_prompt(stream.id, "two").window >= 1
                    if "two" in prompts:
                        break
        assert stream.terminal.TYPE == "cancelled" and prompts[0] == "one" and prompts[-1] == "two"


# ---- the CLI ------------------------------------------------------------------------------------------------------
def cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_rescore_hybrid_and_long_duration_write_correct_wavs(daemon, tmp_path):
    common = ("--connect", daemon.endpoint, "--preset", "live", "--param", "decoding_steps=[3,1,1,1]", "--seed", "2")
    for flags, seconds in ((("--rescore", "0.8", "--duration", "2"), 2.0),
                           (("--hybrid", "0.5", "--duration", "2"), 2.0),
                           (("--duration", "25", "--overlap", "2"), 25.0)):
        out = tmp_path / f"{flags[0].strip('-')}.wav"
        r = cli("generate", "lofi drums", *flags, *common, "-o", str(out), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(out)
        x, sr = sf.read(out, dtype="float32")
        assert (sr, len(x)) == (SR, round(seconds * SR)) and np.isfinite(x).all(), flags
        if seconds > 10:
            assert "first audio after" in r.stderr and "window 1" in r.stderr


def test_cli_endless_grows_a_wav_until_ctrl_c(daemon, tmp_path):
    out = tmp_path / "live.wav"
    proc = subprocess.Popen([str(EXE), "generate", "deep house", "--endless", "--connect", daemon.endpoint,
                             "--preset", "live", "--param", "decoding_steps=[3,1,1,1]", "-o", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or sf.info(out).frames < 12 * SR):
            time.sleep(0.2)  # polling a file another process writes
        assert out.exists() and sf.info(out).frames >= 12 * SR  # more than one window already on disk
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == str(out) and "first audio after" in stderr
    x, sr = sf.read(out, dtype="float32")
    assert sr == SR and len(x) >= 12 * SR and np.isfinite(x).all()


# ---- OSC ------------------------------------------------------------------------------------------------------------
def test_osc_endless_prompt_cancel_and_long_form_chunks(daemon, tmp_path):
    from test_osc_support import Receiver, free_udp_port, start_bridge
    from test_osc_support import client as osc_client

    reply = free_udp_port()
    rx = Receiver(reply)
    bridge, port = start_bridge(daemon.endpoint, reply, tmp_path)
    tx = osc_client(port)
    try:
        tx.send_message("/magnet/endless", ["e1", "first", "live", 4])
        assert rx.expect("/magnet/accepted", "e1", 30)[2] >= 0
        first = rx.expect("/magnet/chunk", "e1", 60)
        assert first[3:] == (0, 0.0) and sf.info(first[2]).frames > SR  # the audio window 0 adds, as a WAV
        tx.send_message("/magnet/prompt", ["e1", "second"])
        window = rx.expect("/magnet/prompt", "e1", 30)[2]
        assert window >= 1
        second = rx.expect("/magnet/chunk", "e1", 60)
        assert second[3] == 1 and abs(second[4] - sf.info(first[2]).frames / SR) < 1e-3  # back to back
        tx.send_message("/magnet/cancel", ["e1"])
        rx.expect("/magnet/cancelled", "e1", 60)
        tx.send_message("/magnet/prompt", ["e1", "late"])
        assert rx.expect("/magnet/error", "e1", 30)[2] == "not_found"
        # long-form on /magnet/generate: a WAV per window, then the whole take, exactly 25 s
        tx.send_message("/magnet/generate", ["g1", "pad", "live", 1, 25.0])
        done = rx.expect("/magnet/done", "g1", 120)
        assert done[4] == 25 * SR and sf.info(done[2]).frames == 25 * SR
        chunks = [m for m in rx.all_of("g1") if m[0] == "/magnet/chunk"]
        assert [m[3] for m in chunks] == list(range(len(chunks))) and len(chunks) > 1
        assert sum(sf.info(m[2]).frames for m in chunks) == 25 * SR
    finally:
        rx.close()
        bridge.stop()


def test_shutdown_cancels_a_running_endless_request(daemon, client):
    """Last in this module: SIGTERM ends an endless request with `cancelled` and the daemon exits 0."""
    client.send(gen("Z", endless=True))
    assert client.next("Z", 10).TYPE == "accepted"
    while client.next("Z", 60).TYPE != "window":
        pass
    daemon.terminate()
    assert client.until_terminal("Z", 60)[-1].TYPE == "cancelled"
    assert daemon.wait(60) == 0
