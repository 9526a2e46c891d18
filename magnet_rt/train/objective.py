"""The MAGNeT loss: cross-entropy on codebook `stage` at its masked positions only, mean over them
(audiocraft `solvers/magnet.py:143-170, 208-217`). Other codebooks and unmasked frames contribute nothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_stage_loss(logits: Tensor, targets: Tensor, mask: Tensor, stage: int) -> Tensor:
    """logits [B, K, T, C] (all heads) or [B, T, C] (the stage's head), targets [B, K, T], mask [B, T]
    bool -> scalar mean cross-entropy over the masked positions of codebook `stage` (0 if none)."""
    stage_logits = logits[:, stage] if logits.dim() == 4 else logits  # [B, T, C]
    sel = mask.bool()
    if not bool(sel.any()):
        return stage_logits.sum() * 0.0
    return F.cross_entropy(stage_logits[sel].float(), targets[:, stage][sel])  # [N, C] vs [N]


def masked_stage_loss_per_row(logits: Tensor, targets: Tensor, mask: Tensor, stage: int) -> Tensor:
    """As `masked_stage_loss`, one mean per row -> [B] (0 for a row with nothing masked)."""
    stage_logits = logits[:, stage] if logits.dim() == 4 else logits  # [B, T, C]
    ce = F.cross_entropy(stage_logits.float().transpose(1, 2), targets[:, stage], reduction="none")  # [B, T]
    m = mask.bool().float()
    return (ce * m).sum(-1) / m.sum(-1).clamp(min=1)


@torch.no_grad()
def masked_stage_accuracy(logits: Tensor, targets: Tensor, mask: Tensor, stage: int) -> float:
    stage_logits = logits[:, stage] if logits.dim() == 4 else logits
    sel = mask.bool()
    if not bool(sel.any()):
        return float("nan")
    return float((stage_logits[sel].argmax(-1) == targets[:, stage][sel]).float().mean())
