"""The decode step with static shapes and no host synchronisation, replayed as a CUDA graph.

`decoding`'s dynamic step selects the re-masked positions with boolean indexing, which sizes tensors by
data and reads counts back to the host at every step; on a GPU each step also launches ~20 kernels per
layer. Here one step (either span arrangement) is written so that every shape depends only on the bucket and
nothing is read back:

- the stage head and the sampler run at every position; only the positions of units masked this step
  are written, so the result equals the dynamic step's (which computes those positions alone);
- `stride1`'s least-probable-span search (a binary search over a count of windows) runs a fixed number
  of rounds on device tensors (`selection.least_probable_spans_static`), giving the same mask;
- the number of units to mask, the CFG coefficient, the temperature and top-p are device scalars;
- the uniforms are drawn per request group from the group's own generator, outside the graph, into a
  static buffer (`sampling.uniforms`: the same draws every path uses);
- the text k/v are zero-padded to a power of two with a -inf bias beyond each row's length, which is
  exactly the per-row text length the dynamic step attends to.

A bucket is (rows, frames, padded text length, unit); within it a graph per (stage, CFG on/off, `StepForm`).
On CUDA each is captured once (on first use, or at warm-up) and replayed: one launch per step. On the CPU
the same function runs eagerly; the tests check it against the dynamic step there, `tests_gpu/` the graphs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .devices import fastest_forms
from .errors import InvalidParams
from .lm import Attention, CrossInputs, MagnetLM
from .params import DecodeParams
from .sampling import choose_tokens, probs_at
from .selection import least_probable_spans_static, rescore_units, top_units, unit_positions, units_to_mask

MIN_TEXT_BUCKET = 16


STEP_GRAPHS = ("auto", "on", "off")


def check_step_graphs(value: str) -> str:
    if value not in STEP_GRAPHS:
        raise InvalidParams(f"step_graphs must be one of {STEP_GRAPHS}, got {value!r}")
    return value


def use_static(device: torch.device | str) -> bool:
    """Where the static step serves by default: CUDA, where a captured graph replaces ~20 launches per
    layer. On the CPU the dynamic step samples fewer positions and wins (`devices.MEASURED_FORMS`)."""
    return fastest_forms(device).static_steps


def text_bucket(length: int) -> int:
    """Text lengths are padded to the next power of two (>= 16) so prompts share graphs."""
    return max(MIN_TEXT_BUCKET, 1 << (max(length, 1) - 1).bit_length())


@dataclass(frozen=True)
class StepForm:
    """What changes the computation of a static step (not just a scalar): sampler, selection, attention."""

    kind: str  # `sampling.sampler`: greedy, top_p, top_k or full
    top_k: int  # the k of top_k (a shape); top-p's p is a device scalar
    scoring: str
    unit: int  # span length of the `nonoverlap` units; 1 for `stride1`'s single tokens
    chunked: bool  # `nonoverlap` units (else `stride1` least-probable spans of span_len)
    span_len: int
    attention: Attention

    @classmethod
    def of(cls, params: DecodeParams, kind: str, unit: int, chunked: bool, attention: Attention,
           span_len: int) -> StepForm:
        return cls(kind, params.top_k if kind == "top_k" else 0, params.span_scoring, unit, chunked, span_len,
                   attention)


# ---- the step: a pure function of the bucket's buffers ------------------------------------------------
class Buffers:
    """Static inputs and state of one bucket; a step reads and writes only these."""

    def __init__(self, lm: MagnetLM, rows: int, frames: int, text: int, unit: int):
        K, D, H, dev = lm.n_q, lm.cfg.dim, lm.cfg.num_heads, lm.device
        units = -(-frames // unit)
        self.gen = torch.zeros(rows, K, frames, dtype=torch.long, device=dev)
        self.fixed = torch.zeros(rows, K, frames, dtype=torch.bool, device=dev)
        self.init = torch.zeros(rows, K, frames, dtype=torch.long, device=dev)
        self.scores = torch.zeros(rows, units, device=dev)
        self.n_units = torch.zeros(rows, dtype=torch.long, device=dev)
        self.u = torch.zeros(rows, frames, device=dev)
        self.mask_p, self.coef, self.temp, self.top_p = (torch.zeros((), device=dev) for _ in range(4))
        dt = lm.compute_dtype
        kv = [(torch.zeros(rows, H, text, D // H, dtype=dt, device=dev),
               torch.zeros(rows, H, text, D // H, dtype=dt, device=dev)) for _ in lm.layers]
        controls = torch.zeros(rows, frames, D, device=dev) if lm.has_controls else None  # zeros: none given
        self.cross = CrossInputs(kv=kv, rows=rows, bias=torch.zeros(rows, 1, 1, text, dtype=dt, device=dev),
                                 controls=controls)


def static_step(lm: MagnetLM, b: Buffers, stage: int, cfg: bool, form: StepForm) -> None:
    """One decoding step of codebook `stage`, in place on `b` (gen, scores)."""
    C = lm.card
    B, _, T = b.gen.shape
    num = units_to_mask(b.mask_p, b.n_units)
    if form.chunked:
        unit_mask = top_units(b.scores, num)
        remask = unit_positions(unit_mask, form.unit, T)
    else:
        remask = least_probable_spans_static(b.scores, num, form.span_len)
    seq = torch.where(remask, C, b.gen[:, stage])
    in_units = seq == C  # every position of the masked units, pinned ones included
    seq = torch.where(b.fixed[:, stage], b.init[:, stage], seq)
    masked = seq == C  # what this step samples into
    b.gen[:, stage] = seq
    head = lm.linears[stage]
    if cfg:
        h = lm.hidden(torch.cat([b.gen, b.gen]), b.cross, stage, form.attention)
        cond_l, uncond_l = head(h[:B]), head(h[B:])
        logits = uncond_l + (cond_l - uncond_l) * b.coef
    else:
        logits = head(lm.hidden(b.gen, b.cross, stage, form.attention))
    logits = logits.reshape(B * T, C)
    probs = probs_at(logits, b.temp)
    tok, cf = choose_tokens(logits, probs, form.kind, top_p=b.top_p, top_k=form.top_k, u=b.u.reshape(-1))
    b.gen[:, stage] = torch.where(masked, tok.view(B, T), seq)
    sel = in_units if form.chunked else masked  # the positions whose confidences are scored
    conf = torch.where(sel, cf.view(B, T), torch.ones_like(cf.view(B, T)))
    b.scores.copy_(rescore_units(conf, unit_mask if form.chunked else masked, form.unit, form.scoring))


# ---- buckets and graphs -------------------------------------------------------------------------------
class Bucket:
    """The buffers of one (rows, frames, text) shape and their captured steps."""

    def __init__(self, lm: MagnetLM, rows: int, frames: int, text: int, unit: int, pool, stream):
        self.lm, self.buf, self.pool, self.stream = lm, Buffers(lm, rows, frames, text, unit), pool, stream
        self.graphs: dict[tuple[int, bool, StepForm], torch.cuda.CUDAGraph] = {}

    def load(self, gen: Tensor, fixed: Tensor, init: Tensor, cond: Tensor, cross_len: Tensor | None,
             beat: Tensor | None = None, key: Tensor | None = None) -> None:
        """Copy a batch's state, text and controls into the buffers (once per batch, and after rows leave)."""
        b, S = self.buf, cond.shape[1]
        b.gen.copy_(gen)
        b.fixed.copy_(fixed)
        b.init.copy_(init)
        padded = F.pad(cond, (0, 0, 0, b.cross.bias.shape[-1] - S))
        lengths = cross_len if cross_len is not None else torch.full((cond.shape[0],), S, device=cond.device)
        cross = self.lm.cross_inputs(padded, lengths, beat, key)
        for (k, v), (k2, v2) in zip(b.cross.kv, cross.kv, strict=True):
            k.copy_(k2)
            v.copy_(v2)
        b.cross.bias.copy_(cross.bias)
        if b.cross.controls is not None:
            if cross.controls is None:
                b.cross.controls.zero_()  # none given
            else:
                b.cross.controls.copy_(cross.controls)  # a key alone ([R, 1, D]) broadcasts over the frames

    def step(self, stage: int, cfg: bool, form: StepForm) -> None:
        if self.stream is None:  # not CUDA: eager
            static_step(self.lm, self.buf, stage, cfg, form)
            return
        key = (stage, cfg, form)
        if key not in self.graphs:
            self.graphs[key] = self._capture(stage, cfg, form)
        self.graphs[key].replay()

    def _capture(self, stage: int, cfg: bool, form: StepForm) -> torch.cuda.CUDAGraph:
        """Warm up on the capture stream (per-stream library handles and workspaces get made outside the
        capture; the state is restored afterwards), then capture one step on that same stream."""
        b = self.buf
        saved = (b.gen.clone(), b.scores.clone())
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(2):
                static_step(self.lm, b, stage, cfg, form)
        torch.cuda.current_stream().wait_stream(self.stream)
        b.gen.copy_(saved[0])
        b.scores.copy_(saved[1])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            static_step(self.lm, b, stage, cfg, form)
        return graph  # capture records, it does not run: the state is as it was


class StepGraphs:
    """Buckets of one model, least recently used first out (their graphs share one memory pool and
    one capture stream, as torch.cuda.graph asks of captures that share a pool)."""

    def __init__(self, lm: MagnetLM, capacity: int = 8):
        self.lm, self.capacity = lm, capacity
        cuda = lm.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if cuda else None
        self.stream = torch.cuda.Stream(lm.device) if cuda else None
        self.buckets: OrderedDict[tuple[int, int, int, int], Bucket] = OrderedDict()

    def bucket(self, rows: int, frames: int, text_len: int, unit: int) -> Bucket:
        key = (rows, frames, text_bucket(text_len), unit)
        if key in self.buckets:
            self.buckets.move_to_end(key)
        else:
            self.buckets[key] = Bucket(self.lm, *key, self.pool, self.stream)
            while len(self.buckets) > self.capacity:
                self.buckets.popitem(last=False)
        return self.buckets[key]

    def captured(self) -> int:
        return sum(len(b.graphs) for b in self.buckets.values())
