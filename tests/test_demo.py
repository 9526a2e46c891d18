"""`make demo` end to end: the real daemon on its default model (the shipped demo bundle) and the CLI,
three takes, one inpaint, the PNG."""

import os
import subprocess
import sys

import numpy as np
import soundfile as sf
from conftest import REPO


def test_demo_writes_takes_an_inpaint_and_a_png(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "clients.demo", "--out", str(out), "--duration", "6"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny-random" not in done.stderr
    names = ["take-1.wav", "take-2.wav", "take-3.wav", "inpainted.wav", "demo.png"]
    assert [line.rsplit("/", 1)[-1] for line in done.stdout.split()] == names
    takes = [sf.read(out / n, dtype="float32")[0] for n in names[:3]]
    assert all(t.shape == (6 * 32000,) for t in takes) and not np.array_equal(takes[0], takes[1])
    inpainted, sr = sf.read(out / "inpainted.wav", dtype="float32")
    a, b = 3 * sr, 5 * sr
    assert np.array_equal(inpainted[:a], takes[0][:a]) and np.array_equal(inpainted[b:], takes[0][b:])
    assert not np.allclose(inpainted[a:b], takes[0][a:b])
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
