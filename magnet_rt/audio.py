"""Audio utilities for the pipeline and the CLI: validation, resampling, splicing, loudness, time units.

Arrays are numpy float32 with time on the last axis (`[N]`, `[C, N]` or `[..., C, N]`). Every function
returns a new array; inputs are never modified in place.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import butter, resample_poly, sosfiltfilt

from magnet_rt.errors import InvalidAudio, InvalidParams, InvalidRegion

__all__ = [
    "as_float32",
    "bars_to_samples",
    "downmix",
    "equal_gain_crossfade",
    "equal_power_crossfade",
    "equal_power_gains",
    "finish_take",
    "finish_takes",
    "loudness_normalize",
    "remove_dc",
    "resample",
    "seconds_to_samples",
    "splice",
    "to_float32_channels_first",
    "validate_sample_rate",
]


def as_float32(array) -> np.ndarray:
    """numpy/torch/list audio -> float32 numpy array, validated: non-empty, finite, numeric.

    Integer PCM is scaled to [-1, 1) (int16 / 32768, int32 / 2**31, uint8 centred on 128)."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().float().numpy()
    x = np.asarray(array)
    if x.size == 0 or (x.ndim and x.shape[-1] == 0):
        raise InvalidAudio(f"audio is empty (shape {x.shape})")
    if x.dtype.kind == "u":
        half = 2.0 ** (8 * x.dtype.itemsize - 1)
        x = (x.astype(np.float64) - half) / half
    elif x.dtype.kind == "i":
        x = x.astype(np.float64) / 2.0 ** (8 * x.dtype.itemsize - 1)
    elif x.dtype.kind != "f":
        raise InvalidAudio(f"audio must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InvalidAudio("audio contains NaN or inf")
    return x


def to_float32_channels_first(array, channels_hint: int | None = None) -> np.ndarray:
    """Mono `[N]`, `[C, N]` or frames-first `[N, C]` (as soundfile returns) -> float32 `[C, N]`.

    A 2-D array is transposed when `channels_hint` matches only its second axis; without a usable hint
    the shorter axis is taken as channels. Raises InvalidAudio for empty, NaN/inf or ndim not 1-2."""
    x = as_float32(array)
    if x.ndim == 1:
        return x[None, :]
    if x.ndim != 2:
        raise InvalidAudio(f"audio must be [N], [C, N] or [N, C], got shape {x.shape}")
    rows, cols = x.shape
    if channels_hint is not None and (rows == channels_hint) != (cols == channels_hint):
        frames_first = cols == channels_hint
    else:
        frames_first = rows > cols
    out = np.ascontiguousarray(x.T if frames_first else x)
    if out.shape[-1] == 0:
        raise InvalidAudio(f"audio is empty (shape {x.shape})")
    return out


def validate_sample_rate(sample_rate) -> int:
    """A positive integer sample rate (floats like 44100.0 accepted), else InvalidAudio."""
    try:
        sr = int(sample_rate)
    except (TypeError, ValueError, OverflowError):
        raise InvalidAudio(f"sample rate must be a positive integer, got {sample_rate!r}") from None
    if sr != sample_rate or sr <= 0:
        raise InvalidAudio(f"sample rate must be a positive integer, got {sample_rate!r}")
    return sr


def downmix(x: np.ndarray, channels: int) -> np.ndarray:
    """`[..., C, N]` -> `[..., channels, N]`: mean over channels for mono, mono duplicated for more."""
    c = x.shape[-2]
    if c == channels:
        return x
    if channels == 1:
        return x.mean(axis=-2, keepdims=True, dtype=np.float32)
    if c == 1:
        return np.repeat(x, channels, axis=-2)
    raise InvalidAudio(f"cannot map {c} channels to {channels}")


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling on the last axis by the exact ratio sr_to/sr_from (reduced by their gcd).

    Output length is ceil(N * sr_to / sr_from), so the duration is kept to within one sample."""
    sr_from, sr_to = validate_sample_rate(sr_from), validate_sample_rate(sr_to)
    if sr_from == sr_to:
        return np.asarray(x, dtype=np.float32)
    g = math.gcd(sr_from, sr_to)
    return resample_poly(x, sr_to // g, sr_from // g, axis=-1).astype(np.float32)


def equal_power_gains(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fade-out and fade-in gains of an n-sample equal-power crossfade (cos/sin quarter periods sampled
    at (i + 0.5) / n, so out**2 + in**2 == 1 at every sample and the curve is symmetric)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n * (np.pi / 2)
    return np.cos(t).astype(np.float32), np.sin(t).astype(np.float32)


def equal_power_crossfade(a_tail: np.ndarray, b_head: np.ndarray) -> np.ndarray:
    """Crossfade from `a_tail` to `b_head` (same shape, time last) with equal-power gains."""
    if a_tail.shape != b_head.shape:
        raise InvalidAudio(f"crossfade needs equal shapes, got {a_tail.shape} and {b_head.shape}")
    fade_out, fade_in = equal_power_gains(a_tail.shape[-1])
    return (a_tail * fade_out + b_head * fade_in).astype(np.float32)


def equal_gain_crossfade(a_tail: np.ndarray, b_head: np.ndarray) -> np.ndarray:
    """Crossfade with linear gains (i + 0.5) / n summing to 1: for two *correlated* signals (e.g. two
    renderings of the same codes), where equal-power gains would swell the level by up to 3 dB."""
    if a_tail.shape != b_head.shape:
        raise InvalidAudio(f"crossfade needs equal shapes, got {a_tail.shape} and {b_head.shape}")
    n = a_tail.shape[-1]
    g = ((np.arange(n, dtype=np.float64) + 0.5) / n).astype(np.float32)
    return (a_tail * (1 - g) + b_head * g).astype(np.float32)


def splice(original: np.ndarray, new: np.ndarray, start: int, end: int, fade: int) -> np.ndarray:
    """`original` with samples [start, end) replaced by `new` (`new.shape[-1] == end - start`).

    The equal-power crossfades (original -> new, then new -> original), `min(fade, (end - start) // 2)`
    samples each, sit *inside* the region, so outside [start, end) the output equals `original` sample
    for sample."""
    n = original.shape[-1]
    if not (0 <= start < end <= n):
        raise InvalidRegion(f"region [{start}, {end}) is empty or outside [0, {n})")
    if new.shape[:-1] != original.shape[:-1] or new.shape[-1] != end - start:
        raise InvalidAudio(f"replacement has shape {new.shape}, expected "
                           f"{original.shape[:-1] + (end - start,)}")
    if fade < 0:
        raise InvalidParams(f"fade must be >= 0 samples, got {fade}")
    out = np.array(original, dtype=np.float32, copy=True)
    seg = np.array(new, dtype=np.float32, copy=True)
    f = min(int(fade), (end - start) // 2)
    if f:
        seg[..., :f] = equal_power_crossfade(out[..., start:start + f], seg[..., :f])
        seg[..., -f:] = equal_power_crossfade(seg[..., -f:], out[..., end - f:end])
    out[..., start:end] = seg
    return out


def loudness_normalize(x: np.ndarray, sr: int, target_lufs: float = -14.0, peak_db: float = -1.0,
                       max_limit_db: float = 0.0) -> np.ndarray:
    """Gain `x` (`[N]` or `[C, N]`) to `target_lufs` integrated loudness (ITU-R BS.1770 via pyloudnorm) with
    the sample peak never above `peak_db` dBFS. With `max_limit_db` 0 the gain stops where the peak meets
    the ceiling (a peaky clip stays under the target); above 0 a look-ahead limiter (`limit_peaks`) holds the
    peaks, reducing them by at most that many dB, and the gain is corrected for what it takes off. Silent
    input (no gated block) is returned unchanged. Clips shorter than 400 ms are measured with one block of
    their own length."""
    x = as_float32(x)
    sr = validate_sample_rate(sr)
    if x.ndim not in (1, 2):
        raise InvalidAudio(f"audio must be [N] or [C, N], got shape {x.shape}")
    if x.ndim == 2 and x.shape[0] > 5:
        raise InvalidAudio(f"loudness is defined for up to 5 channels, got {x.shape[0]}")
    meter = _loudness_meter(x.shape[-1], sr)
    loudness = meter.integrated_loudness(x.T.astype(np.float64))
    peak = float(np.max(np.abs(x)))
    if not math.isfinite(loudness) or peak == 0.0:
        return x.copy()
    ceiling = 10.0 ** (peak_db / 20.0)
    most = ceiling / peak * 10.0 ** (max(0.0, max_limit_db) / 20.0) * (1.0 - 1e-6)
    gain = min(10.0 ** ((target_lufs - loudness) / 20.0), most)
    if gain * peak <= ceiling:
        return (x * np.float32(gain)).astype(np.float32)
    for _ in range(LIMITER_PASSES):  # limiting takes loudness off: raise the gain by what it took, re-limit
        y = limit_peaks(x * np.float32(gain), sr, peak_db)
        short = target_lufs - meter.integrated_loudness(y.T.astype(np.float64))
        if abs(short) < 0.05 or gain >= most:
            break
        gain = min(gain * 10.0 ** (short / 20.0), most)
    return y


def _loudness_meter(n: int, sr: int) -> pyloudnorm.Meter:
    block = min(0.4, n / sr)
    while block * sr > n:  # n / sr * sr can round above n, which pyloudnorm rejects
        block = math.nextafter(block, 0.0)
    return pyloudnorm.Meter(sr, block_size=block)


def limit_peaks(x: np.ndarray, sr: int, peak_db: float = -1.0, window_s: float = 0.005) -> np.ndarray:
    """A look-ahead brick-wall limiter: `x` (`[N]` or `[C, N]`, channels linked) with every sample within
    `peak_db` dBFS. Each sample's needed gain is held at its minimum over +-`window_s` and then averaged over
    the same span, so the gain falls smoothly over `window_s` before a peak and recovers over `window_s`
    after it, and is never above what any sample needs."""
    ceiling = 10.0 ** (peak_db / 20.0)
    level = np.abs(x) if x.ndim == 1 else np.abs(x).max(axis=0)
    need = np.minimum(1.0, ceiling / np.maximum(level, 1e-30)).astype(np.float64)
    if need.min() >= 1.0:
        return as_float32(x).copy()
    size = 2 * max(1, round(window_s * sr)) + 1
    gain = uniform_filter1d(minimum_filter1d(need, size, mode="nearest"), size, mode="nearest")
    gain = np.minimum(gain, need) * (1.0 - 1e-6)  # the mean of minima is at most each; rounding cannot cross
    return (x * gain).astype(np.float32)


DEFAULT_LOUDNESS_LUFS = -14.0  # every take's level unless a request opts out (streaming services' reference)
TAKE_LIMIT_DB = 12.0  # how far the finishing limiter may pull a take's peaks down to reach that level
LIMITER_PASSES = 4  # gain corrections after limiting (12 demo takes land within 0.07 dB: benchmarks/take_loudness.py)
TAKE_FADE_S = 0.005  # raised-cosine fade at a take's start and end: no click at a start, stop or loop point
DC_CUTOFF_HZ = 10.0


def remove_dc(x: np.ndarray, sr: int) -> np.ndarray:
    """A 10 Hz 2nd-order Butterworth high-pass run forwards and backwards (zero phase), then the mean:
    no offset and no sub-audible drift is left on the last axis."""
    x = np.asarray(x, dtype=np.float64)
    sos = butter(2, DC_CUTOFF_HZ, btype="highpass", fs=validate_sample_rate(sr), output="sos")
    y = sosfiltfilt(sos, x, axis=-1) if x.shape[-1] > 3 * (2 * len(sos) + 1) else x
    return y - y.mean(axis=-1, keepdims=True)


def finish_take(x: np.ndarray, sr: int, loudness: float | None = DEFAULT_LOUDNESS_LUFS,
                fade_s: float = TAKE_FADE_S) -> np.ndarray:
    """A generated take (`[N]` or `[C, N]`) as it leaves the engine: DC removed, `loudness` LUFS integrated
    with peaks under -1 dBFS held by a look-ahead limiter (at most `TAKE_LIMIT_DB` of gain reduction; None
    keeps the model's level), then a `fade_s` fade in and out. The limiter's gain is not symmetric about zero,
    so it can leave an offset (a take of hits: -0.002): the take is centred again after it, and scaled back
    under the ceiling where centring lifted a peak past it."""
    y = remove_dc(as_float32(x), sr).astype(np.float32)
    if loudness is not None:
        y = loudness_normalize(y, sr, loudness, max_limit_db=TAKE_LIMIT_DB)
        y = y - y.mean(axis=-1, keepdims=True)
        peak, ceiling = float(np.max(np.abs(y))) if y.size else 0.0, 10.0 ** (-1.0 / 20.0)
        if peak > ceiling:
            y = y * np.float32(ceiling / peak * (1.0 - 1e-6))
    n = min(int(round(fade_s * sr)), y.shape[-1] // 2)
    if n:
        ramp = np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2
        y[..., :n] *= ramp
        y[..., -n:] *= ramp[::-1]
    return y.astype(np.float32)


def finish_takes(audio: np.ndarray, sr: int, loudness: float | None = DEFAULT_LOUDNESS_LUFS) -> np.ndarray:
    """`finish_take` on each take of `[V, C, N]`: what every generate path (engine, hybrid, daemon) returns."""
    return np.stack([finish_take(a, sr, loudness) for a in audio])


def level_gain(reference: np.ndarray, rendering: np.ndarray, max_boost_db: float = 20.0,
               max_cut_db: float = 60.0, peak_db: float | None = -1.0, max_limit_db: float = 0.0) -> float:
    """The gain that brings `rendering` to the RMS of `reference`, at most `max_boost_db` up (a near-silent
    rendering is not blown up) and `max_cut_db` down; 1 where either is silent. With `peak_db`, lowered where
    needed so the rendering's sample peak stays under the reference's own peak or `peak_db` dBFS, whichever
    is higher: a peakier rendering matched in RMS would otherwise clip where the reference does not. With
    `max_limit_db`, the peak may pass that ceiling by that many dB, for a limiter to hold (`match_level`)."""
    ref, ren = _rms(reference), _rms(rendering)
    if ref < 1e-6 or ren < 1e-6:
        return 1.0
    gain = float(np.clip(ref / ren, 10.0 ** (-max_cut_db / 20.0), 10.0 ** (max_boost_db / 20.0)))
    if peak_db is not None:
        ceiling = 10.0 ** ((peak_ceiling_db(reference, peak_db) + max_limit_db) / 20.0)
        peak = float(np.max(np.abs(rendering)))
        if peak * gain > ceiling:
            gain = ceiling / peak * (1.0 - 1e-6)  # margin so float32 rounding cannot cross the ceiling
    return gain


def match_level(reference: np.ndarray, rendering: np.ndarray, sr: int, peak_db: float = -1.0) -> np.ndarray:
    """`rendering` at the RMS of `reference` (`level_gain`'s bounds), its peaks held by the look-ahead limiter
    under the reference's own peak or `peak_db` dBFS, whichever is higher, with at most `TAKE_LIMIT_DB` of
    limiting: new audio sits at the level of a limited take around it as well as of any clip."""
    ceiling_db = peak_ceiling_db(reference, peak_db)
    ceiling = 10.0 ** (ceiling_db / 20.0)
    rendering = as_float32(rendering)
    gain = level_gain(reference, rendering, peak_db=peak_db, max_limit_db=TAKE_LIMIT_DB)
    peak = float(np.max(np.abs(rendering))) if rendering.size else 0.0
    if peak * gain <= ceiling:
        return (rendering * np.float32(gain)).astype(np.float32)
    target = _rms(rendering) * gain
    most = ceiling * 10.0 ** (TAKE_LIMIT_DB / 20.0) / peak
    for _ in range(LIMITER_PASSES):  # limiting takes level off: give it back, within the limiter's depth
        y = limit_peaks((rendering * np.float32(gain)).astype(np.float32), sr, ceiling_db)
        short = target / max(_rms(y), 1e-12)
        if short < 1.005 or gain >= most:
            break
        gain = min(gain * short, most)
    return y


def peak_ceiling_db(reference: np.ndarray, peak_db: float = -1.0) -> float:
    """New audio's peak ceiling beside `reference`: its own peak or `peak_db` dBFS, whichever is higher."""
    peak = float(np.max(np.abs(reference))) if reference.size else 0.0
    return max(20.0 * math.log10(peak) if peak > 0 else -math.inf, peak_db)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def seconds_to_samples(seconds: float, sr: int) -> int:
    """`round(seconds * sr)` with halves rounded up; seconds must be finite and >= 0."""
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidParams(f"seconds must be finite and >= 0, got {seconds!r}")
    return math.floor(seconds * validate_sample_rate(sr) + 0.5)


def bars_to_samples(bars: float, bpm: float, sr: int, beats_per_bar: int = 4) -> int:
    """Samples in `bars` bars: bars * beats_per_bar * 60 * sr / bpm, rounded half up.

    Computed exactly in rational arithmetic on the decimal values as written (a float is read through its
    shortest repr, so bpm=120.1 means 1201/10, not the nearest binary double), so e.g. 4 bars at 120 bpm
    and 32 kHz are exactly 256000 samples and results never drift by float error."""
    if not (math.isfinite(bars) and bars >= 0):
        raise InvalidParams(f"bars must be finite and >= 0, got {bars!r}")
    if not (math.isfinite(bpm) and bpm > 0):
        raise InvalidParams(f"bpm must be finite and > 0, got {bpm!r}")
    if int(beats_per_bar) != beats_per_bar or beats_per_bar < 1:
        raise InvalidParams(f"beats_per_bar must be a positive integer, got {beats_per_bar!r}")
    exact = _decimal(bars) * int(beats_per_bar) * 60 * validate_sample_rate(sr) / _decimal(bpm)
    return math.floor(exact + Fraction(1, 2))


def _decimal(value: float) -> Fraction:
    return Fraction(str(float(value)))  # shortest repr: 120.1 -> 1201/10


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the last axis to exactly n samples (resampling can be off by one)."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """[c, n] -> [channels, n]: a mono take is copied to every channel of the source."""
    return np.repeat(x[:1], channels, axis=0) if x.shape[0] != channels else x
