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
  path reads the draws of the positions it samples: the reference step (all positions), the dynamic step
  (re-masked positions, data-dependent shapes) and the static step (`graphs.static_step`, fixed shapes,
  CUDA graphs) give the same codes for a seed.
- **Optional CFG per stage.** `higher_cfg_coef` (None by default: released behaviour) starts the higher
  codebooks' CFG anneal at its own value; the demo model needs it (docs/TRAINING.md 5.3).

The decode step is an object chosen once per request (`choose_path`: the device's measured fastest forms,
the span arrangement, whether a rescorer runs between steps) and called once per step with the step's
scalars (`StepScalars`); the loop never asks which path it is on.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .devices import fastest_forms
from .errors import DecodeCancelled, InvalidParams
from .graphs import Bucket, StepForm, StepGraphs
from .interfaces import BindableRescorer, Rescorer
from .lm import Attention, CrossInputs, MagnetLM
from .params import DecodeParams, pick_seed
from .sampling import TEMPERATURE_FLOOR, choose_tokens, probs_at, sampler, step_temperature, uniforms
from .selection import (
    DONT_REMASK,
    chunked,
    least_probable_spans,
    rescore_units,
    top_units,
    unit_positions,
    units_to_mask,
)

log = logging.getLogger(__name__)


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
    return [torch.cos(t * torch.pi * 0.5) for t in torch.linspace(0, 1, steps)]


def cfg_coef(mask_p: Tensor, params: DecodeParams, stage: int) -> float:
    p = float(mask_p)
    return p * params.start_cfg_coef(stage) + (1 - p) * params.min_cfg_coef


@dataclass(frozen=True)
class StepScalars:
    """What changes from one step to the next: every step form reads these and nothing else per step."""

    mask_p: Tensor  # float32 scalar: the fraction of units re-masked
    coef: float  # CFG coefficient
    temperature: float  # before the floor
    u: Tensor | None  # [rows, T] one uniform per position (None when greedy)

    @classmethod
    def at(cls, params: DecodeParams, stage: int, mask_p: Tensor, i: int, steps: int,
           u: Tensor | None) -> StepScalars:
        temp = step_temperature(params.temperature, params.anneal_temperature, steps - 1 - i, steps)
        return cls(mask_p, cfg_coef(mask_p, params, stage), temp, u)


# ---- which step: chosen once per request --------------------------------------------------------------
class DecodePath(enum.Enum):
    REFERENCE = "reference"  # the release's computation: all heads, dense attention, every position sampled
    DYNAMIC = "dynamic"  # samples only the re-masked positions (data-dependent shapes)
    STATIC = "static"  # fixed shapes, no host reads: replayed as CUDA graphs on a GPU (`graphs`)


@dataclass(frozen=True)
class PathChoice:
    path: DecodePath
    attention: Attention
    reason: str  # why this path, in words (logged at debug level, and asserted by tests)


def choose_path(device: torch.device, params: DecodeParams, *, rescoring: bool, graphs: bool,
                requested: DecodePath | None = None) -> PathChoice:
    """The step form of one request. `graphs`: static steps are available (the pipeline made them where
    they were measured faster, or where asked: `pipeline.PipelineOptions.step_graphs`); `requested`: a path
    asked for explicitly (None: static steps when available, else dynamic ones). The attention form is the
    device's measured faster one (`devices.fastest_forms`), dense on the reference path."""
    forms, arrangement = fastest_forms(device), params.span_arrangement
    if requested is DecodePath.REFERENCE:
        return PathChoice(DecodePath.REFERENCE, Attention.DENSE, "the reference computation was asked for")
    static = requested is DecodePath.STATIC or (requested is None and graphs)
    if static and rescoring:
        return PathChoice(DecodePath.DYNAMIC, forms.attention, "static steps cannot call the rescorer (an "
                          "external model run between a step's sampling and its scoring): dynamic steps")
    if static:
        if not graphs:
            raise InvalidParams("the static path needs step graphs (graphs.StepGraphs)")
        return PathChoice(DecodePath.STATIC, forms.attention, f"static steps ({arrangement}) on {device.type}")
    why = ("asked for" if requested is DecodePath.DYNAMIC else "static steps are off for this pipeline"
           if forms.static_steps else f"measured faster than static steps on {device.type}")
    return PathChoice(DecodePath.DYNAMIC, forms.attention, f"dynamic steps ({arrangement}): {why}")


def make_step(lm: MagnetLM, params: DecodeParams, choice: PathChoice, rescorer: Rescorer | None = None,
              graphs: StepGraphs | None = None) -> DecodeStep:
    if choice.path is DecodePath.STATIC:
        return StaticStep(lm, params, choice, graphs)
    return EagerStep(lm, params, choice, rescorer)


# ---- the batch -----------------------------------------------------------------------------------------
class _Batch:
    """Decoding state of the live rows; rows of cancelled groups are dropped between steps.

    On the static path `gen` is the bound bucket's buffer, updated in place by each step."""

    def __init__(self, gen: Tensor, fixed: Tensor, init: Tensor, cond: Tensor, cross_len: Tensor | None,
                 groups: list[RowGroup], beat: Tensor | None = None, key: Tensor | None = None):
        self.gen, self.fixed, self.init, self.cond, self.cross_len = gen, fixed, init, cond, cross_len
        self.beat = beat  # [B, T, F] the rows' beat grids, or None
        self.key = key  # [B, F] the rows' key inputs, or None
        self.groups = list(enumerate(groups))  # (group index, RowGroup) still decoding
        self.cross: CrossInputs | None = None  # dynamic step: the text k/v of every layer, once per batch
        self.rows = torch.arange(gen.shape[0])  # each live row's index in the original batch
        self.bucket: Bucket | None = None  # static step: the bucket holding this batch's state

    def slices(self) -> Iterator[tuple[int, RowGroup, slice]]:
        start = 0
        for gi, g in self.groups:
            yield gi, g, slice(start, start + g.rows)
            start += g.rows

    def uniforms(self) -> Tensor:
        """One draw per position, group by group, whichever positions a step samples."""
        return uniforms([(g.rows, g.generator) for _, g, _ in self.slices()], self.gen.shape[-1], self.gen.device)

    def drop(self, cancelled: set[int], extra: list[Tensor]) -> list[Tensor]:
        keep = torch.cat([torch.full((g.rows,), gi not in cancelled) for gi, g in self.groups])
        idx = keep.nonzero().squeeze(1).to(self.gen.device)
        self.groups = [(gi, g) for gi, g in self.groups if gi not in cancelled]
        self.gen, self.fixed, self.init, self.cond = (
            t.index_select(0, idx) for t in (self.gen, self.fixed, self.init, self.cond))
        if self.cross_len is not None:
            self.cross_len = self.cross_len.index_select(0, idx)
        if self.beat is not None:
            self.beat = self.beat.index_select(0, idx)
        if self.key is not None:
            self.key = self.key.index_select(0, idx)
        if self.cross is not None:
            self.cross = self.cross.select(idx)
        self.rows = self.rows.index_select(0, idx.cpu())
        self.bucket = None  # fewer rows: another bucket
        return [t.index_select(0, idx) for t in extra]


# ---- the step forms ------------------------------------------------------------------------------------
class DecodeStep:
    """One decoding step of codebook `stage` on `batch`: re-mask, one CFG forward, sample, score.
    Returns the scores the next step ranks units by. What a request fixes is computed here, once."""

    def __init__(self, lm: MagnetLM, params: DecodeParams, choice: PathChoice):
        self.lm, self.params, self.choice = lm, params, choice
        self.chunked = chunked(params, lm.cfg.span_len)
        self.unit = lm.cfg.span_len if self.chunked else 1  # stride1 scores single tokens
        self.kind = sampler(params.use_sampling, params.top_p, params.top_k)

    def bind(self, batch: _Batch) -> None:
        """Once per batch, before the first step."""

    def __call__(self, batch: _Batch, stage: int, s: StepScalars, scores: Tensor, n_units: Tensor) -> Tensor:
        raise NotImplementedError


class EagerStep(DecodeStep):
    """Data-dependent shapes. The dynamic form samples only where units were re-masked (precomputed text
    k/v, null rows skip cross-attention, stage head only, the null half skipped when coef == 1); the
    reference form samples every position from the release's computation (all heads, null rows attended)."""

    def __init__(self, lm: MagnetLM, params: DecodeParams, choice: PathChoice, rescorer: Rescorer | None):
        super().__init__(lm, params, choice)
        self.rescorer = rescorer if rescorer is not None and params.rescore_weight > 0 else None
        self.everywhere = choice.path is DecodePath.REFERENCE

    def bind(self, batch: _Batch) -> None:
        if not self.everywhere:
            batch.cross = self.lm.cross_inputs(batch.cond, batch.cross_len, batch.beat, batch.key)

    def __call__(self, batch: _Batch, stage: int, s: StepScalars, scores: Tensor, n_units: Tensor) -> Tensor:
        if not bool((n_units > 0).any()):
            return scores
        seq, unit_mask, in_units = self._remask(batch, stage, s.mask_p, scores, n_units)
        masked = seq == self.lm.card  # what this step samples into
        sel = in_units if self.chunked else masked  # only these can change or be scored
        at = torch.ones_like(sel) if self.everywhere else sel
        logits = self.logits(batch, stage, s.coef, at)  # [n, C] at the positions `at`
        tok, cf = choose_tokens(logits, probs_at(logits, s.temperature), self.kind, top_p=self.params.top_p,
                                top_k=self.params.top_k, u=None if s.u is None else s.u[at])
        tokens, conf = seq.clone(), torch.ones(seq.shape, device=seq.device)
        tokens[at], conf[at] = tok, cf
        batch.gen[:, stage] = torch.where(masked, tokens, seq)
        if self.rescorer is not None:
            conf = self._rescored(batch, stage, conf, sel)
        # single tokens (stride1, unit 1) are scored -log p and frozen where not masked this step
        return rescore_units(conf, unit_mask if self.chunked else masked, self.unit, self.params.span_scoring)

    def _remask(self, batch: _Batch, stage: int, mask_p: Tensor, scores: Tensor,
                n_units: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Write the mask id into this step's units -> (stage codes with pins re-written, unit mask or
        None, every position of the masked units, pinned ones included)."""
        C, T = self.lm.card, batch.gen.shape[-1]
        seq = batch.gen[:, stage].clone()
        num = units_to_mask(mask_p, n_units.cpu())
        unit_mask = None
        if self.chunked:
            unit_mask = top_units(scores, num)
            seq[unit_positions(unit_mask, self.unit, T)] = C
        else:
            for b in range(seq.shape[0]):
                if num[b] > 0:
                    seq[b, least_probable_spans(scores[b], int(num[b]), self.lm.cfg.span_len)] = C
        in_units = seq == C
        seq = torch.where(batch.fixed[:, stage], batch.init[:, stage], seq)
        batch.gen[:, stage] = seq
        return seq, unit_mask, in_units

    def logits(self, batch: _Batch, stage: int, coef: float, at: Tensor) -> Tensor:
        """CFG logits [n, C] of codebook `stage` at the n positions where `at` [B, T] is True, from one
        forward of [cond rows; null rows]."""
        lm, gen, B = self.lm, batch.gen, batch.gen.shape[0]
        if self.everywhere:
            both = torch.cat([batch.cond, torch.zeros_like(batch.cond)])
            both_len = None if batch.cross_len is None else torch.cat([batch.cross_len, batch.cross_len])
            both_beat, both_key = (None if t is None else torch.cat([t, torch.zeros_like(t)])
                                   for t in (batch.beat, batch.key))  # the null rows: no controls
            cross = lm.cross_inputs(both, both_len, both_beat, both_key)
            cond_l, uncond_l = lm(torch.cat([gen, gen]), cross, stage).split(B)
            return (uncond_l + (cond_l - uncond_l) * coef)[:, stage][at]
        head, form = lm.linears[stage], self.choice.attention
        if coef == 1.0:  # the null half cannot change the result
            return head(lm.hidden(gen, batch.cross, stage, form)[at])
        h = lm.hidden(torch.cat([gen, gen]), batch.cross, stage, form)  # [2B, T, D]
        cond_l, uncond_l = head(h[:B][at]), head(h[B:][at])
        return uncond_l + (cond_l - uncond_l) * coef

    def _rescored(self, batch: _Batch, stage: int, conf: Tensor, sel: Tensor) -> Tensor:
        """Eq. 5: w * p_rescorer + (1 - w) * p_magnet at the positions this step could change."""
        w, r = self.params.rescore_weight, self.rescorer
        p_r = r(batch.gen, stage, rows=batch.rows) if isinstance(r, BindableRescorer) else r(batch.gen, stage)
        return torch.where(sel, w * p_r.to(conf) + (1 - w) * conf, conf)


class StaticStep(DecodeStep):
    """`graphs.static_step` on the batch's bucket (bound on first use and after rows leave: from then on
    `batch.gen` is the bucket's buffer). Scalars go in with `fill_`: no host sync."""

    def __init__(self, lm: MagnetLM, params: DecodeParams, choice: PathChoice, graphs: StepGraphs):
        super().__init__(lm, params, choice)
        self.graphs = graphs
        self.form = StepForm.of(params, self.kind, self.unit, self.chunked, choice.attention, lm.cfg.span_len)

    def __call__(self, batch: _Batch, stage: int, s: StepScalars, scores: Tensor, n_units: Tensor) -> Tensor:
        if batch.bucket is None:
            rows, frames = batch.gen.shape[0], batch.gen.shape[-1]
            batch.bucket = self.graphs.bucket(rows, frames, batch.cond.shape[1], self.form.unit)
            batch.bucket.load(batch.gen, batch.fixed, batch.init, batch.cond, batch.cross_len, batch.beat,
                              batch.key)
            batch.gen = batch.bucket.buf.gen
        b = batch.bucket.buf
        if scores is not b.scores:
            b.scores.copy_(scores)
        b.n_units.copy_(n_units)
        b.mask_p.fill_(float(s.mask_p))
        b.coef.fill_(s.coef)
        b.temp.fill_(max(s.temperature, TEMPERATURE_FLOOR))
        b.top_p.fill_(self.params.top_p)
        if s.u is not None:
            b.u.copy_(s.u)
        batch.bucket.step(stage, s.coef != 1.0, self.form)
        return b.scores


# ---- the loop ------------------------------------------------------------------------------------------
@dataclass
class _Progress:
    total: int
    on_step: Callable[[StepEvent], None] | None
    done: int = 0

    def step(self, batch: _Batch, stage: int, i: int, steps: int) -> None:
        self.done += 1
        if self.on_step is not None:
            last = i == steps - 1
            codes = {gi: batch.gen[sl].clone() for gi, _, sl in batch.slices()} if last else None
            self.on_step(StepEvent(self.done, self.total, stage, i + 1, steps, codes))


def decode(lm: MagnetLM, cond: Tensor, frames: int, params: DecodeParams, groups: list[RowGroup], *,
           fixed: Tensor | None = None, init_codes: Tensor | None = None, cross_len: Tensor | None = None,
           beat: Tensor | None = None, key: Tensor | None = None, on_step: Callable[[StepEvent], None] | None = None,
           is_cancelled: Callable[[int], bool] | None = None, rescorer: Rescorer | None = None,
           path: DecodePath | None = None, graphs: StepGraphs | None = None) -> list[Tensor | None]:
    """Decode a batch of request groups. cond [B, S, D] is the projected text (`lm.project_text`);
    rows are ordered group by group. Returns codes [rows, K, frames] per group, None if cancelled.
    `beat` [B, frames, F]: the rows' beat grids (`tempo.beat_grids`) for a model with a beat grid; `key`
    [B, F]: their key inputs (`tonality.key_vectors`) for a model with a key input.

    With a `rescorer` and `params.rescore_weight` w > 0, the confidence of each sampled token becomes
    w * p_rescorer + (1 - w) * p_magnet before spans are scored (Ziv et al., Eq. 5).

    `path` (None: `choose_path`'s choice for the device) and `graphs` (the static steps' buckets) pick the
    step form; the choice of form never changes a result."""
    K, C, device = lm.n_q, lm.card, lm.device
    params.check_stages(K)
    B = sum(g.rows for g in groups)
    if cond.shape[0] != B:
        raise InvalidParams(f"{cond.shape[0]} condition rows for groups totalling {B} rows")
    if not 1 <= frames <= lm.cfg.segment_frames:
        raise InvalidParams(f"frames must be in 1..{lm.cfg.segment_frames} (the checkpoint's "
                            f"{lm.cfg.segment_duration:g} s segment), got {frames}")
    fixed, init = _pinned(fixed, init_codes, B, K, frames, C, device)
    if beat is not None and lm.beat_proj is None:
        beat = None  # a model without a beat grid reads the tempo from the prompt's words only
    if beat is not None and tuple(beat.shape[:2]) != (B, frames):
        raise InvalidParams(f"beat grid must be [{B}, {frames}, F], got {list(beat.shape)}")
    if key is not None and lm.key_proj is None:
        key = None  # a model without a key input reads the key from the prompt's words only
    if key is not None and key.shape[0] != B:
        raise InvalidParams(f"key inputs must be [{B}, F], got {list(key.shape)}")
    rescoring = rescorer is not None and params.rescore_weight > 0
    choice = choose_path(device, params, rescoring=rescoring, graphs=graphs is not None, requested=path)
    log.debug("decode: %s steps, %s attention: %s", choice.path.value, choice.attention.value, choice.reason)
    step = make_step(lm, params, choice, rescorer, graphs)
    batch = _Batch(torch.where(fixed, init, torch.full_like(init, C)), fixed, init, cond.to(device), cross_len,
                   groups, None if beat is None else beat.to(device), None if key is None else key.to(device))
    step.bind(batch)
    progress = _Progress(params.total_steps, on_step)
    for stage, steps in enumerate(params.decoding_steps):
        _decode_stage(step, batch, stage, steps, progress, is_cancelled)
        if not batch.groups:
            break
    finished = {gi: batch.gen[sl].clone() for gi, _, sl in batch.slices()}  # not views of a bucket's buffer
    return [finished.get(i) for i in range(len(groups))]


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


def _decode_stage(step: DecodeStep, batch: _Batch, stage: int, steps: int, progress: _Progress,
                  is_cancelled: Callable[[int], bool] | None) -> None:
    params, unit, kind, T = step.params, step.unit, step.kind, batch.gen.shape[-1]
    pinned = F.pad(batch.fixed[:, stage], (0, (-T) % unit), value=True).view(batch.gen.shape[0], -1, unit).all(-1)
    scores = torch.zeros(pinned.shape, device=batch.gen.device).masked_fill(pinned, DONT_REMASK)
    n_units = (~pinned).sum(-1)
    for i, mask_p in enumerate(mask_fractions(steps)):
        if is_cancelled is not None:
            gone = {gi for gi, _ in batch.groups if is_cancelled(gi)}
            if gone:
                scores, n_units = batch.drop(gone, [scores, n_units])
                if not batch.groups:
                    return
        u = batch.uniforms() if kind != "greedy" else None
        scores = step(batch, stage, StepScalars.at(params, stage, mask_p, i, steps, u), scores, n_units)
        progress.step(batch, stage, i, steps)


def decode_single(lm: MagnetLM, text_hidden: Tensor, text_mask: Tensor, frames: int, params: DecodeParams, *,
                  seed: int | None = None, fixed: Tensor | None = None, init_codes: Tensor | None = None,
                  progress: Callable[[StepEvent], None] | None = None, generator: torch.Generator | None = None,
                  path: DecodePath | None = None, graphs: StepGraphs | None = None,
                  cancelled: Callable[[], bool] | None = None, beat: Tensor | None = None,
                  key: Tensor | None = None) -> Tensor:
    """One request of B text rows, padded as released (all rows attend to every padded text position).
    `cancelled()` -> True stops between steps and raises DecodeCancelled; `beat`, `key`: see `decode`."""
    if generator is None:
        generator = torch.Generator(device=lm.device)
        generator.manual_seed(pick_seed(None if seed is None else int(seed)))
    with torch.inference_mode():
        cond = lm.project_text(text_hidden.to(lm.device), text_mask.to(lm.device))
        if fixed is not None and fixed.dim() == 2:
            fixed, init_codes = fixed.unsqueeze(0), init_codes.unsqueeze(0)
        out = decode(lm, cond, frames, params, [RowGroup(cond.shape[0], generator)], fixed=fixed,
                     init_codes=init_codes, beat=beat, key=key, on_step=progress, path=path, graphs=graphs,
                     is_cancelled=(lambda _: cancelled()) if cancelled else None)[0]
    if out is None:
        raise DecodeCancelled("generation cancelled")
    return out
