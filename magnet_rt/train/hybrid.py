"""The Hybrid-MAGNeT training objective (Ziv et al., Sec. 3.4), as pure functions over one batch.

One model learns both phases of hybrid decoding. The codes are laid out with MusicGen's delay pattern,
D[:, k, s] = codes[:, k, s - k] (S = T + K - 1 positions; the pad id is `card`, the mask id, as MusicGen
shares one special id too). Per row a split s* is drawn:

- positions s < s*: the autoregressive part. Causal self-attention (query s sees keys <= s), every
  codebook of the prefix is input, and every head at s is trained to predict the next delayed column
  D[:, :, s + 1] (MusicGen's loss; pad targets ignored).
- positions s >= s*: the MAGNeT part. Full attention (within +-`context` for stages >= 1, as MAGNeT),
  codebooks < stage kept, codebook `stage` span-masked (MAGNeT's schedule and spans), codebooks > stage
  masked; the loss is MAGNeT's cross-entropy on the masked positions of `stage`.

Loss = magnet + ar_weight * ar, each a mean over its own tokens. At inference the model generates the
first seconds with a KV cache in the causal part, then MAGNeT-decodes the rest with them pinned (in the
same delayed layout; see the report for the decode change this needs).

`MagnetLM.forward` needs an optional self-attention mask to train this (the released LM is non-causal):
`make_hybrid_batch(...).allowed` [B, 1, S, S] bool (or `.attn_bias`, additive) replaces the window mask,
dense attention path only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rescoring import delay, undelay
from .masking import mask_rates, span_mask
from .objective import masked_stage_loss

__all__ = ["IGNORE", "HybridBatch", "hybrid_attention_bias", "hybrid_loss", "make_hybrid_batch", "sample_splits"]

IGNORE = -100  # cross-entropy ignore_index


@dataclass
class HybridBatch:
    inputs: Tensor  # [B, K, S] model input, delayed layout (mask/pad id = card)
    targets: Tensor  # [B, K, S] the clean delayed codes (pad = card)
    ar_targets: Tensor  # [B, K, S] what position s predicts in the causal part: D[:, :, s + 1]; IGNORE elsewhere
    mask: Tensor  # [B, S] bool: masked positions of codebook `stage` (MAGNeT loss), all >= split
    split: Tensor  # [B] first MAGNeT position of each row
    stage: int
    attn_bias: Tensor  # [B, 1, S, S] additive self-attention mask (0 / -inf)

    @property
    def allowed(self) -> Tensor:
        """[B, 1, S, S] bool (True = attend): the same mask for SDPA in any dtype (fp16/bf16 autocast)."""
        return self.attn_bias == 0

    def codes(self) -> Tensor:
        """The clean codes [B, K, T] (undo the delay)."""
        K, S = self.targets.shape[1:]
        return undelay(self.targets, S - K + 1)


def sample_splits(batch: int, S: int, generator: torch.Generator | None = None, min_split: int = 1,
                  max_split: int | None = None) -> Tensor:
    """[B] splits drawn uniformly in [min_split, max_split] (default [1, S - 1]: both parts non-empty)."""
    hi = S - 1 if max_split is None else max_split
    if not 0 <= min_split <= hi <= S:
        raise ValueError(f"need 0 <= min_split <= max_split <= S, got {min_split}, {hi}, S={S}")
    return torch.randint(min_split, hi + 1, (batch,), generator=generator)


def hybrid_attention_bias(split: Tensor, S: int, context: int | None = None, dtype=torch.float32) -> Tensor:
    """[B] splits -> [B, 1, S, S] additive mask: query q < split attends keys <= q (causal); query q >= split
    attends every key (or those within +-context)."""
    q = torch.arange(S, device=split.device)[:, None]
    k = torch.arange(S, device=split.device)[None, :]
    suffix_ok = torch.ones(S, S, dtype=torch.bool, device=split.device) if context is None else (q - k).abs() <= context
    prefix_q = (q < split.view(-1, 1, 1))  # [B, S, 1]
    allowed = torch.where(prefix_q, (k <= q)[None], suffix_ok[None])  # [B, S, S]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=split.device).masked_fill(~allowed, float("-inf"))
    return bias.unsqueeze(1)


def make_hybrid_batch(codes: Tensor, card: int, span_len: int, generator: torch.Generator | None = None,
                      stage: int | None = None, split: Tensor | None = None, context: int | None = None,
                      valid: Tensor | None = None) -> HybridBatch:
    """codes [B, K, T] -> the hybrid batch (see the module docstring). Every draw comes from `generator`.
    `context`: MAGNeT's window for stages >= 1 (cfg.subcodes_context), applied to the MAGNeT part.
    `valid` [B, T] marks non-padding frames (padding is never a target)."""
    B, K, T = codes.shape
    if stage is None:
        stage = int(torch.randint(K, (1,), generator=generator))
    D = delay(codes, card)  # [B, K, S]
    S = D.shape[-1]
    if valid is not None:
        D = torch.where(delay(valid.unsqueeze(1).expand(B, K, T).long(), 0).bool(), D, torch.full_like(D, card))
    if split is None:
        split = sample_splits(B, S, generator)
    split = split.to(codes.device)
    pos = torch.arange(S, device=codes.device)[None, :]
    suffix = pos >= split[:, None]  # [B, S]
    rates = mask_rates(B, generator)
    mask = span_mask(rates, S, span_len, generator).to(codes.device) & suffix & (D[:, stage] != card)
    inputs = D.clone()
    inputs[:, stage] = torch.where(mask, torch.full_like(D[:, stage], card), D[:, stage])
    inputs[:, stage + 1:] = torch.where(suffix[:, None], torch.full_like(D[:, stage + 1:], card), D[:, stage + 1:])
    nxt = torch.cat([D[:, :, 1:], torch.full_like(D[:, :, :1], card)], dim=-1)  # D[:, :, s + 1]
    ar_targets = torch.where((~suffix[:, None]) & (nxt != card), nxt, torch.full_like(nxt, IGNORE))
    ctx = None if stage == 0 else context
    return HybridBatch(inputs, D, ar_targets, mask, split, stage, hybrid_attention_bias(split, S, ctx))


def hybrid_loss(logits: Tensor, batch: HybridBatch, ar_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """logits [B, K, S, C] (all heads) -> (magnet + ar_weight * ar, {"magnet", "ar"} detached)."""
    C = logits.shape[-1]
    tgt = batch.ar_targets.reshape(-1)
    if bool((tgt != IGNORE).any()):
        ar = F.cross_entropy(logits.reshape(-1, C).float(), tgt, ignore_index=IGNORE)
    else:
        ar = logits.sum() * 0.0
    mag = masked_stage_loss(logits, batch.targets, batch.mask, batch.stage)
    return mag + ar_weight * ar, {"magnet": mag.detach(), "ar": ar.detach()}
