"""What a newcomer meets on the command line (issue 14, items 13-16): one sentence about the case and the next
step, no protocol jargon; no silent overwrite; an offline hub model refused at once; the default model kept.
The CLI runs in-process against the fake daemon, and against a real daemon subprocess (tiny-random, 127.0.0.1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli.main import main
from clients.fakedaemon import FakeDaemon
from daemon.testing import DaemonProcess

REPO = Path(__file__).resolve().parents[1]
JARGON = ("details.field", "`details", "msgpack")


@pytest.fixture
def fake():
    with FakeDaemon() as d:
        yield d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "magnet-rt-cache"
    d = DaemonProcess("--model", "tiny-random", "--device", "cpu",
                      env={"MAGNET_RT_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    d.start()
    yield d
    assert d.stop() == 0, d.log()[-3000:]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGNET_RT_DEBUG": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s, env=env)


# ---- 15. no silent overwrite ---
def test_existing_outputs_are_not_overwritten_without_force(fake, tmp_path, capsys):
    out = tmp_path / "out.wav"
    args = ("generate", "x", "--connect", fake.endpoint, "--duration", "0.5", "-q", "-o", str(out))
    assert run(capsys, *args)[0] == 0
    first = out.read_bytes()
    sent = len(fake.received)
    code, stdout, stderr = run(capsys, *args, "--seed", "5")
    assert code == 2 and stdout == "" and f"{out} already exists" in stderr and "--force" in stderr, stderr
    assert len(fake.received) == sent and out.read_bytes() == first  # refused before anything was sent
    (tmp_path / "out-2.wav").write_bytes(b"")  # a later take's name counts too
    code, _, stderr = run(capsys, "generate", "y", "--connect", fake.endpoint, "--variations", "2", "-q",
                          "-o", str(out))
    assert code == 2 and f"{out}, {tmp_path / 'out-2.wav'} already exist:" in stderr, stderr
    assert run(capsys, *args, "--seed", "5", "--force")[0] == 0 and out.read_bytes() != first


# ---- 14. one sentence about the case, then the next step ---
def test_region_that_ends_before_it_starts_says_so(fake, tmp_path, capsys):
    src = tmp_path / "in.wav"
    sf.write(str(src), np.zeros(32000 * 5, dtype=np.float32), 32000)
    code, _, stderr = run(capsys, "inpaint", str(src), "--start", "4", "--end", "2", "p", "--connect",
                          fake.endpoint, "-o", str(tmp_path / "o.wav"))
    assert code == 2 and "--end: the region ends (2 s) before it starts (4 s)." in stderr, stderr
    assert "Fix --end" in stderr and "0.06" not in stderr


def test_daemon_errors_name_the_option_and_the_next_step_without_jargon(daemon, tmp_path):
    r = cli("generate", "x", "--connect", daemon.endpoint, "--param", "top_p=5", "-o", str(tmp_path / "a.wav"))
    assert r.returncode in (1, 2) and "--param top_p: " in r.stderr and "run again" in r.stderr, r.stderr
    assert not any(j in r.stderr for j in JARGON), r.stderr
    src = tmp_path / "long.wav"
    sf.write(str(src), np.zeros(32000 * 20, dtype=np.float32), 32000)  # 20 s: longer than tiny-random's segment
    r = cli("inpaint", str(src), "--start", "1", "--end", "2", "p", "--connect", daemon.endpoint, "-o",
            str(tmp_path / "b.wav"))
    if r.returncode != 0:  # a daemon that takes long sources accepts it; one that does not says why
        lines = r.stderr.strip().splitlines()
        assert "20.00 s long" in lines[0] and "empty, not finite" not in r.stderr, r.stderr
        assert "magnet-rt models" in lines[1], r.stderr


# ---- 14. an offline hub model: refused at once, saying why ---
def test_loading_an_uncached_hub_model_offline_says_so_at_once(daemon):
    t0 = time.monotonic()
    r = cli("load", "facebook/magnet-small-10secs", "--connect", daemon.endpoint)
    took = time.monotonic() - t0
    assert r.returncode == 1 and "not in the local model cache" in r.stderr and "offline" in r.stderr, r.stderr
    assert "has no model of this name." not in r.stderr and "huggingface-cli download" in r.stderr
    assert took < 15, took  # a CLI start-up, not hub retries
    assert "facebook/magnet-small-10secs" in cli("models", "--connect", daemon.endpoint).stdout


def test_the_hub_is_probed_once_and_briefly_when_not_offline():
    """With the hub's port closed (loopback) and HF_HUB_OFFLINE unset, the refusal still comes at once."""
    code = ("import time; from magnet_rt.checkpoints import resolve_file; from magnet_rt.errors import "
            "CheckpointError\nt = time.monotonic()\ntry:\n    resolve_file('facebook/magnet-small-10secs', "
            "'state_dict.bin')\nexcept CheckpointError as e:\n    print(round(time.monotonic() - t, 2), e)")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    took, _, message = r.stdout.partition(" ")
    assert "not in the local model cache" in message and float(took) < 3.0, (r.stdout, r.stderr)


# ---- 13. unload the default model ---
def test_unloading_the_default_model_is_refused_with_the_reason(daemon, tmp_path):
    r = cli("unload", "tiny-random", "--connect", daemon.endpoint)
    assert r.returncode == 1 and "default model and stays loaded" in r.stderr, r.stderr
    r = cli("generate", "x", "--connect", daemon.endpoint, "--duration", "0.2", "--preset", "live", "-q",
            "--param", "decoding_steps=[1,1,1,1]", "-o", str(tmp_path / "after.wav"))
    assert r.returncode == 0, r.stderr
