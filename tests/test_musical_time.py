"""Musical time and loops (magnet_rt/loop.py): exact lengths, and the seam measured by spectral flux."""

from __future__ import annotations

import os

import numpy as np
import pytest

from magnet_rt.audio import bars_to_samples
from magnet_rt.errors import InvalidParams
from magnet_rt.loop import make_loop, plan_loop, seam_flux, spectral_flux

SR = 32000


@pytest.mark.parametrize("bars, bpm", [(1, 120.0), (1, 123.4), (2, 97.3), (4, 174.0), (3, 60.1)])
def test_plan_is_exact_musical_time(bars, bpm):
    plan = plan_loop(bars, bpm, SR)
    assert plan.samples == bars_to_samples(bars, bpm, SR) == round(bars * 4 * 60 * SR / bpm)
    frames = plan.generate_duration_s * 50
    assert abs(frames - round(frames)) < 1e-9 and round(frames) * 640 >= plan.samples > (round(frames) - 1) * 640
    start, end = plan.region()
    wrap = plan.samples - plan.shift
    assert start * SR < wrap < end * SR and abs((end - start) - plan.window_s) < 1e-4
    x = np.arange(plan.samples, dtype=np.float32)
    r = plan.rotate(x)
    assert (r[wrap - 1], r[wrap]) == (x[-1], x[0])  # the wrap sits in the middle of the rotated clip
    np.testing.assert_array_equal(plan.unrotate(r), x)


def test_plan_refuses_too_short_and_bad_tempo():
    with pytest.raises(InvalidParams):
        plan_loop(1, 5000.0, SR)
    with pytest.raises(InvalidParams):
        plan_loop(1, 0.0, SR)


def test_flux_sees_a_cut():
    t = np.arange(SR) / SR
    smooth = np.sin(2 * np.pi * 220 * t)
    cut = np.concatenate([smooth[: SR // 2], np.sin(2 * np.pi * 330 * t[SR // 2:])])
    assert spectral_flux(cut).max() > 10 * spectral_flux(smooth).max()
    wrap, internal = seam_flux(np.sin(2 * np.pi * 250 * t))  # 250 Hz fits 1 s exactly: a perfect loop
    assert wrap <= internal.max() + 1e-6


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from magnet_rt.registry import load_pipeline

    old = os.environ.get("MAGNET_RT_CACHE")
    os.environ["MAGNET_RT_CACHE"] = old or str(tmp_path_factory.mktemp("cache"))
    try:
        yield load_pipeline("tiny-random", device="cpu")
    finally:
        if old is None:
            os.environ.pop("MAGNET_RT_CACHE")


@pytest.mark.slow
def test_loop_seam_is_within_the_clip_and_better_than_a_naive_cut(pipe):
    from magnet_rt.presets import resolve_params

    params = resolve_params("live", {})
    naive_wraps, loop_wraps = [], []
    for seed in range(3):
        res, naive = make_loop(pipe, "warm pad", 1, 123.0, params, seed=seed)
        loop = res.audio[0]
        plan = plan_loop(1, 123.0, SR)
        assert loop.shape == naive.shape == (1, plan.samples) and res.sample_rate == SR
        half = round(plan.window_s * SR / 2) + 1
        np.testing.assert_array_equal(loop[:, half:-half], naive[:, half:-half])  # only the seam changed
        wrap, internal = seam_flux(loop)
        naive_wrap, _ = seam_flux(naive)
        print(f"seed {seed}: wrap flux loop {wrap:.3f} naive {naive_wrap:.3f}; internal min {internal.min():.3f} "
              f"median {np.median(internal):.3f} p95 {np.percentile(internal, 95):.3f} max {internal.max():.3f}")
        assert internal.min() <= wrap <= internal.max()
        naive_wraps.append(naive_wrap)
        loop_wraps.append(wrap)
    assert np.mean(loop_wraps) < np.mean(naive_wraps)
