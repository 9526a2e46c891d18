"""MAGNeT's training masks (paper Sec. 3.1 and Appendix C; audiocraft `solvers/magnet.py:53-125, 187-206`).

Per batch one codebook `stage` is drawn uniformly. Per sample a mask rate `cos(pi/2 * u)`, u ~ U(0, 1).
The rate is turned into a number of span starts k through a lookup table over `round(100 * rate)` that
inverts the expected coverage of k distinct random starts, each opening a span of `span_len` frames:

    coverage(k) = 1 - C(T - span_len, k) / C(T, k) = 1 - prod_{i<k} (T - span_len - i) / (T - i)

(the chance that none of the `span_len` starts that would cover a frame is drawn; product form, no
overflow). Starts are distinct; spans may overlap and are clipped at the end of the sequence.

The model input keeps codebooks < stage, masks codebook `stage` on the span mask (id `card`), and masks
every codebook > stage entirely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def expected_coverage(T: int, span_len: int, k: np.ndarray | int) -> np.ndarray:
    """Expected fraction of T frames covered by k distinct span starts (edge clipping ignored)."""
    k = np.atleast_1d(np.asarray(k, dtype=np.int64))
    i = np.arange(int(k.max()) if k.size else 0)
    factors = np.clip((T - span_len - i) / (T - i), 0.0, 1.0)  # [max k]
    prods = np.concatenate([[1.0], np.cumprod(factors)])  # prods[k] = C(T-L, k) / C(T, k)
    return 1.0 - prods[k]


@lru_cache(maxsize=32)
def span_count_lut(T: int, span_len: int) -> np.ndarray:
    """[101] int64: the number of span starts (>= 1) whose expected coverage first reaches m % (m = 0..100)."""
    if span_len < 1 or T < 1:
        raise ValueError(f"need T >= 1 and span_len >= 1, got T={T}, span_len={span_len}")
    ks = np.arange(1, T + 1)
    cov = expected_coverage(T, span_len, ks)  # non-decreasing in k
    idx = np.searchsorted(cov, np.arange(101) / 100.0, side="left")
    lut = np.clip(idx + 1, 1, T)
    lut.setflags(write=False)
    return lut


def mask_rates(batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """[B] mask rates cos(pi/2 * u), u ~ U(0, 1)."""
    u = torch.rand(batch, generator=generator)
    return torch.cos(math.pi / 2 * u).to(device)


def span_mask(rates: Tensor, T: int, span_len: int, generator: torch.Generator | None = None) -> Tensor:
    """[B] rates -> [B, T] bool span mask (True = masked), on the rates' device.

    k = LUT[round(100 * rate)] distinct starts per row (`rand(B, T).argsort() < k`), each extended
    `span_len - 1` frames to the right, clipped at the end."""
    B = rates.shape[0]
    lut = torch.from_numpy(span_count_lut(int(T), int(span_len)).copy())
    k = lut[torch.round(rates.detach().float().cpu() * 100).long().clamp(0, 100)]  # [B]
    perm = torch.rand(B, T, generator=generator).argsort(dim=-1)  # a random permutation per row
    starts = perm < k[:, None]  # exactly k True per row
    mask = starts.clone()
    for s in range(1, span_len):
        mask[:, s:] |= starts[:, :-s]
    return mask.to(rates.device)


@dataclass
class MaskedBatch:
    inputs: Tensor  # [B, K, T] the model input (mask id = card)
    targets: Tensor  # [B, K, T] the clean codes
    mask: Tensor  # [B, T] bool: positions of codebook `stage` that are masked (and count in the loss)
    stage: int
    rates: Tensor  # [B] the drawn mask rates


def masked_inputs(codes: Tensor, mask: Tensor, stage: int, card: int) -> Tensor:
    """codes [B, K, T], mask [B, T] -> inputs: k < stage kept, k == stage masked on `mask`, k > stage all mask."""
    x = codes.clone()
    x[:, stage] = torch.where(mask, torch.full_like(codes[:, stage], card), codes[:, stage])
    x[:, stage + 1:] = card
    return x


def make_masked_batch(codes: Tensor, card: int, span_len: int, generator: torch.Generator | None = None,
                      stage: int | None = None, valid: Tensor | None = None) -> MaskedBatch:
    """Draw the stage (uniform over K unless given), per-row rates and span masks for `codes` [B, K, T]
    (the LUT is built for this T). `valid` [B, T] bool marks non-padding frames: padding never counts.
    Every draw comes from `generator` (CPU), so a run is reproducible from its generator state."""
    B, K, T = codes.shape
    if stage is None:
        stage = int(torch.randint(K, (1,), generator=generator))
    rates = mask_rates(B, generator)
    mask = span_mask(rates, T, span_len, generator).to(codes.device)
    if valid is not None:
        mask = mask & valid.to(codes.device)
    return MaskedBatch(masked_inputs(codes, mask, stage, card), codes, mask, stage, rates)
