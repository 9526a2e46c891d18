"""The pipeline on the tiny-random model, loaded through the released formats: generate, inpaint,
continue, batching."""

import dataclasses

import numpy as np
import pytest

from magnet_rt.errors import InvalidAudio, InvalidParams, InvalidRegion
from magnet_rt.pipeline import Job, PipelineOptions
from magnet_rt.presets import resolve_params

FAST = resolve_params("live", {"decoding_steps": [3, 1, 1, 1]})


def test_generate_shapes_seeds_and_determinism(pipe):
    r = pipe.generate(["warm rhodes chords", "fast drums"], duration_s=2.0, params=FAST, seed=5, variations=2)
    assert r.audio.shape == (4, 1, 64000) and r.codes.shape == (4, 4, 100) and r.sample_rate == 32000
    assert r.seeds == [5, 6, 5, 6] and np.isfinite(r.audio).all()
    assert {"text", "stage0", "stage1", "stage2", "stage3", "codec", "total"} <= set(r.timings)
    again = pipe.generate("fast drums", duration_s=2.0, params=FAST, seed=6)
    assert np.array_equal(again.codes[0], r.codes[3])  # variation v of seed s == seed s + v alone


def test_requests_batched_together_match_alone(pipe):
    jobs = [Job(["a slow cello"], 50, FAST, 1), Job(["a much longer prompt about glitchy techno drums"], 50, FAST, 2)]
    both = pipe.run_batch(jobs)
    alone = pipe.run_batch([jobs[0]])
    assert both[0].batch_size == 2 and alone[0].batch_size == 1
    assert np.array_equal(both[0].codes, alone[0].codes)


def test_durations_beyond_the_segment_are_refused(pipe):
    with pytest.raises(InvalidParams, match="segment"):
        pipe.generate("x", duration_s=11.0, params=FAST)


def _noise(sr, seconds, channels=2, seed=0):
    return (np.random.default_rng(seed).standard_normal((channels, int(sr * seconds))) * 0.1).astype(np.float32)


@pytest.mark.parametrize("sr, channels", [(44100, 2), (32000, 1), (48000, 1)])
def test_inpaint_keeps_every_sample_outside_the_region(pipe, sr, channels):
    x = _noise(sr, 4.0, channels)
    r = pipe.inpaint(x, sr, 1.0, 2.5, "drum fill", params=FAST, seed=3, variations=2)
    a, b = round(1.0 * sr), round(2.5 * sr)
    assert r.audio.shape == (2, channels, x.shape[1]) and r.sample_rate == sr
    for take in r.audio:
        assert np.array_equal(take[:, :a], x[:, :a]) and np.array_equal(take[:, b:], x[:, b:])
        assert not np.allclose(take[:, a:b], x[:, a:b])


def test_inpaint_in_a_clip_longer_than_the_segment(pipe):
    x = _noise(32000, 14.0, 1)
    r = pipe.inpaint(x, 32000, 11.0, 12.0, None, params=FAST, seed=1)
    take = r.audio[0]
    assert np.array_equal(take[:, :352000], x[:, :352000]) and np.array_equal(take[:, 384000:], x[:, 384000:])


@pytest.mark.parametrize("start, end, err", [(3.0, 5.0, InvalidRegion), (-1.0, 1.0, InvalidRegion),
                                              (1.0, 1.03, InvalidRegion), (2.0, 1.0, InvalidRegion)])
def test_bad_regions(pipe, start, end, err):
    with pytest.raises(err):
        pipe.inpaint(_noise(32000, 4.0, 1), 32000, start, end, "x", params=FAST)


def test_bad_audio(pipe):
    with pytest.raises(InvalidAudio):
        pipe.inpaint(np.zeros((1, 0), np.float32), 32000, 0.0, 1.0, "x", params=FAST)
    bad = _noise(32000, 2.0, 1)
    bad[0, 100] = np.nan
    with pytest.raises(InvalidAudio):
        pipe.inpaint(bad, 32000, 0.5, 1.0, "x", params=FAST)


def test_continue_keeps_the_source_and_reaches_the_duration(pipe):
    x = _noise(44100, 3.0, 2)
    r = pipe.continue_from(x, 44100, "keep going", 2.0, params=FAST, seed=2)  # appends 2 s
    assert r.audio.shape == (1, 2, 5 * 44100)
    assert np.array_equal(r.audio[0][:, : x.shape[1]], x)
    assert np.abs(r.audio[0][:, x.shape[1]:]).max() > 0


def test_step_graphs_change_nothing_but_the_path(pipe):
    """`step_graphs` on (static steps, eager on a CPU) and off give the same codes for generate, a
    batch of two prompts of different lengths, and inpainting."""
    jobs = [Job(["a slow cello"], 50, FAST, 1), Job(["a much longer prompt about glitchy techno drums"], 50, FAST, 2)]
    src = _noise(32000, 2.0, channels=1)
    out = {}
    for mode in ("off", "on"):
        p = pipe.with_options(PipelineOptions(step_graphs=mode))
        out[mode] = ([r.codes for r in p.run_batch(jobs)],
                     p.inpaint(src, 32000, 0.5, 1.2, "a bell", params=FAST, seed=3).codes)
        assert (p.graphs is not None and bool(p.graphs.buckets)) == (mode == "on")  # the static path really ran
    for a, b in zip(out["off"][0], out["on"][0], strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(out["off"][1], out["on"][1])
    with pytest.raises(InvalidParams, match="step_graphs"):
        PipelineOptions(step_graphs="sometimes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipe.options.step_graphs = "on"  # options are fixed when the pipeline is built


def test_timings_add_up(pipe):
    """Stage times (CUDA events on a GPU, the host clock here) add up to the decode, and the parts to the total."""
    t = pipe.generate("a slow cello", duration_s=1.0, params=FAST, seed=1).timings
    stages = [t[f"stage{s}"] for s in range(4)]
    assert all(v >= 0 for v in t.values())
    assert sum(stages) <= t["decode"] <= t["total"]
    assert abs(t["text"] + t["decode"] + t["codec"] - t["total"]) < 1e-6
