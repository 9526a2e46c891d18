"""Loops in musical time: a clip of exactly `bars` bars at `bpm` whose end flows into its start.

Two phases, each an ordinary engine job, so a scheduler or a protocol client can run them one after the other:

1. generate: `generate_duration_s` covers the loop in whole frames (rounded up); the result is trimmed to
   exactly `bars_to_samples(bars, bpm, sr)` samples.
2. seal the seam: rotate the clip by half its length so that the wrap-around (last sample -> first sample)
   sits in the middle, inpaint a window of `window_s` seconds around it (every token outside the window is
   pinned to the clip's own codes; `pipeline.prepare_inpaint`), and rotate back. Outside the window the loop is
   the phase-1 clip sample for sample; the window ends up split between the loop's end and its start.

`make_loop` runs both on a pipeline; `LoopPlan` holds the arithmetic for anyone running them elsewhere (the OSC
bridge sends phase 2 as a protocol `inpaint` of the rotated clip). `seam_flux` measures the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .audio import bars_to_samples
from .errors import InvalidParams

if TYPE_CHECKING:
    from .jobs import JobResult

DEFAULT_WINDOW_S = 0.75  # seconds regenerated around the wrap: long enough to bridge, short enough to keep the clip
MIN_WINDOW_S = 0.06  # one MAGNeT span


@dataclass(frozen=True)
class LoopPlan:
    samples: int  # the loop's exact length
    sample_rate: int
    frame_rate: int
    window_s: float

    @property
    def shift(self) -> int:
        return self.samples // 2

    @property
    def generate_duration_s(self) -> float:
        """Phase 1's duration: whole frames covering `samples` (never shorter)."""
        return math.ceil(self.samples * self.frame_rate / self.sample_rate) / self.frame_rate

    def region(self) -> tuple[float, float]:
        """Phase 2's inpaint region [start_s, end_s) in the rotated clip, centred on the wrap."""
        wrap = self.samples - self.shift  # rotated[wrap - 1] is the clip's last sample, rotated[wrap] its first
        half = round(self.window_s * self.sample_rate / 2)
        return (wrap - half) / self.sample_rate, (wrap + half) / self.sample_rate

    def trim(self, audio: np.ndarray) -> np.ndarray:
        if audio.shape[-1] < self.samples:
            raise InvalidParams(f"phase 1 gave {audio.shape[-1]} samples, the loop needs {self.samples}")
        return np.ascontiguousarray(audio[..., :self.samples])

    def rotate(self, audio: np.ndarray) -> np.ndarray:
        return np.roll(audio, -self.shift, axis=-1)

    def unrotate(self, audio: np.ndarray) -> np.ndarray:
        return np.roll(audio, self.shift, axis=-1)


def plan_loop(bars: float, bpm: float, sample_rate: int, frame_rate: int = 50, window_s: float = DEFAULT_WINDOW_S,
              beats_per_bar: int = 4) -> LoopPlan:
    """The loop is exactly bars x beats_per_bar x 60 / bpm seconds, in samples (`bars_to_samples`)."""
    n = bars_to_samples(bars, bpm, sample_rate, beats_per_bar)
    return plan_samples(n, sample_rate, frame_rate, window_s)


def plan_samples(samples: int, sample_rate: int, frame_rate: int = 50,
                 window_s: float = DEFAULT_WINDOW_S) -> LoopPlan:
    clip_s = samples / sample_rate
    if clip_s < 4 * MIN_WINDOW_S:
        raise InvalidParams(f"a loop must last at least {4 * MIN_WINDOW_S:g} s, got {clip_s:.3f} s")
    if not math.isfinite(window_s) or window_s < MIN_WINDOW_S:
        raise InvalidParams(f"window_s must be at least {MIN_WINDOW_S} s, got {window_s!r}")
    return LoopPlan(samples, sample_rate, frame_rate, min(float(window_s), clip_s / 2))


def seal_loop(pipe, clip: np.ndarray, sample_rate: int, prompt: str | None, params=None, seed: int | None = None,
              window_s: float = DEFAULT_WINDOW_S, progress=None, cancelled=None) -> JobResult:
    """Phase 2 on any clip ([N] or [C, N]): regenerate the wrap-around; same length, same rate."""
    x = np.asarray(clip, dtype=np.float32)
    plan = plan_samples(x.shape[-1], sample_rate, pipe.frame_rate, window_s)
    res = pipe.inpaint(plan.rotate(x), sample_rate, *plan.region(), prompt, params, seed,
                       progress=progress, cancelled=cancelled)
    res.audio = plan.unrotate(res.audio)
    return res


def make_loop(pipe, prompt: str | None, bars: float, bpm: float, params=None, seed: int | None = None,
              window_s: float = DEFAULT_WINDOW_S, beats_per_bar: int = 4, progress=None,
              cancelled=None) -> tuple[JobResult, np.ndarray]:
    """Both phases. Returns the loop (audio [1, C, samples]) and the phase-1 clip [C, samples] (the naive
    loop, for comparison). Phase 2 uses `seed` too; progress events come from both phases in turn."""
    plan = plan_loop(bars, bpm, pipe.sample_rate, pipe.frame_rate, window_s, beats_per_bar)
    first = pipe.generate(prompt, plan.generate_duration_s, params, seed, progress=progress, cancelled=cancelled)
    naive = plan.trim(first.audio[0])
    res = seal_loop(pipe, naive, pipe.sample_rate, prompt, params, first.seeds[0], plan.window_s, progress, cancelled)
    res.timings = {**{f"phase1_{k}": v for k, v in first.timings.items()},
                   **{f"phase2_{k}": v for k, v in res.timings.items()}}
    return res, naive


# ---- measuring the seam -------------------------------------------------------------------------------------
def spectral_flux(x: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Frame-to-frame spectral flux of mono `x`: L2 distance between successive unit-norm magnitude spectra
    (Hann window). Entry t compares frame t (samples [t*hop, t*hop + n_fft)) with frame t + 1."""
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), n_fft)[::hop] * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=-1))
    mag /= np.linalg.norm(mag, axis=-1, keepdims=True) + 1e-12
    return np.linalg.norm(np.diff(mag, axis=0), axis=-1)


def seam_flux(loop: np.ndarray, n_fft: int = 1024, hop: int = 256) -> tuple[float, np.ndarray]:
    """(wrap flux, internal fluxes) of a loop played on repeat ([N] or [C, N], channels averaged).

    The loop is rotated by half its length so the wrap sits mid-signal; the wrap flux is the largest flux
    between two frames of which one covers the wrap; internal fluxes are those of all frame pairs that don't."""
    x = np.asarray(loop, np.float64)
    x = x.mean(axis=0) if x.ndim == 2 else x
    n = x.shape[-1]
    wrap = n - n // 2
    flux = spectral_flux(np.roll(x, -(n // 2)), n_fft, hop)
    start = np.arange(len(flux) + 1) * hop
    covers = (start < wrap) & (wrap < start + n_fft)
    touch = covers[:-1] | covers[1:]
    return float(flux[touch].max()), flux[~touch]
