"""Checks that need a CUDA GPU: `make test-gpu` (not part of `make test`, which runs on CPU-only CI)."""

import pytest
import torch

from magnet_rt.codec import Codec
from magnet_rt.encodec_checkpoints import random_encodec_config, random_encodec_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="run with `make test-gpu` on a CUDA machine")
SR = 32000


@pytest.fixture
def wave():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, SR * 2, generator=g) * 0.1).numpy()


def test_cuda_fp32_and_fp16_decode(wave):
    cpu = Codec(random_encodec_model(random_encodec_config(lstm_layers=2), seed=0))
    gpu = Codec(random_encodec_model(random_encodec_config(lstm_layers=2), seed=0), device="cuda")
    half = Codec(random_encodec_model(random_encodec_config(lstm_layers=2), seed=0), device="cuda", half=True)
    codes = cpu.encode(wave, SR)
    assert (gpu.encode(wave, SR).cpu() == codes).float().mean() > 0.98  # near-ties may flip across devices
    ref = cpu.decode(codes)
    assert (gpu.decode(codes).cpu() - ref).abs().max() < 1e-3
    out = half.decode(codes)
    assert half.half and out.dtype == torch.float32 and (out.cpu() - ref).abs().max() < 0.05


def test_lm_fp16_blocks_within_tolerance_of_fp32(fixture_dir=None):
    """The release's GPU precision (transformer blocks in fp16, embeddings/heads fp32) against fp32."""
    from pathlib import Path

    import numpy as np

    from magnet_rt.checkpoints import load_audiocraft_lm

    fx = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "audiocraft-tiny"
    z = np.load(fx / "vectors.npz")
    ref = load_audiocraft_lm(fx, device="cuda")
    half = load_audiocraft_lm(fx, device="cuda", dtype=torch.float16)
    h, m = torch.from_numpy(z["t5_hidden"]), torch.from_numpy(z["t5_mask"])
    for s in range(4):
        codes = torch.from_numpy(z[f"codes_stage{s}"])
        want = torch.from_numpy(z[f"logits_stage{s}"])
        assert (ref.logits(codes, h, m, s)[:, s].cpu() - want).abs().max() < 1e-3
        err = (half.logits(codes, h, m, s)[:, s].cpu() - want).abs().max() / want.abs().max()
        assert err < 2e-2
