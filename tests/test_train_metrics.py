"""Reconstruction metrics (magnet_rt/train/metrics.py)."""

from __future__ import annotations

import math

import torch

from magnet_rt.train.metrics import MultiResolutionSTFTLoss, mel_distance, mel_filterbank, si_sdr


def test_si_sdr_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8000, generator=g)
    assert (si_sdr(x, x) > 60).all()
    n = torch.randn(2, 8000, generator=g)
    n = n - (n * x).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True) * x  # orthogonal to x
    n = n / n.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True) / math.sqrt(10)  # 10 dB below
    assert torch.allclose(si_sdr(x, x + n), torch.full((2,), 10.0), atol=0.05)
    assert torch.allclose(si_sdr(x, 0.3 * (x + n)), si_sdr(x, x + n), atol=1e-3)  # scale invariant


def test_mel_distance_and_stft_loss():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 32000
    tone = sum(torch.sin(2 * math.pi * 220 * h * t) / h for h in range(1, 8))
    x = (0.3 * tone + 0.02 * torch.randn(16000, generator=g))[None].repeat(2, 1)
    assert torch.allclose(mel_distance(x, x, 32000), torch.zeros(2))
    near = mel_distance(x, x + 0.005 * torch.randn(2, 16000, generator=g), 32000)
    other = sum(torch.sin(2 * math.pi * 330 * h * t) / h for h in range(1, 8))
    far = mel_distance(x, (0.3 * other + 0.02 * torch.randn(16000, generator=g))[None].repeat(2, 1), 32000)
    assert (near < far).all() and (near > 0).all()
    terms = MultiResolutionSTFTLoss(32000)(x, x)
    assert all(float(v) < 1e-6 for v in terms.values())
    fb = mel_filterbank(1024, 80, 32000)
    assert fb.shape == (80, 513) and (fb >= 0).all() and (fb.sum(1) > 0).all()
