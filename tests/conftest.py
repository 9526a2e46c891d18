"""Shared test helpers: the read-only shared fixtures and small random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURE = SHARED / "fixtures" / "audiocraft-tiny"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # the daemon subprocesses under test get the other core; 2 OpenMP threads
# per process on 2 shared cores spin-wait on each other (measured: a small LayerNorm 100x slower)


@pytest.fixture(scope="module")
def zctx():
    """A ZeroMQ context for the tests' sockets (closed with linger 0)."""
    import zmq

    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert FIXTURE.is_dir(), f"shared fixture missing at {FIXTURE}"
    return FIXTURE


def small_lm(seed: int = 0, **overrides):
    """A small random MagnetLM (card 64 keeps decoding fast)."""
    from magnet_rt.lm import MagnetConfig, MagnetLM

    base = dict(dim=32, num_heads=2, num_layers=2, card=64, text_dim=16, segment_duration=2.0)
    base.update(overrides)
    return MagnetLM(MagnetConfig(**base)).init_weights(seed).eval()


def random_text(B: int, L: int, dim: int, lengths=None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    for b, n in enumerate(lengths or []):
        mask[b, n:] = 0
    return hidden, mask


def cfg_pair_logits(lm, frames: int = 40):
    """A function of an LM's musical controls (`beat=`, `key=`): the logits [2, K, T, C] of one conditioned
    row and its CFG null row, on fixed random codes and text; so a test can see which row hears a control."""
    h, m = random_text(1, 4, lm.cfg.text_dim)
    codes = torch.randint(0, lm.card + 1, (1, lm.n_q, frames), generator=torch.Generator().manual_seed(2))

    def logits(**controls):
        with torch.inference_mode():
            return lm(torch.cat([codes, codes]), lm.cross_inputs(lm.project_text(h, m), **controls), 0)

    return logits


@pytest.fixture(scope="session")
def pipe(tmp_path_factory):
    """The tiny-random pipeline (random weights, loaded through the released formats), built once."""
    os.environ.setdefault("MAGNET_RT_CACHE", str(tmp_path_factory.mktemp("cache")))
    from magnet_rt.registry import load_pipeline

    return load_pipeline("tiny-random", device="cpu")


def sigint_default() -> None:
    """`preexec_fn` for a CLI a test will Ctrl-C: SIGINT handled as on a terminal. A job a shell started in
    the background (`cmd &`, as some CI runners do) inherits SIGINT *ignored*, and so would the CLI."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
