"""`make demo` end to end: the real daemon on its default model (the shipped demo bundle) and the CLI,
three takes, one inpaint, the PNG."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import soundfile as sf
from conftest import REPO


def _run_timed(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str, list[tuple[float, str]]]:
    """Run a command; (exit code, stdout, stderr lines with the seconds since start at which each arrived)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    lines = []
    for line in proc.stderr:  # ends when the demo exits; bounded by the wait below
        lines.append((time.monotonic() - t0, line))
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            break
    code = proc.wait(timeout=30)
    reader.join(30)
    return code, "".join(out), lines


def test_demo_writes_takes_an_inpaint_and_a_png(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code, stdout, lines = _run_timed([sys.executable, "-m", "cli.demo", "--out", str(out), "--duration", "6"],
                                     env, timeout_s=240)
    stderr = "".join(line for _, line in lines)
    assert code == 0, stderr[-2000:]
    assert "tiny-random" not in stderr
    stages = [line for _, line in lines if line.startswith("demo: ")]  # issue 14 (17): it says what it does
    assert lines[0][0] < 10 and lines[0][1].startswith("demo: starting the daemon"), lines[:3]
    for needle in ("daemon ready", "take 1/3", "take 3 written", "inpainting", "all done"):
        assert any(needle in s for s in stages), (needle, stages)
    names = ["take-1.wav", "take-2.wav", "take-3.wav", "inpainted.wav", "demo.png"]
    assert [line.rsplit("/", 1)[-1] for line in stdout.split()] == names
    takes = [sf.read(out / n, dtype="float32")[0] for n in names[:3]]
    assert all(t.shape == (6 * 32000,) for t in takes) and not np.array_equal(takes[0], takes[1])
    inpainted, sr = sf.read(out / "inpainted.wav", dtype="float32")
    a, b = 3 * sr, 5 * sr
    assert np.array_equal(inpainted[:a], takes[0][:a]) and np.array_equal(inpainted[b:], takes[0][b:])
    assert not np.allclose(inpainted[a:b], takes[0][a:b])
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
