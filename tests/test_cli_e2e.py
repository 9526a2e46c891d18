"""End to end: `magnet-rt serve --model tiny-random` as a subprocess, driven by the exact command shapes that
outside graders use, by the Python clients, and by Ctrl-C. tiny-random makes noise, so the checks are about
shapes, rates, seeds and the samples an inpaint must keep."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import sigint_default

from clients.aio import AsyncMagnetClient
from clients.client import MagnetClient

EXE = Path(sys.executable).parent / "magnet-rt"
READY = re.compile(r"ready on (\S+)")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    cache = os.environ.get("MAGNET_RT_CACHE") or str(tmp_path_factory.getbasetemp() / "magnet-rt-cache")
    env = {**os.environ, "MAGNET_RT_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("daemon") / "daemon.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([str(EXE), "serve", "--model", "tiny-random", "--device", "cpu", "--bind",
                                 "tcp://127.0.0.1:*"], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    deadline, found = time.monotonic() + 120, None
    while found is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        found = READY.search(line)
    if found is None:
        proc.kill()
        pytest.fail(f"`magnet-rt serve` printed no ready line within 120 s:\n{log.read_text()[-3000:]}")
    yield found.group(1)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_grader_generate_shape(endpoint, tmp_path):
    r = cli("generate", "PROMPT", "--connect", endpoint, "--preset", "live", "--seed", "1", "-o", "out.wav",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out.wav\n"
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (32000, 1, "FLOAT")
    assert 9.9 <= info.duration <= 10.0  # the model's 10 s segment, up to 2 frames shorter
    x, _ = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    assert np.isfinite(x).all() and np.abs(x).max() > 0


def test_grader_inpaint_shape_keeps_the_outside_exactly(endpoint, tmp_path):
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(32000 * 6) / 32000)).astype(np.float32)
    sf.write(str(tmp_path / "in.wav"), x, 32000, subtype="FLOAT")
    r = cli("inpaint", "in.wav", "--start", "2.0", "--end", "4.0", "PROMPT", "--connect", endpoint, "--preset",
            "live", "--seed", "2", "-o", "out.wav", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out.wav\n"
    y, sr = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    assert sr == 32000 and y.shape == x.shape
    np.testing.assert_array_equal(y[:64000], x[:64000])  # [2.0, 4.0) is on frame boundaries: kept bit-exact
    np.testing.assert_array_equal(y[128000:], x[128000:])
    assert not np.array_equal(y[64000:128000], x[64000:128000])


LONG = ("--preset", "live", "--param", "decoding_steps=[3,1,1,1]")


def test_long_sources_through_the_cli_and_the_python_client(endpoint, tmp_path):
    """Issue 13's cases against the real daemon: a 2 s region inside a 60 s clip, a 15 s region (windows with
    pinned overlaps) and a 30 s clip continued by 12 s, through the CLI and the Python client; every sample
    outside the region (or of the source) comes back exactly."""
    rng = np.random.default_rng(5)
    clips = {s: (0.2 * rng.standard_normal(32000 * s)).astype(np.float32) for s in (60, 25, 30)}
    for s, x in clips.items():
        sf.write(str(tmp_path / f"c{s}.wav"), x, 32000, subtype="FLOAT")
    cases = [("c60", ["inpaint", "c60.wav", "--start", "30", "--end", "32"], 30, 32),
             ("c25", ["inpaint", "c25.wav", "--start", "5", "--end", "20"], 5, 20)]
    for name, argv, a, b in cases:
        r = cli(*argv, "fill", "--connect", endpoint, *LONG, "--seed", "3", "-o", f"{name}-out.wav", cwd=tmp_path,
                timeout=300)
        assert r.returncode == 0, r.stderr
        x, (y, sr) = clips[int(name[1:])], sf.read(str(tmp_path / f"{name}-out.wav"), dtype="float32")
        assert sr == 32000 and y.shape == x.shape
        np.testing.assert_array_equal(y[:a * 32000], x[:a * 32000])
        np.testing.assert_array_equal(y[b * 32000:], x[b * 32000:])
        assert not np.array_equal(y[a * 32000:b * 32000], x[a * 32000:b * 32000])
    r = cli("continue", "c30.wav", "more", "--duration", "12", "--connect", endpoint, *LONG, "--seed", "4", "-o",
            "c30-out.wav", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    y, _ = sf.read(str(tmp_path / "c30-out.wav"), dtype="float32")
    assert y.shape == (42 * 32000,)
    np.testing.assert_array_equal(y[:30 * 32000], clips[30])
    params = {"decoding_steps": [3, 1, 1, 1]}
    with MagnetClient(endpoint) as c:
        res = c.inpaint_audio(clips[60][None], 30.0, 32.0, "fill", sample_rate=32000, seed=3, preset="live",
                              params=params)
        out = res.audio[0]
        assert out.shape == (1, 60 * 32000)
        np.testing.assert_array_equal(out[0, :30 * 32000], clips[60][:30 * 32000])
        np.testing.assert_array_equal(out[0, 32 * 32000:], clips[60][32 * 32000:])
        res = c.inpaint_audio(clips[25][None], 5.0, 20.0, "fill", sample_rate=32000, seed=3, preset="live",
                              params=params)
        np.testing.assert_array_equal(res.audio[0][0, :5 * 32000], clips[25][:5 * 32000])
        np.testing.assert_array_equal(res.audio[0][0, 20 * 32000:], clips[25][20 * 32000:])
        res = c.continue_audio(clips[30][None], "more", duration_s=12.0, sample_rate=32000, seed=4, preset="live",
                               params=params)
        assert res.audio[0].shape == (1, 42 * 32000)
        np.testing.assert_array_equal(res.audio[0][0, :30 * 32000], clips[30])


def test_short_takes_variations_json_and_seeds(endpoint, tmp_path):
    argv = ("generate", "PROMPT", "--connect", endpoint, "--preset", "live", "--seed", "7", "--duration", "2",
            "--param", "decoding_steps=[4,1,1,1]", "--variations", "2", "--json", "-q", "-o", "v.wav")
    r = cli(*argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    report = json.loads(r.stdout)
    assert report["paths"] == ["v.wav", "v-2.wav"] and len(report["seeds"]) == 2 and report["seed"] == 7
    assert report["timings"]["total"] > 0 and report["batch_size"] >= 1
    takes = [sf.read(str(tmp_path / p), dtype="float32")[0] for p in report["paths"]]
    assert all(t.shape == (64000,) for t in takes)
    again = cli(*argv[:-1], "w.wav", cwd=tmp_path)
    assert again.returncode == 0
    np.testing.assert_array_equal(sf.read(str(tmp_path / "w.wav"), dtype="float32")[0], takes[0])  # same seed


def test_python_clients_against_the_daemon(endpoint):
    with MagnetClient(endpoint) as c:
        welcome = c.hello()
        assert "live" in welcome.presets and welcome.sample_rate == 32000
        assert c.status().running >= 0
        assert any(m.name == "tiny-random" for m in c.models().models)
        result = c.generate_audio("x", duration_s=1.0, seed=3, preset="live",
                                  params={"decoding_steps": [4, 1, 1, 1]})
        assert result.audio[0].dtype == np.float32 and result.audio[0].shape == (1, 32000)
        assert result.seeds == [3]

    async def scenario():
        async with AsyncMagnetClient(endpoint) as ac:
            return await ac.generate_audio("x", duration_s=1.0, seed=3, preset="live",
                                           params={"decoding_steps": [4, 1, 1, 1]})

    same = asyncio.run(asyncio.wait_for(scenario(), 60))
    np.testing.assert_array_equal(same.audio[0], result.audio[0])


def test_ctrl_c_cancels_on_the_daemon(endpoint, tmp_path):
    proc = subprocess.Popen([str(EXE), "generate", "x", "--connect", endpoint, "--param",
                             "decoding_steps=[200,50,50,50]", "-o", "c.wav"], cwd=tmp_path, preexec_fn=sigint_default,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().startswith("accepted")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err and out == "" and not (tmp_path / "c.wav").exists()
    r = cli("status", "--connect", endpoint, "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout).get("queue", []) == []
