"""The beat grid (magnet_rt/tempo.py): the prompt's tempo as a per-frame input of an LM that has one. It must
be exactly absent for released models, follow the prompt's bpm on every decode path, run on across the windows
of long takes and regions, survive a bundle, and train."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import cfg_pair_logits, random_text, small_lm

from magnet_rt.checkpoints import save_audiocraft_lm
from magnet_rt.decoding import DecodePath, RowGroup, decode
from magnet_rt.errors import CheckpointError, InvalidParams
from magnet_rt.graphs import StepGraphs
from magnet_rt.lm import Attention
from magnet_rt.params import DecodeParams
from magnet_rt.tempo import BEAT_FEATURES, beat_grid, beat_grids, prompt_bpm

PARAMS = DecodeParams(decoding_steps=(4, 2, 2, 2))


def beat_lm(seed: int = 0, **kw):
    """A small LM with a beat grid whose projection is not zero (so the grid matters)."""
    lm = small_lm(seed, **kw).with_control("beat_features", BEAT_FEATURES).eval()
    with torch.no_grad():
        lm.beat_proj.weight.copy_(torch.randn(lm.beat_proj.weight.shape, generator=torch.Generator().manual_seed(9)))
    return lm


# ---- the grid --------------------------------------------------------------------------------------------
def test_prompt_bpm_reads_the_tempo_musicians_write():
    assert prompt_bpm("deep house, 124 bpm, A minor") == 124
    assert prompt_bpm("lofi at 82.5bpm") == 82.5
    assert prompt_bpm("Drum And Bass 174 BPM") == 174
    assert prompt_bpm("calm piano") is None and prompt_bpm(None) is None and prompt_bpm("") is None
    assert prompt_bpm("gabber at 999 bpm") == 999  # which tempi to serve is the daemon's call
    assert prompt_bpm("1000 bpm") == 1000 and prompt_bpm("x1000 bpm") is None
    with pytest.raises(InvalidParams, match="0 bpm"):
        prompt_bpm("silence at 0 bpm")


def test_the_grid_is_the_beat_phase_and_runs_on_across_windows():
    g = beat_grid(120.0, 200, frame_rate=50)  # 2 beats per second: a beat every 25 frames
    assert g.shape == (200, BEAT_FEATURES)
    beat_cos = g[:, 2 * 2]  # harmonic 1.0 (the beat), cosine
    assert torch.allclose(beat_cos[::25], torch.ones(8), atol=1e-6)  # 1 on every beat
    assert abs(float(beat_cos[12]) - math.cos(2 * math.pi * 12 / 25)) < 1e-6
    assert torch.allclose(g[:, 0][::100], torch.ones(2), atol=1e-6)  # the bar (harmonic 1/4): every 4 beats
    later = beat_grid(120.0, 100, first_frame=75, frame_rate=50)
    assert torch.allclose(later, g[75:175], atol=1e-5)  # a later window continues the same grid
    assert torch.equal(beat_grid(None, 30), torch.zeros(30, BEAT_FEATURES))
    rows = beat_grids(["a 120 bpm take", "no tempo"], 40, [0, 10])
    assert torch.allclose(rows[0], g[:40]) and not rows[1].any()


# ---- the model -------------------------------------------------------------------------------------------
def test_a_new_grid_starts_at_zero_and_changes_nothing():
    lm = small_lm(3)
    withgrid = lm.with_control("beat_features", BEAT_FEATURES).eval()
    h, m = random_text(2, 5, 16, lengths=[5, 3])
    beat = beat_grids(["90 bpm", "140 bpm"], 60)
    a = decode(lm, lm.project_text(h, m), 60, PARAMS, [RowGroup(2, torch.Generator().manual_seed(1))])[0]
    b = decode(withgrid, withgrid.project_text(h, m), 60, PARAMS, [RowGroup(2, torch.Generator().manual_seed(1))],
               beat=beat)[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="already"):
        withgrid.with_control("beat_features", BEAT_FEATURES)


def test_the_grid_reaches_the_conditioned_rows_only():
    logits = cfg_pair_logits(beat_lm(1), frames=40)
    plain, gridded, silent = logits(), logits(beat=beat_grids(["100 bpm"], 40)), logits(beat=beat_grids(["x"], 40))
    assert not torch.allclose(plain[0], gridded[0])  # the conditioned row hears the tempo
    assert torch.equal(plain[1], gridded[1])  # the CFG null row never does
    assert torch.equal(plain, silent)  # no tempo in the prompt: an all-zero grid, no effect


@pytest.mark.parametrize("form", list(Attention))
def test_every_decode_path_plays_the_same_grid(form):
    lm = beat_lm(4, segment_duration=1.0)
    h, m = random_text(2, 5, 16, lengths=[5, 2])
    beat = beat_grids(["techno 130 bpm", "dub at 70 bpm"], 50, [0, 33])
    out = {}
    for path in (DecodePath.REFERENCE, DecodePath.DYNAMIC, DecodePath.STATIC):
        with torch.inference_mode():
            groups = [RowGroup(1, torch.Generator().manual_seed(s)) for s in (5, 6)]
            out[path] = decode(lm, lm.project_text(h, m), 50, DecodeParams(decoding_steps=(4, 2, 2, 2)), groups,
                               cross_len=m.sum(-1), beat=beat, path=path,
                               graphs=StepGraphs(lm) if path is DecodePath.STATIC else None)
    for path in (DecodePath.DYNAMIC, DecodePath.STATIC):
        assert all(torch.equal(a, b) for a, b in zip(out[DecodePath.REFERENCE], out[path], strict=True)), path
    with torch.inference_mode():
        other = decode(lm, lm.project_text(h, m), 50, DecodeParams(decoding_steps=(4, 2, 2, 2)),
                       [RowGroup(1, torch.Generator().manual_seed(s)) for s in (5, 6)], cross_len=m.sum(-1),
                       beat=beat_grids(["techno 95 bpm", "dub at 70 bpm"], 50, [0, 33]))
    assert not torch.equal(other[0], out[DecodePath.DYNAMIC][0])  # another tempo: another take
    assert torch.equal(other[1], out[DecodePath.DYNAMIC][1])  # its batch mate is untouched
    with pytest.raises(InvalidParams, match="beat grid"):
        decode(lm, lm.project_text(h, m), 50, PARAMS, [RowGroup(2)], beat=beat[:, :40])


# ---- the pipeline, bundles, long takes and regions ----------------------------------------------------------
@pytest.fixture(scope="module")
def beat_pipe(tmp_path_factory):
    from magnet_rt.codec import Codec
    from magnet_rt.conditioning import T5TextEncoder, build_random_t5
    from magnet_rt.encodec_checkpoints import random_encodec_config, random_encodec_model
    from magnet_rt.pipeline import MagnetPipeline

    te_dir = build_random_t5(tmp_path_factory.mktemp("t5"), d_model=16, seed=0)
    codec = Codec(random_encodec_model(random_encodec_config(n_filters=4, dimension=16, card=64), seed=0))
    return MagnetPipeline(beat_lm(0, segment_duration=1.0), T5TextEncoder.from_pretrained(te_dir), codec, name="beat")


def test_the_pipeline_reads_each_prompts_tempo(beat_pipe):
    p = DecodeParams(decoding_steps=(3, 2, 1, 1))
    fast = beat_pipe.generate("house at 128 bpm", duration_s=1.0, params=p, seed=3, loudness=None)
    slow = beat_pipe.generate("house at 64 bpm", duration_s=1.0, params=p, seed=3, loudness=None)
    again = beat_pipe.generate("house at 128 bpm", duration_s=1.0, params=p, seed=3, loudness=None)
    assert not torch.equal(fast.codes, slow.codes) and torch.equal(fast.codes, again.codes)
    both = beat_pipe.generate(["house at 128 bpm", "house at 64 bpm"], duration_s=1.0, params=p, seed=3,
                              loudness=None)
    assert torch.equal(both.codes[0], fast.codes[0]) and torch.equal(both.codes[1], slow.codes[0])


def test_windows_of_long_takes_and_regions_carry_their_place_on_the_grid(beat_pipe, monkeypatch):
    seen: list[tuple[int, int]] = []
    run_batch = type(beat_pipe).run_batch

    def spy(self, jobs, *a, **kw):
        seen.extend((j.first_frame, j.frames) for j in jobs)
        return run_batch(self, jobs, *a, **kw)

    monkeypatch.setattr(type(beat_pipe), "run_batch", spy)
    p = DecodeParams(decoding_steps=(2, 1, 1, 1))
    src = (0.1 * np.sin(np.arange(3 * 32000) / 9)).astype(np.float32)
    beat_pipe.inpaint(src, 32000, 0.4, 2.6, "funk 100 bpm", params=p, seed=1)
    assert len(seen) >= 2 and seen[0][0] < seen[1][0]  # each window starts where it sits in the clip
    firsts = [f for f, _ in seen]
    assert firsts == sorted(firsts) and all(f >= 0 for f in firsts)
    seen.clear()
    beat_pipe.inpaint(src, 32000, 0.4, 2.6, "funk 100 bpm", params=p, seed=1, downbeat_s=0.5)
    assert [f for f, _ in seen] == [f - 25 for f in firsts]  # counted from the downbeat 0.5 s (25 frames) in
    seen.clear()
    from magnet_rt import longform

    list(longform.stream_long(beat_pipe, "funk 100 bpm", 2.5, p, 7, overlap_s=0.3))
    assert len(seen) >= 3 and seen[0][0] == 0 and all(b[0] > a[0] for a, b in zip(seen, seen[1:], strict=False))


def test_a_bundle_keeps_the_grid_and_the_released_format_refuses_it(beat_pipe, tmp_path):
    from magnet_rt.bundle import load_bundle, read_bundle_config, save_bundle

    d = save_bundle(beat_pipe, tmp_path / "b", lm_dtype=torch.float32)
    assert read_bundle_config(d)["lm"]["beat_features"] == BEAT_FEATURES
    back = load_bundle(d, device="cpu")
    assert torch.equal(back.lm.beat_proj.weight, beat_pipe.lm.beat_proj.weight)
    p = DecodeParams(decoding_steps=(3, 2, 1, 1))
    assert torch.equal(back.generate("x 90 bpm", duration_s=0.5, params=p, seed=2).codes,
                       beat_pipe.generate("x 90 bpm", duration_s=0.5, params=p, seed=2).codes)
    with pytest.raises(CheckpointError, match="beat grid"):
        save_audiocraft_lm(beat_pipe.lm, tmp_path / "state_dict.bin")


# ---- training ----------------------------------------------------------------------------------------------
def test_training_reads_the_caption_tempo_at_each_crops_place(beat_pipe):
    from magnet_rt.train.trainer import LMTrainer, TrainConfig

    lm = beat_lm(2, segment_duration=1.0)
    trainer = LMTrainer(lm, beat_pipe.text_encoder, TrainConfig(seed=0, beat_dropout=0.0))
    codes = torch.randint(0, 64, (2, 4, 50), generator=torch.Generator().manual_seed(3))
    caps = ["funk at 100 bpm", "jazz, 150 bpm"]

    def loss(captions, first=None):
        trainer.generator = torch.Generator().manual_seed(7)  # the same masks each time
        with torch.no_grad():
            return float(trainer.compute_loss(codes, captions, stage=0, drop=False, first_frames=first)[0])

    base = loss(caps)
    assert loss(caps) == base
    assert loss(["funk at 70 bpm", "jazz, 150 bpm"]) != base  # the tempo is heard
    assert loss(caps, torch.tensor([13, 0])) != base  # so is the crop's place on the grid
    assert loss(["funk", "jazz"]) != base
    no_grid = LMTrainer(small_lm(2, segment_duration=1.0), beat_pipe.text_encoder, TrainConfig(seed=0))
    no_grid.lm.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.startswith("beat_proj")})
    no_grid.generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        assert float(no_grid.compute_loss(codes, ["funk", "jazz"], stage=0, drop=False)[0]) == loss(["funk", "jazz"])
    dropped = LMTrainer(beat_lm(2, segment_duration=1.0), beat_pipe.text_encoder,
                        TrainConfig(seed=0, beat_dropout=1.0, cfg_dropout=0.0))
    info = dropped.train_step(codes, caps, first_frames=torch.tensor([0, 5]))
    assert math.isfinite(info.loss)
    assert not dropped.lm.beat_proj.weight.grad.any()  # every grid dropped: nothing to learn from it
    groups = dropped.optimizer.param_groups  # the new grid learns faster than the rest of the model
    assert len(groups) == 3 and groups[2]["params"] == [dropped.lm.beat_proj.weight]
    assert groups[2]["initial_lr"] == pytest.approx(20 * groups[0]["initial_lr"])
    assert len(no_grid.optimizer.param_groups) == 2  # a model without a grid trains exactly as before
    with pytest.raises(ValueError, match="hybrid"):  # the delayed layout has no single frame for the grid
        LMTrainer(beat_lm(2, segment_duration=1.0), beat_pipe.text_encoder, TrainConfig(hybrid=True))
    held = [(codes, caps, torch.tensor([0, 5]))]
    assert set(trainer.evaluate(held)) >= {"loss", "loss_stage0"}
