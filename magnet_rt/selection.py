"""Which units a decoding step re-masks, and how the next step scores them (pure tensor functions).

Units are `nonoverlap` chunks of span_len tokens (the last one may be shorter), or single tokens whose
re-mask set is the union of the least probable length-span_len windows at stride 1 (`stride1`). Every
decode step (`decoding`'s reference and dynamic steps, `graphs.static_step`) selects through these.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .params import DecodeParams
from .sampling import span_scores

DONT_REMASK = -1e4  # the release's DONT_REMASK_ME_SCORE


def chunked(params: DecodeParams, span_len: int) -> bool:
    """Whether units are `nonoverlap` chunks (a span of 1 frame is a chunk too) rather than stride-1 spans."""
    return params.span_arrangement == "nonoverlap" or span_len == 1


def units_to_mask(mask_p: Tensor, n_units: Tensor) -> Tensor:
    """[B] count of units to (re-)mask: max(int(mask_p * N), 1), or 0 for rows with nothing to generate."""
    num = (mask_p * n_units).to(torch.int64)  # float32 product, truncated like int()
    return torch.where(n_units > 0, num.clamp(min=1), torch.zeros_like(num))


def top_units(scores: Tensor, num: Tensor) -> Tensor:
    """[B, U] bool: the `num[b]` highest-scoring units of each row (the release's `topk`)."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return rank < num.to(scores.device)[:, None]


def unit_positions(unit_mask: Tensor, unit: int, T: int) -> Tensor:
    """[B, U] unit mask -> [B, T] position mask (the last unit may be shorter)."""
    B, U = unit_mask.shape
    return unit_mask.unsqueeze(-1).expand(B, U, unit).reshape(B, U * unit)[:, :T]


def rescore_units(conf: Tensor, unit_mask: Tensor, unit: int, scoring: str) -> Tensor:
    """Re-mask scores [B, U] from the confidences [B, T]; units not masked this step are frozen."""
    scores = span_scores(conf, unit, scoring) if unit > 1 else -torch.log(conf)
    return scores.masked_fill(~unit_mask, DONT_REMASK)


def spans_mask(starts: Tensor, T: int, span_len: int) -> Tensor:
    mask = torch.zeros(T, dtype=torch.bool, device=starts.device)
    for d in range(span_len):
        mask[(starts + d).clamp(max=T - 1)] = True
    return mask


def least_probable_spans(scores: Tensor, target: int, span_len: int) -> Tensor:
    """`stride1` masking of one row: scores [T] -> mask [T] (the release's binary search over the
    number of top-scoring stride-1 windows whose union covers about `target` tokens)."""
    T = scores.shape[-1]
    by_score = torch.argsort(scores.unfold(0, span_len, 1).sum(-1), descending=True)
    target = max(target, span_len)
    lo, hi = target // span_len, target - span_len + 1
    mid = round(0.5 * (lo + hi))
    if mid == lo or mid == hi:
        return spans_mask(by_score[:mid], T, span_len)
    while lo < mid < hi:
        mask = spans_mask(by_score[:mid], T, span_len)
        if int(mask.sum()) > target:
            hi = mid
        else:
            lo = mid
        mid = round(0.5 * (lo + hi))
    return mask


def least_probable_spans_static(scores: Tensor, target: Tensor, span_len: int) -> Tensor:
    """`least_probable_spans` for every row at once, with fixed shapes and no host reads (the static
    step): scores [B, T], target [B] (0: nothing to mask) -> mask [B, T], equal row by row.

    Each position's first covering rank (the best rank of the windows that contain it) gives the
    coverage of the top-m windows for every m at once; the release's binary search then runs a fixed
    number of rounds, each round a no-op once the search has stopped."""
    B, T = scores.shape
    windows = scores.unfold(1, span_len, 1).sum(-1)  # [B, W]
    by_score = torch.stack([torch.argsort(w, descending=True) for w in windows])  # as the per-row search
    rank = torch.empty_like(by_score).scatter_(1, by_score, torch.arange(windows.shape[1], device=scores.device)
                                                .expand_as(by_score))
    big = torch.full((B, span_len - 1), T, dtype=rank.dtype, device=rank.device)
    first = torch.cat([big, rank, big], 1).unfold(1, span_len, 1).min(-1).values  # [B, T]
    tgt = target.clamp(min=span_len)
    lo, hi = tgt // span_len, tgt - span_len + 1
    mid = _half(lo, hi)
    chosen = mid  # the early return (mid at a bound) keeps the first mid
    active = (lo < mid) & (mid < hi)
    for _ in range(T.bit_length() + 1):
        over = (first < mid[:, None]).sum(-1) > tgt
        chosen = torch.where(active, mid, chosen)
        hi, lo = torch.where(active & over, mid, hi), torch.where(active & ~over, mid, lo)
        mid = torch.where(active, _half(lo, hi), mid)
        active = active & (lo < mid) & (mid < hi)
    return (first < chosen[:, None]) & (target > 0)[:, None]


def _half(lo: Tensor, hi: Tensor) -> Tensor:
    """Python's round(0.5 * (lo + hi)) (halves to even) on integer tensors."""
    return torch.round(0.5 * (lo + hi).double()).to(lo.dtype)
