"""Long-form and endless generation: windows of the checkpoint's segment, each pinning the previous one's tail.

Window i decodes frames [a_i, b_i) (at most a segment). Window 0 starts at 0; window i + 1 starts at
b_i - overlap and pins its first `overlap` frames, all codebooks, to window i's codes there (a `Job` with
`fixed`/`init_codes`), so the model continues from `overlap_s` seconds of its own context and those codes
are identical in both windows. The last window of a finite request is shortened to end exactly at the
requested duration.

Audio. The codec decodes each window on its own; in the overlap both windows carry the same codes but
EnCodec's decoder (convolutions + LSTM) renders them from different left context, so the two waveforms
differ near a window's edges (measured on the tiny-random codec: over the first ~30 and last ~10 frames
of a window; in between the two renderings agree to ~3e-7 relative RMS). Each join is a crossfade of
`fade_s` centred in the overlap, away from both edges, so it mixes two renderings of the same codes that
are practically sample-identical. The crossfade is equal-gain (linear), not equal-power: the two signals
are correlated (the same codes), and equal-power gains would swell them by up to 3 dB mid-fade.
`Chunk.join_error` reports the relative RMS difference of the two renderings over each fade.

Streaming: a window's audio is yielded as soon as it is decoded, up to the start of the next join's
crossfade; that tail (half the overlap plus half the fade) is held back until the next window arrives.
The joined stream is exactly `round(duration * frame_rate)` frames of samples long.

Endless mode keeps producing windows until `is_cancelled()` (checked before each window and passed into
the decode, so a cancel lands within one step) or until the consumer closes the generator. The prompt is
read from a callable or a `PromptHolder` before each window, so a change applies from the next window.
On cancel, the held-back tail is flushed as a last chunk.

Window seeds: window i decodes with `window_seed(seed, i)`; the request is reproducible from its seed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import audio as audio_ops
from .errors import DecodeCancelled, InvalidParams
from .jobs import Job, Pipeline
from .params import PICKED_SEEDS, DecodeParams, pick_seed

__all__ = ["Chunk", "LongResult", "PromptHolder", "endless", "generate_long", "plan_windows", "stream_long",
           "window_seed"]

DEFAULT_OVERLAP_S = 3.0
DEFAULT_FADE_S = 0.1
SEED_STRIDE = 0x9E3779B1  # odd, far from the +v of variations


def window_seed(seed: int, i: int) -> int:
    return (seed + i * SEED_STRIDE) % PICKED_SEEDS


class PromptHolder:
    """A prompt that another thread (the daemon's OSC/ZeroMQ handler) may change while windows decode."""

    def __init__(self, prompt: str | None = None):
        self._prompt, self._lock = prompt, threading.Lock()

    def set(self, prompt: str | None) -> None:
        with self._lock:
            self._prompt = prompt

    def get(self) -> str | None:
        with self._lock:
            return self._prompt

    __call__ = get


@dataclass
class Chunk:
    """Audio ready to play: samples [start, start + audio.shape[-1]) of the stream."""

    window: int  # index of the window this audio completes (-1: the tail flushed on cancel)
    audio: np.ndarray  # [C, n] float32 at `sample_rate`
    start: int
    sample_rate: int
    prompt: str | None  # the prompt window `window` was decoded with
    frames: tuple[int, int]  # the window's frames [a, b) on the stream's timeline
    codes: Tensor | None  # [K, b - a] the window's codes (its first `pinned` frames copied from the previous)
    pinned: int  # frames pinned to the previous window
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # decode (s), since_start (s, when yielded)
    final: bool = False
    join_error: float = 0.0  # relative RMS difference of the two windows' audio over this chunk's crossfade


@dataclass
class LongResult:
    audio: np.ndarray  # [C, N]
    sample_rate: int
    codes: Tensor  # [K, total_frames]: every window's new frames, in order
    chunks: list[Chunk]

    @property
    def time_to_first_audio(self) -> float:
        return self.chunks[0].timings["since_start"]


def plan_windows(total_frames: int | None, window_frames: int, overlap_frames: int,
                 count: int | None = None) -> Iterator[tuple[int, int]]:
    """Frame ranges [a, b) of the windows; endless when total_frames is None (until `count` windows)."""
    if not 0 <= overlap_frames < window_frames:
        raise InvalidParams(f"overlap ({overlap_frames} frames) must be shorter than a window ({window_frames})")
    a, i = 0, 0
    while count is None or i < count:
        b = a + window_frames if total_frames is None else min(a + window_frames, total_frames)
        yield a, b
        if total_frames is not None and b >= total_frames:
            return
        a, i = b - overlap_frames, i + 1


def _prompt_fn(prompt) -> Callable[[], str | None]:
    if prompt is None or isinstance(prompt, str):
        return lambda: prompt
    if callable(prompt):
        return prompt
    raise InvalidParams("prompt must be a string, None, a callable or a PromptHolder")


def _stream(pipe: Pipeline, prompt, total_frames: int | None, params: DecodeParams | None, seed: int | None,
            window_s: float | None, overlap_s: float, fade_s: float, is_cancelled, on_step,
            max_windows: int | None) -> Iterator[Chunk]:
    t_start = time.perf_counter()
    params, seed, get_prompt = params or pipe.decoding.default_params, pick_seed(seed), _prompt_fn(prompt)
    fr, sr, K, C = pipe.frame_rate, pipe.sample_rate, pipe.lm.n_q, pipe.lm.card
    hop = sr // fr
    if hop * fr != sr:
        raise InvalidParams(f"sample rate {sr} is not a whole number of samples per frame at {fr} frames/s")
    W = pipe.frames_for(window_s)
    ov = round(float(overlap_s) * fr) if math.isfinite(float(overlap_s)) else -1
    fade = round(float(fade_s) * sr) if math.isfinite(float(fade_s)) else -1
    span = pipe.lm.cfg.span_len
    if total_frames is not None and total_frames <= W:
        ov = fade = 0  # one window: nothing to join
    elif not span <= ov <= W - span:
        raise InvalidParams(f"overlap_s must be in [{span / fr:g}, {(W - span) / fr:g}] s for a {W / fr:g} s window, "
                            f"got {overlap_s}")
    elif not 0 <= fade <= min(ov, W - ov) * hop:
        raise InvalidParams(f"fade_s must be in [0, {min(ov, W - ov) / fr:g}] s (the overlap and the new part of a "
                            f"window), got {fade_s}")
    cancelled = is_cancelled or (lambda: False)

    def join_start(a_next: int, b: int) -> int:
        """First sample of the crossfade joining a window ending at frame b to one starting at a_next."""
        return round((a_next + b) * hop / 2) - fade // 2

    prev_codes: Tensor | None = None
    prev_audio: np.ndarray | None = None  # [C, n] the previous window's audio
    prev_a = 0
    emitted = 0  # samples yielded so far
    windows = plan_windows(total_frames, W, ov, max_windows)
    nxt = next(windows, None)
    i = 0
    while nxt is not None:
        a, b = nxt
        nxt = next(windows, None)
        if cancelled():
            break
        text = get_prompt()
        n = b - a
        pinned = 0 if prev_codes is None else ov
        job = Job([text], n, params, window_seed(seed, i), first_frame=a)
        if pinned:
            job.fixed = torch.zeros(K, n, dtype=torch.bool)
            job.fixed[:, :pinned] = True
            job.init_codes = torch.full((K, n), C, dtype=torch.long)
            job.init_codes[:, :pinned] = prev_codes[:, -pinned:]
        t0 = time.perf_counter()
        res = pipe.run_batch([job], on_step=(lambda _, ev, i=i: on_step(i, ev)) if on_step else None,
                             is_cancelled=lambda _: cancelled())[0]
        if res is None:
            break
        dt = time.perf_counter() - t0
        audio = res.audio[0]  # [C, n * hop], sample 0 = frame a
        hold = join_start(b - ov, b) if nxt is not None else b * hop  # stream sample where this chunk stops
        err = 0.0
        if prev_audio is None:
            out = audio[:, :hold]
        else:
            x0 = emitted  # == join_start(a, prev b): the crossfade starts here
            old = prev_audio[:, x0 - prev_a * hop:x0 - prev_a * hop + fade]
            new = audio[:, x0 - a * hop:x0 - a * hop + fade]
            rest = audio[:, x0 - a * hop + fade:hold - a * hop]
            out = np.concatenate([audio_ops.equal_gain_crossfade(old, new), rest], -1)
            if fade:
                err = float(np.sqrt(np.mean((old - new) ** 2) / max(np.mean(old**2), 1e-20)))
        chunk = Chunk(i, out.astype(np.float32), emitted, sr, text, (a, b), res.codes[0], pinned, job.seed,
                      {"decode": dt, **{f"window_{k}": v for k, v in res.timings.items()}}, final=nxt is None,
                      join_error=err)
        emitted += out.shape[-1]
        prev_codes, prev_audio, prev_a = res.codes[0], audio, a
        chunk.timings["since_start"] = time.perf_counter() - t_start
        yield chunk
        i += 1
    else:
        return
    if prev_audio is not None:  # cancelled: flush the held-back tail of the last window
        tail = prev_audio[:, emitted - prev_a * hop:]
        if tail.shape[-1]:
            yield Chunk(-1, tail.astype(np.float32), emitted, sr, None, (prev_a, prev_a + prev_codes.shape[-1]),
                        None, 0, 0, {"since_start": time.perf_counter() - t_start}, final=True)


def stream_long(pipe: Pipeline, prompt: str | None, duration_s: float, params: DecodeParams | None = None,
                seed: int | None = None, *, overlap_s: float = DEFAULT_OVERLAP_S, fade_s: float = DEFAULT_FADE_S,
                window_s: float | None = None, is_cancelled: Callable[[], bool] | None = None,
                on_step=None) -> Iterator[Chunk]:
    """`duration_s` seconds (any length) as a stream of chunks, one per window, in order. Within the
    checkpoint's segment this is one window (the same codes as `pipe.generate` with `window_seed(seed, 0)`)."""
    d = float(duration_s)
    if not (math.isfinite(d) and d > 0):
        raise InvalidParams(f"duration must be > 0 seconds, got {duration_s}")
    total = max(1, round(d * pipe.frame_rate))
    if window_s is None and total <= pipe.lm.cfg.segment_frames:
        window_s = total / pipe.frame_rate
    return _stream(pipe, prompt, total, params, seed, window_s, overlap_s, fade_s, is_cancelled, on_step, None)


def generate_long(pipe: Pipeline, prompt: str | None, duration_s: float, params: DecodeParams | None = None,
                  seed: int | None = None, **kwargs) -> LongResult:
    """`stream_long` collected: audio [C, N] with N = round(duration_s * frame_rate) * hop samples."""
    chunks = list(stream_long(pipe, prompt, duration_s, params, seed, **kwargs))
    if not chunks or not chunks[-1].final or chunks[-1].window < 0:
        raise DecodeCancelled("generation cancelled")
    codes = torch.cat([c.codes[:, c.pinned:] for c in chunks], dim=-1)
    return LongResult(np.concatenate([c.audio for c in chunks], -1), pipe.sample_rate, codes, chunks)


def endless(pipe: Pipeline, prompt, params: DecodeParams | None = None, seed: int | None = None, *,
            overlap_s: float = DEFAULT_OVERLAP_S, fade_s: float = DEFAULT_FADE_S, window_s: float | None = None,
            is_cancelled: Callable[[], bool] | None = None, max_windows: int | None = None,
            on_step=None) -> Iterator[Chunk]:
    """Windows until cancelled (or `max_windows`). `prompt`: a string, or a callable / `PromptHolder`
    read before each window."""
    return _stream(pipe, prompt, None, params, seed, window_s, overlap_s, fade_s, is_cancelled, on_step,
                   max_windows)
