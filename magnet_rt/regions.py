"""Inpainting and continuation of sources of any length: which frames the model sees, window by window.

Frames. Frame f of a clip covers [f, f + 1) / frame_rate seconds; `ceil(N * frame_rate / sr)` frames touch a
clip of N samples. A request works on a *timeline*: frames [A, A + n) of the clip's grid (continue: running
past the clip's end), with a free range [g0, g1) that is generated and every other frame pinned to the
source's codes. Only the timeline's slice of the source is encoded, so the cost follows the region, not the
clip: a 2 s region costs one window whether the clip is 10 s or 10 minutes (benchmarks/RESULTS.md).

Placement, inpaint (region of r frames, segment of W frames):
- one window when the region plus up to `MIN_CONTEXT_S` of the source on each side fits W: the window is
  min(W, clip) frames centred on the region, shifted to stay inside the clip, so a region near an edge gets
  the context it cannot have on that side on the other one;
- otherwise the timeline is the region plus up to `overlap` (longform.DEFAULT_OVERLAP_S, 3 s, at most a third
  of W) of the source on each side, regenerated window by window like long-form generation: window 0 starts
  at A; window i + 1 starts `overlap` before window i ends and pins every frame before that end (window i's
  codes, identical in both) as well as the source outside the region; the last window is a full segment
  ending at the timeline's end, so it sees the right context and as much of the new audio as fits. Each frame
  is generated once, by the first window that reaches it.

Placement, continue (m new frames after the source's last whole frame Tf; its last partial frame is
regenerated): one window when m plus up to `MIN_CONTEXT_S` of context fits W, and the window is the last W
frames (as much of the source as fits); otherwise up to `overlap` of the source's end, then windows as above.

Audio. Each window is decoded by the codec on its own; consecutive windows are joined in the middle of their
overlap with an equal-gain crossfade of `JOIN_FADE_S` (two renderings of the same codes, as in
magnet_rt.longform). The joined rendering is resampled to the source's rate, then
- inpaint: spliced into the source (audio.splice: equal-power crossfades *inside* the region), so every sample
  outside [start, end) is the source's, sample for sample;
- continue: appended after the source, which is kept whole; the new part starts with a `fade_s` ramp that
  removes the step between the source's last sample and the rendering (the join is continuous, and lies
  entirely in the new part).

Seeds: window i decodes variation v with `longform.window_seed(seed, i) + v` (window 0: seed + v, the same
take as a one-window request).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import audio as audio_ops
from .errors import InvalidAudio, InvalidRegion
from .jobs import Job, JobResult, Pipeline, Prepared
from .longform import DEFAULT_OVERLAP_S, plan_windows, window_seed
from .params import DecodeParams, pick_seed

__all__ = ["MAX_SOURCE_S", "MIN_CONTEXT_S", "Timeline", "continue_timeline", "inpaint_timeline",
           "join_windows", "prepare_continue", "prepare_inpaint"]

MAX_SOURCE_S = 600.0  # longest source of an inpaint or continue, and longest continuation (10 minutes)
MIN_CONTEXT_S = 1.0  # a region gets one window only if this much context (where the clip has it) fits too
JOIN_FADE_S = 0.1
NEIGHBOUR_S = 2.0  # new audio takes the RMS of this much source on either side of it (`_neighbours`)


@dataclass(frozen=True)
class Timeline:
    """Frames [start, start + frames) of the clip's grid; `free` [g0, g1) and `windows` [a, b) are relative."""

    start: int
    frames: int
    free: tuple[int, int]
    windows: tuple[tuple[int, int], ...]

    def free_in(self, i: int) -> tuple[int, int]:
        """The frames window i generates: the free ones no earlier window reached."""
        a, b = self.windows[i]
        lo = max(self.free[0], self.windows[i - 1][1] if i else a)
        return lo, min(b, self.free[1])


def _windows(n: int, g1: int, W: int, ov: int) -> tuple[tuple[int, int], ...]:
    if n <= W:
        return ((0, n),)
    wins = list(plan_windows(n, W, ov))
    if wins[-1][1] - wins[-1][0] < W:  # a full last window: more context for the same cost
        reached = wins[-2][1]
        wins[-1] = (n - W, n)
        if reached >= g1:
            wins.pop()
    return tuple(wins)


def overlap_frames(W: int, span: int, frame_rate: int, overlap_s: float = DEFAULT_OVERLAP_S) -> int:
    return max(span, min(round(overlap_s * frame_rate), W // 3))


def inpaint_timeline(clip: int, f0: int, f1: int, W: int, ov: int, min_ctx: int) -> Timeline:
    """Where the model looks to regenerate frames [f0, f1) of a clip of `clip` frames (module docstring)."""
    r = f1 - f0
    if r + min(f0, min_ctx) + min(clip - f1, min_ctx) <= W:
        n = min(W, clip)
        a = min(max(f0 - (n - r) // 2, 0), clip - n)
        return Timeline(a, n, (f0 - a, f1 - a), ((0, n),))
    a, b = f0 - min(f0, ov), f1 + min(clip - f1, ov)
    return Timeline(a, b - a, (f0 - a, f1 - a), _windows(b - a, f1 - a, W, ov))


def continue_timeline(kept: int, new: int, W: int, ov: int, min_ctx: int) -> Timeline:
    """Frames to decode to append `new` frames after the `kept` whole frames of a source (module docstring)."""
    end = kept + new
    a = max(0, end - W) if new + min(kept, min_ctx) <= W else kept - min(kept, ov)
    return Timeline(a, end - a, (kept - a, end - a), _windows(end - a, end - a, W, ov))


def join_windows(pieces: list[tuple[int, np.ndarray]], hop: int, fade: int) -> np.ndarray:
    """Renderings of consecutive windows, (first frame, audio [..., m] from that frame), as one array from the
    first window's first frame: each join an equal-gain crossfade of `fade` samples centred in the overlap."""
    a0, prev = pieces[0]
    ps, pos, out = 0, 0, []  # prev's first sample, samples emitted (both relative to a0)
    for a, cur in pieces[1:]:
        cs = (a - a0) * hop
        j = (cs + ps + prev.shape[-1]) // 2 - fade // 2
        out.append(prev[..., pos - ps:j - ps])
        out.append(audio_ops.equal_gain_crossfade(prev[..., j - ps:j - ps + fade], cur[..., j - cs:j - cs + fade]))
        prev, ps, pos = cur, cs, j + fade
    out.append(prev[..., pos - ps:])
    return np.concatenate(out, axis=-1)


@dataclass
class RegionTask:
    """The windows of one request. `job` is the next window; `step(result)` records it and returns the next
    window's job (None after the last); `finish(result)` returns the user's audio (`Prepared`)."""

    pipe: Pipeline
    tl: Timeline
    prompt: str | None
    params: DecodeParams
    seed: int
    variations: int
    codes: Tensor  # [V, K, n]: the timeline's codes, card where not yet generated
    render: Callable[[np.ndarray], tuple[np.ndarray, int]]  # joined [V, 1, n * hop] (codec rate) -> output, rate
    timings: dict[str, float] = field(default_factory=dict)
    pieces: list[tuple[int, np.ndarray]] = field(default_factory=list)
    i: int = 0
    downbeat: float = 0.0  # the clip frame the beat grid's first downbeat falls on (`tempo.py`)

    def job(self) -> Job:
        a, b = self.tl.windows[self.i]
        lo, hi = self.tl.free_in(self.i)
        fixed = torch.ones(self.codes.shape[1], b - a, dtype=torch.bool)
        fixed[:, lo - a:hi - a] = False
        return Job([self.prompt], b - a, self.params, window_seed(self.seed, self.i), self.variations, fixed,
                   self.codes[:, :, a:b].clone(), first_frame=self.tl.start + a - self.downbeat)

    def step(self, res: JobResult) -> Job | None:
        a, b = self.tl.windows[self.i]
        self.codes[:, :, a:b] = res.codes
        self.pieces.append((a, res.audio))
        for k, v in res.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        self.i += 1
        return self.job() if self.i < len(self.tl.windows) else None

    def finish(self, res: JobResult) -> JobResult:
        if self.i < len(self.tl.windows):
            self.step(res)
        hop = self.pipe.sample_rate // self.pipe.frame_rate
        joined = join_windows(self.pieces, hop, round(JOIN_FADE_S * self.pipe.sample_rate))
        audio, sr = self.render(joined)
        seeds = [self.seed + v for v in range(self.variations)]
        return JobResult(self.codes, audio, sr, seeds, dict(self.timings), res.batch_size)

    def prepared(self) -> Prepared:
        return Prepared(self.job(), self.finish, self.step, len(self.tl.windows))


def _neighbours(x: np.ndarray, a: int, b: int, sr: int) -> np.ndarray:
    """The source's NEIGHBOUR_S on either side of [a, b): new audio takes their RMS and stays under their peak
    or -1 dBFS (`audio.match_level`, the look-ahead limiter that finishes a take), so a regenerated region or
    a continuation sits at the level of the music around it, whatever level the model renders at (the source
    may be a take finished at -14 LUFS, or any clip): no clipping, and no dip under a limited take's level."""
    n = round(NEIGHBOUR_S * sr)
    return np.concatenate([x[:, max(0, a - n):a], x[:, b:b + n]], axis=-1)


def _check_source(audio, sample_rate: int) -> tuple[np.ndarray, int]:
    x = audio_ops.to_float32_channels_first(audio)
    sr = audio_ops.validate_sample_rate(sample_rate)
    if x.shape[-1] > MAX_SOURCE_S * sr:
        raise InvalidAudio(f"the source is {x.shape[-1] / sr:.1f} s long; inpaint and continue take sources of "
                           f"at most {MAX_SOURCE_S:g} s")
    return x, sr


def _frames(pipe: Pipeline) -> tuple[int, int, int]:
    """(W, overlap, minimum context) in frames for this model."""
    fr, W = pipe.frame_rate, pipe.lm.cfg.segment_frames
    return W, overlap_frames(W, pipe.lm.cfg.span_len, fr), round(MIN_CONTEXT_S * fr)


def _encode(pipe: Pipeline, x: np.ndarray, sr: int, a: int, frames: int) -> tuple[Tensor, float]:
    """The codes [K, frames] of the source from frame a (its slice only); short ends repeat the last frame."""
    s0, s1 = round(a * sr / pipe.frame_rate), min(x.shape[-1], round((a + frames) * sr / pipe.frame_rate))
    t0 = time.perf_counter()
    codes = pipe.codec.encode(x[:, s0:s1], sr)[0].cpu()[:, :frames]
    if codes.shape[-1] < frames:
        codes = torch.cat([codes, codes[:, -1:].expand(-1, frames - codes.shape[-1])], -1)
    return codes, time.perf_counter() - t0


def prepare_inpaint(pipe: Pipeline, audio, sample_rate: int, start_s: float, end_s: float,
                    prompt: str | None, params: DecodeParams | None, seed: int | None, variations: int,
                    fade_s: float, downbeat_s: float = 0.0) -> Prepared:
    """Regenerate [start_s, end_s) of a source of any length up to MAX_SOURCE_S (module docstring).
    `downbeat_s`: where the source's first downbeat is, for a model with a beat grid (`tempo.py`)."""
    x, sr = _check_source(audio, sample_rate)
    N, fr = x.shape[-1], pipe.frame_rate
    dur, min_len = N / sr, pipe.lm.cfg.span_len / fr
    if not (math.isfinite(start_s) and math.isfinite(end_s) and 0 <= start_s < end_s <= dur + 1e-6):
        raise InvalidRegion(f"region [{start_s}, {end_s}) s must lie inside the clip [0, {dur:.3f}) s")
    if end_s - start_s < min_len - 1e-9:
        raise InvalidRegion(f"region is {end_s - start_s:.3f} s; the shortest is one span, {min_len:.3f} s")
    clip = math.ceil(N * fr / sr)
    f0, f1 = math.floor(start_s * fr), min(clip, math.ceil(end_s * fr))
    tl = inpaint_timeline(clip, f0, f1, *_frames(pipe))
    codes, t_enc = _encode(pipe, x, sr, tl.start, tl.frames)
    known = codes.clone()
    known[:, tl.free[0]:tl.free[1]] = pipe.lm.card
    a, b = round(start_s * sr), min(N, round(end_s * sr))
    s0 = round(tl.start * sr / fr)
    fade = min(round(fade_s * sr), (b - a) // 2)
    around = _neighbours(x, a, b, sr)

    def render(joined: np.ndarray) -> tuple[np.ndarray, int]:
        new = audio_ops.resample(joined, pipe.sample_rate, sr)  # [V, 1, n] from sample s0
        outs = []
        for r in new:
            r = audio_ops.match_channels(r, x.shape[0])
            region = audio_ops.fit_length(r[:, a - s0:b - s0], b - a)
            region = audio_ops.match_level(around, region, sr)
            outs.append(audio_ops.splice(x, region, a, b, fade))
        return np.stack(outs), sr

    task = RegionTask(pipe, tl, prompt, params or pipe.decoding.default_params, pick_seed(seed), variations,
                      known.expand(variations, -1, -1).clone(), render, {"codec_encode": t_enc},
                      downbeat=float(downbeat_s) * fr)
    return task.prepared()


def prepare_continue(pipe: Pipeline, audio, sample_rate: int, prompt: str | None, duration_s: float,
                     params: DecodeParams | None, seed: int | None, variations: int, fade_s: float) -> Prepared:
    """Append `duration_s` new seconds (any length up to MAX_SOURCE_S) to a source; the source is kept whole."""
    x, sr = _check_source(audio, sample_rate)
    N, fr = x.shape[-1], pipe.frame_rate
    span_s, d = pipe.lm.cfg.span_len / fr, float(duration_s)
    if not (math.isfinite(d) and span_s - 1e-9 <= d <= MAX_SOURCE_S):
        raise InvalidRegion(f"a continuation adds {span_s:g} to {MAX_SOURCE_S:g} s (one span at least); asked {d}")
    added = audio_ops.seconds_to_samples(d, sr)  # half up, as the OSC bridge counts
    kept = math.floor(N * fr / sr)
    new = math.ceil((N + added) * fr / sr) - kept
    tl = continue_timeline(kept, new, *_frames(pipe))
    codes, t_enc = _encode(pipe, x, sr, tl.start, tl.free[0])
    known = torch.full((pipe.lm.n_q, tl.frames), pipe.lm.card, dtype=torch.long)
    known[:, :tl.free[0]] = codes
    c0 = round(tl.start * sr / fr)
    ramp = min(round(fade_s * sr), added)
    around = _neighbours(x, N, N, sr)

    def render(joined: np.ndarray) -> tuple[np.ndarray, int]:
        new_audio = audio_ops.resample(joined, pipe.sample_rate, sr)  # [V, 1, n] from sample c0
        outs = []
        for r in new_audio:
            r = audio_ops.match_channels(r, x.shape[0])
            before = r[:, N - c0 - 1:N - c0] if N - c0 >= 1 else r[:, :0]  # the rendering's sample before it
            rendered = np.concatenate([before, audio_ops.fit_length(r[:, N - c0:], added)], -1)
            levelled = audio_ops.match_level(around, rendered, sr)
            before, cont = levelled[:, :before.shape[-1]], levelled[:, before.shape[-1]:]
            if ramp and before.shape[-1]:  # start where the source ends: no step at the join
                step = x[:, N - 1:N] - before
                g = ((np.arange(ramp) + 0.5) / ramp).astype(np.float32)
                cont[:, :ramp] += step * (1 - g)
                cont = audio_ops.limit_peaks(cont, sr, audio_ops.peak_ceiling_db(around))  # the ramp may pass it
            outs.append(np.concatenate([x, cont], axis=-1))
        return np.stack(outs).astype(np.float32), sr

    task = RegionTask(pipe, tl, prompt, params or pipe.decoding.default_params, pick_seed(seed), variations,
                      known.expand(variations, -1, -1).clone(), render, {"codec_encode": t_enc})
    return task.prepared()
