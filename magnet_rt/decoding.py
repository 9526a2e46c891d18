"""MAGNeT decoding: codebook by codebook, iterative span masking with CFG (audiocraft `lm_magnet.py:192-500`).

Per stage s with n steps, step i (t_i = linspace(0, 1, n)[i], steps_left = n - 1 - i):
  mask_p = cos(pi/2 * t_i); re-mask the max(int(mask_p * N), 1) least confident units of codebook s
  (N = units not pinned), forward [cond rows; null rows] once, CFG with coefficient
  mask_p * max_cfg + (1 - mask_p) * min_cfg, sample at temperature temp * steps_left / n (floor 0.01),
  write the sample into the masked positions, score the units; units not masked this step are frozen.

Units: `nonoverlap` chunks of span_len tokens, or single tokens whose re-mask set is built from
length-span_len windows at stride 1 (`stride1`, the least-probable-span search of the release).

Departures from the release, all deliberate:
- **No dropped frames.** The release cuts `nonoverlap` sequences to a multiple of span_len (10 s ->
  498 frames). Here the last chunk is shorter: 500 frames = 166 chunks of 3 + 1 chunk of 2, scored
  on its own tokens (see `sampling.span_scores`). Sequences that are multiples of 3 decode exactly as
  released.
- **Pinned tokens anywhere.** `fixed` [B, K, T] marks (codebook, frame) positions whose value comes
  from `init_codes`: they are re-written after every masking and never counted or re-masked, which
  gives prefix continuation (the release's only case), suffix conditioning and middle inpainting. A
  unit whose tokens are all pinned is never masked; a partly pinned unit is generated and its pinned
  tokens re-written. A row whose codebook is entirely pinned skips that stage's masking.
- **Groups.** A batch is made of request groups, each with its own generator (same seed -> same
  codes whatever else shares the batch) and its own cancellation: a cancelled group leaves the batch
  at the next step.
- **Draws.** Every step draws one uniform per (row, frame) from the row's group generator, and each
  path reads the draws of the positions it samples: the reference path (all positions), the fast path
  (re-masked positions, data-dependent shapes, `_step`) and its static form (`graphs.static_step`, fixed
  shapes, CUDA graphs) give the same codes for a seed.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import Cancelled, InvalidParams
from .graphs import DONT_REMASK, Mode, StepGraphs, rescore_units, top_units, unit_positions, units_to_mask
from .params import DecodeParams
from .sampling import TEMPERATURE_FLOOR, choose_tokens, probs_at, sampler, step_temperature, uniforms


@dataclass
class RowGroup:
    """Consecutive batch rows that belong to one request (its prompts x variations)."""

    rows: int
    generator: torch.Generator | None = None


@dataclass
class StepEvent:
    step: int  # steps done so far, 1-based, across stages
    total_steps: int
    stage: int
    stage_step: int  # 1-based within the stage
    stage_steps: int
    codes: dict[int, Tensor] | None = None  # at a stage's last step: group index -> [rows, K, T]


# ---- schedule --------------------------------------------------------------------------------------
def mask_fractions(steps: int) -> list[Tensor]:
    """mask_p per step as float32 scalars, computed exactly as the release does."""
    return [torch.cos(t * math.pi * 0.5) for t in torch.linspace(0, 1, steps)]


def cfg_coef(mask_p: Tensor, params: DecodeParams) -> float:
    p = float(mask_p)
    return p * params.max_cfg_coef + (1 - p) * params.min_cfg_coef


# ---- span selection (`nonoverlap` units: units_to_mask, top_units, ... live with the static step) ------
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


# ---- the forward with classifier-free guidance --------------------------------------------------------
def cfg_logits_at(lm, gen: Tensor, cond: Tensor, cross_len: Tensor | None, stage: int, coef: float,
                  sel: Tensor, fast: bool, cross=None) -> Tensor:
    """CFG logits of codebook `stage` from one forward of [cond rows; null rows].

    fast: [n, C] at the n positions where `sel` [B, T] is True: `cross` holds the request's precomputed
    text k/v (null rows skip cross-attention, whose output is exactly 0 for an all-zero condition), the
    window uses banded attention, the stage head runs only at the selected positions, and the null half is
    skipped when coef == 1 (it cannot change the result). Otherwise [B, T, C], the reference computation:
    all heads at all positions, dense masked attention, null rows attended too.
    """
    B = gen.shape[0]
    if fast:
        head = lm.linears[stage]
        if coef == 1.0:
            return head(lm(gen, cross, stage, heads="none", local="banded")[sel])
        h = lm(torch.cat([gen, gen]), cross, stage, heads="none", local="banded")  # [2B, T, D]
        cond_l, uncond_l = head(h[:B][sel]), head(h[B:][sel])
        return uncond_l + (cond_l - uncond_l) * coef
    both = torch.cat([cond, torch.zeros_like(cond)])
    both_len = None if cross_len is None else torch.cat([cross_len, cross_len])
    all_logits = lm(torch.cat([gen, gen]), lm.cross_inputs(both, both_len), stage)  # [2B, K, T, C]
    cond_l, uncond_l = all_logits.split(B)
    return (uncond_l + (cond_l - uncond_l) * coef)[:, stage]


# ---- decoding ---------------------------------------------------------------------------------------
class _Batch:
    """Decoding state of the live rows; rows of cancelled groups are dropped between steps.

    On the static path `gen` is the bound bucket's buffer, updated in place by each step."""

    def __init__(self, gen, fixed, init, cond, cross_len, groups, cross):
        self.gen, self.fixed, self.init, self.cond, self.cross_len = gen, fixed, init, cond, cross_len
        self.groups = groups  # list of (group index, RowGroup) still decoding
        self.cross = cross  # fast path: the text k/v of every layer, computed once per batch
        self.rows = torch.arange(gen.shape[0])  # each live row's index in the original batch
        self.bucket = None  # static path: the graphs.Bucket holding this batch's state
        self.finished: dict[int, Tensor] = {}

    def slices(self):
        start = 0
        for gi, g in self.groups:
            yield gi, g, slice(start, start + g.rows)
            start += g.rows

    def drop(self, cancelled: set[int], extra: list[Tensor]) -> list[Tensor]:
        keep = torch.cat([torch.full((g.rows,), gi not in cancelled) for gi, g in self.groups])
        idx = keep.nonzero().squeeze(1).to(self.gen.device)
        self.groups = [(gi, g) for gi, g in self.groups if gi not in cancelled]
        self.gen, self.fixed, self.init, self.cond = (
            t.index_select(0, idx) for t in (self.gen, self.fixed, self.init, self.cond))
        if self.cross_len is not None:
            self.cross_len = self.cross_len.index_select(0, idx)
        if self.cross is not None:
            self.cross = self.cross.select(idx)
        self.rows = self.rows.index_select(0, idx.cpu())
        self.bucket = None  # fewer rows: another bucket
        return [t.index_select(0, idx) for t in extra]


Rescorer = Callable[[Tensor, int], Tensor]
"""(codes [B, K, T] with the step's samples in place, stage) -> probability [B, T] that an external
model assigns to each token of codebook `stage` (the paper's rescoring, Eq. 5)."""


def decode(lm, cond: Tensor, frames: int, params: DecodeParams, groups: list[RowGroup], *,
           fixed: Tensor | None = None, init_codes: Tensor | None = None, cross_len: Tensor | None = None,
           on_step: Callable[[StepEvent], None] | None = None,
           is_cancelled: Callable[[int], bool] | None = None, fast: bool = True,
           rescorer: Rescorer | None = None, graphs: StepGraphs | None = None) -> list[Tensor | None]:
    """Decode a batch of request groups. cond [B, S, D] is the projected text (`lm.project_text`);
    rows are ordered group by group. Returns codes [rows, K, frames] per group, None if cancelled.

    With a `rescorer` and `params.rescore_weight` w > 0, the confidence of each sampled token becomes
    w * p_rescorer + (1 - w) * p_magnet before spans are scored (Ziv et al., Eq. 5).

    `graphs` (fast path, `nonoverlap`, no rescorer): run each step as `graphs.static_step`, replayed as a
    CUDA graph on a GPU. Same codes as the fast path; the choice of path never changes a result."""
    K, C, device = lm.n_q, lm.card, lm.device
    params.check_stages(K)
    B = sum(g.rows for g in groups)
    if cond.shape[0] != B:
        raise InvalidParams(f"{cond.shape[0]} condition rows for groups totalling {B} rows")
    if not 1 <= frames <= lm.cfg.segment_frames:
        raise InvalidParams(f"frames must be in 1..{lm.cfg.segment_frames} (the checkpoint's "
                            f"{lm.cfg.segment_duration:g} s segment), got {frames}")
    fixed, init = _pinned(fixed, init_codes, B, K, frames, C, device)
    gen = torch.where(fixed, init, torch.full_like(init, C))
    cond = cond.to(device)
    chunked = _chunked(params, lm.cfg.span_len)
    rescoring = rescorer is not None and params.rescore_weight > 0
    static = graphs if fast and chunked and not rescoring else None
    cross = lm.cross_inputs(cond, cross_len) if fast and static is None else None  # a bucket holds its own
    batch = _Batch(gen, fixed, init, cond, cross_len, list(enumerate(groups)), cross)
    total, done = params.total_steps, 0
    for stage, steps in enumerate(params.decoding_steps):
        done = _decode_stage(lm, batch, stage, steps, params, fast, done, total, on_step, is_cancelled,
                             rescorer if rescoring else None, static)
        if not batch.groups:
            break
    for gi, _, sl in batch.slices():
        batch.finished[gi] = batch.gen[sl].clone()  # not a view of a bucket's buffer
    return [batch.finished.get(i) for i in range(len(groups))]


def _chunked(params: DecodeParams, span_len: int) -> bool:
    """Whether units are `nonoverlap` chunks (a span of 1 frame is a chunk too) rather than stride-1 spans."""
    return params.span_arrangement == "nonoverlap" or span_len == 1


def _pinned(fixed, init_codes, B, K, T, C, device) -> tuple[Tensor, Tensor]:
    if fixed is None:
        return (torch.zeros(B, K, T, dtype=torch.bool, device=device),
                torch.full((B, K, T), C, dtype=torch.long, device=device))
    if init_codes is None:
        raise InvalidParams("fixed positions need init_codes")
    fixed = fixed.to(device=device, dtype=torch.bool).expand(B, K, T)
    init = init_codes.to(device=device, dtype=torch.long).expand(B, K, T)
    if fixed.shape != (B, K, T):
        raise InvalidParams(f"fixed must be [{B}, {K}, {T}], got {list(fixed.shape)}")
    vals = init[fixed]
    if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= C):
        raise InvalidParams(f"pinned codes must be in [0, {C})")
    return fixed, init


def _decode_stage(lm, batch: _Batch, stage, steps, params, fast, done, total, on_step, is_cancelled,
                  rescorer=None, graphs: StepGraphs | None = None) -> int:
    T, span = batch.gen.shape[-1], lm.cfg.span_len
    chunked = _chunked(params, span)
    unit = span if chunked else 1
    kind = sampler(params.use_sampling, params.top_p, params.top_k)
    mode = Mode.of(params, kind, unit)
    pad = (-T) % unit
    pinned = F.pad(batch.fixed[:, stage], (0, pad), value=True).view(batch.gen.shape[0], -1, unit).all(-1)
    scores = torch.zeros(pinned.shape, device=batch.gen.device).masked_fill(pinned, DONT_REMASK)
    n_units = (~pinned).sum(-1)
    for i, mask_p in enumerate(mask_fractions(steps)):
        if is_cancelled is not None:
            gone = {gi for gi, _ in batch.groups if is_cancelled(gi)}
            if gone:
                scores, n_units = batch.drop(gone, [scores, n_units])
                if not batch.groups:
                    return done
        coef = cfg_coef(mask_p, params)
        temp = step_temperature(params.temperature, params.anneal_temperature, steps - 1 - i, steps)
        u = None  # one draw per position, group by group, whichever positions a path samples
        if kind != "greedy":
            u = uniforms([(g.rows, g.generator) for _, g, _ in batch.slices()], T, batch.gen.device)
        if graphs is not None:
            scores = _static_step(lm, graphs, batch, stage, params, mode, mask_p, coef, temp, u, scores, n_units)
        elif bool((n_units > 0).any()):
            scores = _step(lm, batch, stage, params, kind, unit, chunked, fast, mask_p, coef, temp, u, scores,
                           n_units, rescorer)
        done += 1
        if on_step is not None:
            last = i == steps - 1
            codes = {gi: batch.gen[sl].clone() for gi, _, sl in batch.slices()} if last else None
            on_step(StepEvent(done, total, stage, i + 1, steps, codes))
    return done


def _step(lm, batch: _Batch, stage, params, kind, unit, chunked, fast, mask_p, coef, temp, u, scores, n_units,
          rescorer) -> Tensor:
    """One step with data-dependent shapes: the fast path samples only where units were re-masked, the
    reference path everywhere (as the release does). Returns the next scores."""
    C, T, span = lm.card, batch.gen.shape[-1], lm.cfg.span_len
    stage_seq = batch.gen[:, stage].clone()
    num = units_to_mask(mask_p, n_units.cpu())
    if chunked:
        unit_mask = top_units(scores, num)
        stage_seq[unit_positions(unit_mask, unit, T)] = C
    else:
        for b in range(stage_seq.shape[0]):
            if num[b] > 0:
                stage_seq[b, least_probable_spans(scores[b], int(num[b]), span)] = C
    in_units = stage_seq == C  # every position of the masked units, pinned ones included
    stage_seq = torch.where(batch.fixed[:, stage], batch.init[:, stage], stage_seq)
    batch.gen[:, stage] = stage_seq
    masked = stage_seq == C  # what this step samples into
    # Only positions of units masked this step can change or be scored. The fast path samples
    # there alone; the reference path samples every position, as the release does.
    sel = in_units if chunked else masked
    at = sel if fast else torch.ones_like(sel)
    logits = cfg_logits_at(lm, batch.gen, batch.cond, batch.cross_len, stage, coef, sel, fast, batch.cross)
    logits = logits.reshape(-1, logits.shape[-1])  # [n, C]
    probs = probs_at(logits, temp)
    tok, cf = choose_tokens(logits, probs, kind, top_p=params.top_p, top_k=params.top_k,
                            u=None if u is None else u[at])
    tokens = stage_seq.clone()
    tokens[at] = tok
    conf = torch.ones(stage_seq.shape, device=stage_seq.device)
    conf[at] = cf
    batch.gen[:, stage] = torch.where(masked, tokens, stage_seq)
    if rescorer is not None:
        w = params.rescore_weight
        p_r = (rescorer(batch.gen, stage, rows=batch.rows) if getattr(rescorer, "takes_rows", False)
               else rescorer(batch.gen, stage))
        conf = torch.where(sel, w * p_r.to(conf) + (1 - w) * conf, conf)
    # single tokens (stride1, unit 1) are scored -log p and frozen where not masked this step
    return rescore_units(conf, unit_mask if chunked else masked, unit, params.span_scoring)


def _static_step(lm, graphs: StepGraphs, batch: _Batch, stage, params, mode: Mode, mask_p, coef, temp, u,
                 scores, n_units) -> Tensor:
    """One step as `graphs.static_step` on the batch's bucket (bound on first use and after rows leave:
    from then on `batch.gen` is the bucket's buffer). Scalars go in with `fill_`: no host sync."""
    if batch.bucket is None:
        batch.bucket = graphs.bucket(batch.gen.shape[0], batch.gen.shape[-1], batch.cond.shape[1])
        batch.bucket.load(batch.gen, batch.fixed, batch.init, batch.cond, batch.cross_len)
        batch.gen = batch.bucket.buf.gen
    b = batch.bucket.buf
    if scores is not b.scores:
        b.scores.copy_(scores)
    b.n_units.copy_(n_units)
    b.mask_p.fill_(float(mask_p))
    b.coef.fill_(coef)
    b.temp.fill_(max(temp, TEMPERATURE_FLOOR))
    b.top_p.fill_(params.top_p)
    if u is not None:
        b.u.copy_(u)
    batch.bucket.step(stage, coef != 1.0, mode)
    return b.scores


def decode_single(lm, text_hidden: Tensor, text_mask: Tensor, frames: int, params: DecodeParams, *,
                  seed: int | None = None, fixed=None, init_codes=None, progress=None,
                  generator: torch.Generator | None = None, fast: bool = True, cancelled=None) -> Tensor:
    """`MagnetLM.generate`: one request of B text rows, padded as released (all rows attend to every
    padded text position). `cancelled()` -> True stops between steps and raises Cancelled."""
    if generator is None:
        generator = torch.Generator(device=lm.device)
        generator.manual_seed(secrets.randbits(63) if seed is None else int(seed))
    cond = lm.project_text(text_hidden.to(lm.device), text_mask.to(lm.device))
    B = cond.shape[0]
    if fixed is not None and fixed.dim() == 2:
        fixed, init_codes = fixed.unsqueeze(0), init_codes.unsqueeze(0)
    out = decode(lm, cond, frames, params, [RowGroup(B, generator)], fixed=fixed, init_codes=init_codes,
                 on_step=progress, is_cancelled=(lambda _: cancelled()) if cancelled else None, fast=fast)[0]
    if out is None:
        raise Cancelled("generation cancelled")
    return out
