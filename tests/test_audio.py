"""Audio utilities: validation, resampling, splice/crossfade, loudness, time units."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magnet_rt.audio import (
    bars_to_samples,
    downmix,
    equal_power_crossfade,
    equal_power_gains,
    loudness_normalize,
    resample,
    seconds_to_samples,
    splice,
    to_float32_channels_first,
)
from magnet_rt.errors import InvalidAudio, InvalidParams, InvalidRegion

CEILING = 10 ** (-1.0 / 20)  # -1 dBFS


def lufs(x: np.ndarray, sr: int) -> float:
    return pyloudnorm.Meter(sr).integrated_loudness(np.atleast_2d(x).T.astype(np.float64))


# ---- validation / layout ----------------------------------------------------------------------------------


def test_channels_first_layouts():
    mono = np.arange(1000, dtype=np.float64) / 1000
    assert to_float32_channels_first(mono).shape == (1, 1000)
    frames_first = np.stack([mono, -mono], axis=1)  # [N, C] as soundfile returns
    out = to_float32_channels_first(frames_first)
    assert out.shape == (2, 1000) and out.dtype == np.float32 and np.array_equal(out[1], -mono.astype(np.float32))
    assert to_float32_channels_first(np.zeros((2, 2)), channels_hint=2).shape == (2, 2)
    assert to_float32_channels_first(np.zeros((3, 2)), channels_hint=2).shape == (2, 3)  # hint wins
    pcm = np.array([-32768, 0, 16384], dtype=np.int16)
    assert to_float32_channels_first(pcm).tolist() == [[-1.0, 0.0, 0.5]]


@pytest.mark.parametrize("bad", [np.zeros(0), np.zeros((2, 0)), np.array([0.0, np.nan]), np.array([np.inf, 0.0]),
                                 np.zeros((1, 2, 3)), np.array(["a", "b"])])
def test_channels_first_rejects(bad):
    with pytest.raises(InvalidAudio):
        to_float32_channels_first(bad)


def test_downmix():
    x = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    assert downmix(x, 1).tolist() == [[2.0, 4.0]]
    assert downmix(x[:1], 2).tolist() == [[1.0, 2.0], [1.0, 2.0]]
    assert downmix(x, 2) is x
    with pytest.raises(InvalidAudio):
        downmix(np.zeros((3, 4), np.float32), 2)


def test_resample_keeps_duration_and_pitch():
    sr_in, sr_out = 44100, 32000
    t = np.arange(sr_in) / sr_in
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    assert y.shape == (32000,) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * sr_out / len(y) == pytest.approx(1000, abs=1)
    assert resample(np.zeros((2, 1, 4411), np.float32), sr_in, sr_out).shape == (2, 1, 3201)  # ceil(N*320/441)
    with pytest.raises(InvalidAudio):
        resample(x, 0, sr_out)


# ---- crossfade / splice -----------------------------------------------------------------------------------


def test_equal_power_gains():
    fade_out, fade_in = equal_power_gains(257)
    assert np.abs(fade_out**2 + fade_in**2 - 1).max() < 1e-6
    assert np.allclose(fade_out[::-1], fade_in, atol=1e-7)  # symmetric
    assert fade_out[0] > 0.9999 and fade_in[0] < 0.01 and np.all(np.diff(fade_in) > 0)


def test_crossfade_keeps_power_of_uncorrelated_signals():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 200_000)).astype(np.float32)
    y = equal_power_crossfade(a, b)
    assert np.mean(y**2) / np.mean(a**2) == pytest.approx(1.0, abs=0.01)
    # and locally: power of each quarter stays ~1 (a linear fade would dip to 0.5 in the middle)
    for q in np.split(y, 4):
        assert np.mean(q**2) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(InvalidAudio):
        equal_power_crossfade(a[:10], b[:11])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(8, 3000), channels=st.integers(1, 2), data=st.data())
def test_splice_keeps_outside_samples_exactly(n, channels, data):
    start = data.draw(st.integers(0, n - 1))
    end = data.draw(st.integers(start + 1, n))
    fade = data.draw(st.integers(0, 600))
    rng = np.random.default_rng(n * 7 + start)
    original = rng.standard_normal((channels, n)).astype(np.float32)
    new = rng.standard_normal((channels, end - start)).astype(np.float32) + 3.0
    out = splice(original, new, start, end, fade)
    assert out.shape == original.shape and out.dtype == np.float32
    assert np.array_equal(out[:, :start], original[:, :start])
    assert np.array_equal(out[:, end:], original[:, end:])
    f = min(fade, (end - start) // 2)
    assert np.array_equal(out[:, start + f:end - f], new[:, f:end - start - f])  # untouched middle
    if f:
        fo, fi = equal_power_gains(f)
        head = original[:, start:start + f] * fo + new[:, :f] * fi
        assert np.allclose(out[:, start:start + f], head, atol=1e-6)


def test_splice_errors():
    x = np.zeros((1, 100), np.float32)
    for start, end in [(50, 50), (60, 50), (-1, 10), (90, 101)]:
        with pytest.raises(InvalidRegion):
            splice(x, np.zeros((1, max(end - start, 1)), np.float32), start, end, 4)
    with pytest.raises(InvalidAudio):
        splice(x, np.zeros((1, 9), np.float32), 10, 20, 4)
    with pytest.raises(InvalidAudio):
        splice(x, np.zeros((2, 10), np.float32), 10, 20, 4)


# ---- loudness ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["quiet_sine", "loud_noise", "stereo"])
def test_loudness_lands_on_target(kind):
    sr = 32000
    t = np.arange(3 * sr) / sr
    rng = np.random.default_rng(1)
    x = {"quiet_sine": 0.01 * np.sin(2 * np.pi * 440 * t),
         "loud_noise": 0.2 * rng.standard_normal(t.size),
         "stereo": np.stack([0.05 * np.sin(2 * np.pi * 220 * t), 0.03 * rng.standard_normal(t.size)])}[kind]
    y = loudness_normalize(x.astype(np.float32), sr)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert abs(lufs(y, sr) - (-14.0)) < 0.5
    assert np.abs(y).max() <= CEILING


def test_loudness_peak_ceiling_wins():
    sr = 32000
    x = np.zeros(3 * sr, np.float32)
    x[::4000] = 0.05  # sparse clicks: low loudness, high crest factor
    y = loudness_normalize(x, sr)
    assert np.abs(y).max() <= CEILING
    assert np.abs(y).max() == pytest.approx(CEILING, rel=1e-5)  # gain stopped exactly at the ceiling
    assert lufs(y, sr) < -14.0 - 3  # so it stays below target
    z = loudness_normalize(x, sr, target_lufs=-40.0, peak_db=-0.1)  # reachable under the ceiling
    assert abs(lufs(z, sr) - (-40.0)) < 0.5 and np.abs(z).max() < CEILING


def drum_like(sr: int, seconds: float = 4.0) -> np.ndarray:
    """A quiet pad with a loud decaying hit every half second: -14 LUFS needs its peaks limited."""
    t = np.arange(int(seconds * sr)) / sr
    hits = np.exp(-((t % 0.5) / 0.003)) * np.cos(2 * np.pi * 60 * t) * 0.8
    return (0.1 * np.sin(2 * np.pi * 220 * t) + hits).astype(np.float32)


def test_limit_peaks_holds_every_sample_and_leaves_quiet_audio_alone():
    from magnet_rt.audio import limit_peaks

    sr = 32000
    x = drum_like(sr) * 2.0  # peaks at 1.6
    y = limit_peaks(x, sr, peak_db=-1.0)
    assert y.dtype == np.float32 and np.abs(y).max() <= CEILING
    hit, ms = sr // 2, sr // 1000
    before = slice(hit - 2 * ms, hit - ms)  # the look-ahead: the gain is already down 1-2 ms before the hit
    assert np.abs(y[before]).max() < 0.99 * np.abs(x[before]).max()
    early = slice(hit - 60 * ms, hit - 40 * ms)  # and untouched 40-60 ms before it
    np.testing.assert_allclose(y[early], x[early], rtol=1e-5, atol=1e-7)
    stereo = limit_peaks(np.stack([x, 0.1 * x]), sr)  # linked: one gain for both channels
    assert np.abs(stereo).max() <= CEILING and np.allclose(stereo[1], 0.1 * stereo[0], atol=1e-6)
    quiet = 0.5 * x / np.abs(x).max()
    assert np.array_equal(limit_peaks(quiet, sr), quiet)


def test_loudness_with_the_limiter_reaches_the_target_under_the_ceiling():
    from magnet_rt.audio import TAKE_LIMIT_DB, finish_take

    sr = 32000
    x = drum_like(sr) * 0.1
    capped = loudness_normalize(x, sr)  # gain only: the peak stops it short
    assert lufs(capped, sr) < -18.0
    y = loudness_normalize(x, sr, max_limit_db=TAKE_LIMIT_DB)
    assert abs(lufs(y, sr) - (-14.0)) < 0.3 and np.abs(y).max() <= CEILING
    clicks = np.zeros(3 * sr, np.float32)
    clicks[::4000] = 0.05  # would need far more than 12 dB of limiting: the limit holds, the level stays under
    z = loudness_normalize(clicks, sr, max_limit_db=TAKE_LIMIT_DB)
    assert np.abs(z).max() <= CEILING and lufs(z, sr) < -14.0 - 3
    assert lufs(z, sr) == pytest.approx(lufs(loudness_normalize(clicks, sr), sr), abs=0.5)  # all its loudness is peaks
    take = finish_take(x, sr)  # what every generate path returns
    assert abs(lufs(take, sr) - (-14.0)) < 0.3 and np.abs(take).max() <= CEILING
    assert abs(float(take.mean())) < 1e-4 and max(abs(take[0]), abs(take[-1])) < 1e-3  # limited: no DC (was -0.002)


def test_loudness_silence_and_short_clip():
    silent = np.zeros((2, 32000), np.float32)
    assert np.array_equal(loudness_normalize(silent, 32000), silent)
    short = (0.01 * np.sin(2 * np.pi * 440 * np.arange(6400) / 32000)).astype(np.float32)  # 0.2 s
    y = loudness_normalize(short, 32000)
    assert np.abs(y).max() > 0.1 and np.abs(y).max() <= CEILING
    for n in (13, 26, 17639):  # n / sr * sr rounds above n at 44.1 kHz: must not trip pyloudnorm
        clip = (0.05 * np.sin(np.arange(n) * 0.3) + 0.01).astype(np.float32)
        assert np.abs(loudness_normalize(clip, 44100)).max() <= CEILING
    with pytest.raises(InvalidAudio):
        loudness_normalize(np.ones((6, 32000), np.float32) * 0.1, 32000)


# ---- time units -------------------------------------------------------------------------------------------


def test_seconds_and_bars_to_samples():
    assert seconds_to_samples(1.5, 32000) == 48000
    assert seconds_to_samples(0.1, 44100) == 4410
    assert seconds_to_samples(0.5 / 8000, 8000) == 1  # half a sample rounds up
    assert bars_to_samples(4, 120, 32000) == 256000
    assert bars_to_samples(1, 90, 44100) == 117600
    assert bars_to_samples(1, 97, 44100) == 109113  # 109113.40...
    assert bars_to_samples(1, 120.1, 32000) == 63947  # 7680000 / 120.1 = 63946.71...
    assert bars_to_samples(1, 120, 3, beats_per_bar=1) == 2  # exactly 1.5 -> half up
    assert bars_to_samples(2, 140, 48000, beats_per_bar=3) == 123429  # 123428.57...
    for bad in [{"bars": -1, "bpm": 120}, {"bars": 1, "bpm": 0}, {"bars": 1, "bpm": float("nan")},
                {"bars": 1, "bpm": 120, "beats_per_bar": 0}]:
        with pytest.raises(InvalidParams):
            bars_to_samples(sr=32000, **bad)
    with pytest.raises(InvalidParams):
        seconds_to_samples(-0.1, 32000)


# ---- a take's finishing: DC, fades, loudness ----------------------------------------------------------------
def test_finish_take_removes_dc_fades_and_lands_on_minus_14():
    from magnet_rt.audio import DEFAULT_LOUDNESS_LUFS, finish_take, remove_dc

    sr = 32000
    t = np.arange(4 * sr) / sr
    x = (0.05 * np.sin(2 * np.pi * 330 * t) + 0.25 + 0.02 * t).astype(np.float32)  # offset + slow drift
    y = finish_take(x, sr)
    assert abs(float(y.mean())) < 1e-3 and abs(float(y[: sr // 2].mean())) < 5e-3
    assert lufs(y, sr) == pytest.approx(DEFAULT_LOUDNESS_LUFS, abs=0.5) and np.abs(y).max() <= CEILING
    assert abs(y[0]) < 1e-3 and abs(y[-1]) < 1e-3  # 5 ms fades: no click at start or end
    assert np.abs(y[sr // 100: -sr // 100]).min() >= 0 and np.abs(y[sr:sr + 100]).max() > 0.1
    raw = finish_take(x, sr, loudness=None)  # opt-out: the model's level, still no DC and no click
    assert abs(float(raw.mean())) < 1e-3 and abs(raw[0]) < 1e-3
    assert lufs(raw, sr) == pytest.approx(lufs(remove_dc(x, sr), sr), abs=0.2)
    stereo = finish_take(np.stack([x, -x]), sr, loudness=-20.0)
    assert stereo.shape == (2, 4 * sr) and lufs(stereo, sr) == pytest.approx(-20.0, abs=0.5)
    assert np.array_equal(finish_take(np.zeros(sr, np.float32), sr), np.zeros(sr, np.float32))


def test_level_gain_matches_rms_within_bounds():
    from magnet_rt.audio import level_gain

    x = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    assert level_gain(x, 0.5 * x) == pytest.approx(2.0, rel=1e-6)
    assert level_gain(x, 100 * x) == pytest.approx(0.01, rel=1e-6)  # down: as far as needed (to -60 dB)
    assert level_gain(1000 * x, x) == pytest.approx(10.0, rel=1e-6)  # up: +20 dB at most
    assert level_gain(np.zeros(10, np.float32), x) == 1.0 and level_gain(x, np.zeros(10, np.float32)) == 1.0


def test_level_gain_never_lifts_peaks_past_the_reference_or_minus_1_dbfs():
    from magnet_rt.audio import level_gain

    t = np.arange(32000) / 32000
    sine = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # RMS 0.35, peak 0.5
    clicks = np.zeros(32000, np.float32)
    clicks[::4000] = 0.2  # RMS 0.003, peak 0.2: +20 dB (the most level matching lifts) would peak at 2.0
    g = level_gain(sine, clicks)
    assert 0.2 * g <= 10 ** (-1 / 20) and 0.2 * g == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    hot = sine * np.float32(1.9)  # a float source above full scale: the new part may match its peak
    assert 0.2 * level_gain(hot, clicks) == pytest.approx(0.95, rel=1e-5)
    assert level_gain(sine, clicks, peak_db=None) == pytest.approx(10.0)  # RMS alone: +20 dB
    assert level_gain(sine, 0.5 * sine) == pytest.approx(2.0, rel=1e-6)  # a sound of the same crest: RMS alone


def test_match_level_follows_a_limited_reference_without_passing_its_peak():
    from magnet_rt.audio import finish_take, level_gain, match_level

    sr = 32000
    reference = finish_take(drum_like(sr) * 0.1, sr)  # a take at -14 LUFS, its peaks limited to -1 dBFS
    rendering = drum_like(sr, 2.0) * 0.5  # new audio as the model renders it: peakier than the reference

    def rms_db(a):
        return 20 * np.log10(np.sqrt(np.mean(a.astype(np.float64) ** 2)))

    gain_only = rendering * level_gain(reference, rendering)  # stopped by the peak: a dip under the reference
    y = match_level(reference, rendering, sr)
    assert rms_db(reference) - rms_db(gain_only) > 3.0
    assert abs(rms_db(y) - rms_db(reference)) < 1.0 and np.abs(y).max() <= CEILING
