"""The DAW plugin (clients/plugin, issue 16): built from this checkout with CMake against Debian's JUCE 7,
loaded by DawDreamer (a host this project did not write), headless, with a tiny-random daemon on 127.0.0.1.

- A MIDI note on an empty slot makes the plugin ask the daemon for a take; once it is there, the same note
  plays it from the next bar line at the host's tempo: the render holds the daemon's take sample for sample
  (checked against the same request sent by the test's own client), silence before it, and the loop repeats
  it every `bars` bars.
- The state the host saves (prompt, preset, seed, bars, take paths) restores the take in a second instance.
- The real-time check: the same run with an interposer preloaded into the host that counts every allocation,
  free and lock inside the plugin's process callback (rtcheck/rtcheck.c): none allowed.
- The daemon absent, killed mid-take and restarted: the plugin reconnects and renders a take again.

The build (VST3 target and the interposer only) goes to build/plugin, reused between runs (and ccache when
installed); `make test-deps` installs the Debian packages.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import pytest
import soundfile as sf
import zmq

from daemon.testing import Client, DaemonProcess
from protocol import Generate

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "clients" / "plugin"
BUILD = REPO / "build" / "plugin"
VST3 = BUILD / "MagnetRT_artefacts" / "Release" / "VST3" / "MagnetRT.vst3"
RTCHECK = BUILD / "libmagnet_rtcheck.so"
HOST = REPO / "tests" / "plugin_host.py"

SR, BPM, BLOCK, BARS = 32000, 96.0, 384, 2
SAMPLES_PER_BEAT = SR * 60 / BPM  # 20000
BAR = int(4 * SAMPLES_PER_BEAT)
PROMPT, PRESET, SEED = "dusty boom bap drums", "live", 4242


def _run(cmd: list[str], timeout: float) -> None:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def plugin() -> Path:
    """Configure and build the VST3 and the interposer (incremental: a reused build dir only relinks)."""
    launcher = (["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_C_COMPILER_LAUNCHER=ccache"]
                if shutil.which("ccache") else [])
    _run(["cmake", "-S", str(SRC), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", *launcher], 300)
    jobs = os.environ.get("MAGNET_RT_PLUGIN_JOBS", str(max(1, (os.cpu_count() or 2) // 2)))
    _run(["cmake", "--build", str(BUILD), "--target", "MagnetRT_VST3", "magnet_rtcheck", "-j", jobs], 3000)
    assert (VST3 / "Contents" / "x86_64-linux" / "MagnetRT.so").is_file()
    return VST3


def _start_daemon(tmp: Path, port: int | None = None) -> DaemonProcess:
    d = DaemonProcess("--model", "tiny-random", "--device", "cpu",
                      env={"MAGNET_RT_CACHE": os.environ.get("MAGNET_RT_CACHE", str(tmp / "cache")),
                           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    if port is not None:
        d.args[1] = f"tcp://127.0.0.1:{port}"
    d.start()
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = _start_daemon(tmp_path_factory.mktemp("plugin-daemon"))
    yield d
    assert d.stop() == 0, d.log()[-3000:]


JUCE_B64 = ".ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"


def juce_binary_xml(xml: bytes) -> bytes:
    """JUCE's copyXmlToBinary: magic, UTF-8 length, the XML, a NUL."""
    return struct.pack("<II", 0x21324356, len(xml)) + xml + b"\0"


def juce_base64(data: bytes) -> str:
    """JUCE's MemoryBlock::toBase64Encoding: '<size>.' then 6-bit groups, least significant bits first."""
    v = int.from_bytes(data, "little")
    return f"{len(data)}." + "".join(JUCE_B64[(v >> (6 * i)) & 63] for i in range(len(data) * 8 // 6 + 3))


def juce_unbase64(text: str) -> bytes:
    size, body = text.split(".", 1)
    v = sum(JUCE_B64.index(c) << (6 * i) for i, c in enumerate(body))
    return v.to_bytes(len(body) * 6 // 8 + 1, "little")[:int(size)]


def state_blob(address: str, takes: Path, **extra) -> bytes:
    """The plugin's state as a VST3 host (JUCE's, in DawDreamer) stores it: the plugin's own binary XML
    (`MAGNETRT`: prompt, preset, seed, bars, ...) as the component state inside JUCE's VST3PluginState."""
    attrs = {"prompt": PROMPT, "preset": PRESET, "seed": str(SEED), "bars": str(BARS), "loop": "1",
             "address": address, "takeDir": str(takes), **extra}
    inner = juce_binary_xml(("<MAGNETRT " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
                             + "/>").encode())
    return juce_binary_xml(f"<VST3PluginState><IComponent>{juce_base64(inner)}</IComponent></VST3PluginState>"
                           .encode())


def plugin_state(blob: bytes) -> str:
    """The plugin's XML inside a state DawDreamer saved."""
    outer = blob[8:8 + struct.unpack("<I", blob[4:8])[0]].decode()
    inner = juce_unbase64(re.search(r"<IComponent>(.*?)</IComponent>", outer, re.S).group(1))
    return inner[8:8 + struct.unpack("<I", inner[4:8])[0]].decode()


def host_run(plugin: Path, tmp: Path, address: str, preload: Path | None = None,
             timeout: float = 240) -> tuple[dict, str]:
    takes = tmp / "takes"
    takes.mkdir()
    (tmp / "state.bin").write_bytes(state_blob(address, takes))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
        env["MAGNET_RTCHECK_LOG"] = str(tmp / "rtcheck.txt")
    r = subprocess.run([sys.executable, str(HOST), str(plugin), str(tmp / "state.bin"), str(takes),
                        str(tmp / "out.npz"), "--bpm", str(BPM), "--sr", str(SR), "--block", str(BLOCK)],
                       cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"host failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    with np.load(tmp / "out.npz") as z:
        return {k: z[k] for k in z.files}, r.stderr


def daemon_take(endpoint: str) -> np.ndarray:
    """The same request the plugin sends, from the test's own client: the daemon's take."""
    zctx = zmq.Context()
    c = Client(zctx, endpoint)
    try:
        msgs = c.request(Generate(id="ref", prompt=PROMPT, preset=PRESET, seed=SEED,
                                  duration_s=BARS * 4 * 60 / BPM, format="f32"), timeout=120)
    finally:
        c.close()
        zctx.term()
    assert msgs[-1].TYPE == "done", msgs[-1]
    chunks = [m for m in msgs if m.TYPE == "audio" and m.variation == 0]
    assert chunks and chunks[0].sample_rate == SR and chunks[0].channels == 1
    return np.concatenate([np.frombuffer(m.data, "<f4") for m in chunks])


def check_in_time(out: np.ndarray, take: np.ndarray, start: int, loops: int) -> None:
    """`take` from bar line `start` on, sample-exact, both channels; silence before; the loop every BARS bars."""
    assert out.shape[0] == 2
    assert not np.any(out[:, :start]), f"sound before the bar line at {start}: first at {np.flatnonzero(out[0])[:1]}"
    n, loop = len(take), BARS * BAR
    assert 0 < n <= loop and np.any(take)
    for k in range(loops):
        s = start + k * loop
        for ch in (0, 1):
            got = out[ch, s:s + n]
            assert np.array_equal(got, take[:len(got)]), f"loop {k} channel {ch} differs from the daemon's take"
        assert not np.any(out[:, s + n:s + loop]), "sound after the take's end inside its loop"


def test_plugin_renders_daemon_take_in_time(plugin, daemon, tmp_path):
    z, _ = host_run(plugin, tmp_path, daemon.endpoint)
    take = daemon_take(daemon.endpoint)
    wav, wav_sr = sf.read(str(z["take"]), dtype="float32")
    assert wav_sr == SR and np.array_equal(wav, take), "the exported WAV is not the daemon's take"

    # Note at beat 0.5 of bar 0: the take starts at bar 1 and loops every 2 bars (6 bars rendered).
    out = z["second"]
    assert out.shape[1] == 6 * BAR
    check_in_time(out, take, BAR, loops=2)

    # The saved state names the take; a second instance restores it and plays it from bar 0 (note on the line).
    state = plugin_state(bytes(z["state"]))
    assert f'prompt="{PROMPT}"' in state and 'preset="live"' in state and f'seed="{SEED}"' in state, state
    assert f'path="{z["take"]}"' in state, state
    check_in_time(z["third"], take, 0, loops=1)


def test_process_callback_is_real_time_safe(plugin, daemon, tmp_path):
    """The whole scenario again, with the allocation/lock interposer preloaded into the host."""
    z, stderr = host_run(plugin, tmp_path, daemon.endpoint, preload=RTCHECK)
    report = (tmp_path / "rtcheck.txt").read_text().split()
    counts = dict(kv.split("=") for kv in report)
    assert int(counts["callbacks"]) > 3 * 6 * BAR // BLOCK // 2, counts  # the callback really ran under the check
    assert int(counts["violations"]) == 0, [ln for ln in stderr.splitlines() if ln.startswith("rtcheck:")][:20]
    assert np.any(z["second"]), "the checked run played nothing"


def test_interposer_flags_an_allocation(plugin, tmp_path):
    """The check can fail: a program that allocates between the plugin's hooks is flagged."""
    code = ("import ctypes, sys; lib = ctypes.CDLL(None); lib.magnet_rtcheck_enter(); "
            "b = ctypes.create_string_buffer(1 << 16); lib.magnet_rtcheck_leave()")
    env = {**os.environ, "LD_PRELOAD": str(RTCHECK), "MAGNET_RTCHECK_LOG": str(tmp_path / "log.txt")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    counts = dict(kv.split("=") for kv in (tmp_path / "log.txt").read_text().split())
    assert counts["callbacks"] == "1" and int(counts["violations"]) >= 1 and "malloc" in r.stderr


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_plugin_survives_daemon_absent_killed_and_restarted(plugin, tmp_path):
    """No daemon at the address: the plugin renders silence and keeps the note's request; a daemon started
    there gets it (take 1). The daemon is killed right after the next note's request and restarted on the
    same port: the plugin reconnects and the next note gets a take again. The host process never fails."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    takes = tmp_path / "takes"
    takes.mkdir()
    (tmp_path / "state.bin").write_bytes(state_blob(address, takes))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MAGNET_RT_PLUGIN_LOG": "1"}
    host = subprocess.Popen([sys.executable, str(HOST), str(plugin), str(tmp_path / "state.bin"), str(takes),
                             str(tmp_path / "unused.npz"), "--interactive", "--bpm", str(BPM), "--sr", str(SR)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    daemons: list[DaemonProcess] = []

    def ask(line: str, timeout: float = 90) -> str:
        host.stdin.write(line + "\n")
        host.stdin.flush()
        deadline = time.monotonic() + timeout
        out = ""
        while not out and time.monotonic() < deadline and host.poll() is None:
            out = host.stdout.readline().strip()
        assert out, f"host gave no answer to {line!r} (exit {host.poll()}): {host.stderr.read()[-3000:]}"
        return out

    try:
        assert host.stdout.readline().startswith("ok loaded")
        assert ask("note 36") == "ok"                        # no daemon: nothing to play, no crash
        time.sleep(3.0)                                      # past the 2.5 s silence: reported unreachable
        assert ask("render 1") == "ok 0"
        daemons.append(_start_daemon(tmp_path, port))
        assert ask("takes 1 90") == "ok 1"                   # the kept note request went out once connected
        assert ask("note 37") == "ok"
        daemons[0].proc.kill()                               # killed mid-take (or just after it)
        daemons[0].proc.wait(timeout=10)
        time.sleep(3.0)
        assert ask("render 1").startswith("ok")
        daemons.append(_start_daemon(tmp_path, port))
        n = len(list(takes.glob("*.wav")))
        assert ask("note 38") == "ok"
        assert ask(f"takes {n + 1} 90") == f"ok {n + 1}"    # reconnected: a new take
        host.stdin.close()
        assert host.wait(timeout=60) == 0
        log = host.stderr.read()
        assert "does not answer" in log, log[-2000:]
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(timeout=10)
        for d in daemons:
            d.kill()
