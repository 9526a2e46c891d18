"""The key input (magnet_rt/tonality.py): the prompt's key as an input of an LM that has one. It must be exactly
absent for released models and for a new input, reach the conditioned rows only, be the same on every decode
path, alone or beside a beat grid, survive a bundle, be refused by the released format, and train."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cfg_pair_logits, random_text, small_lm

from magnet_rt.checkpoints import save_audiocraft_lm
from magnet_rt.decoding import DecodePath, RowGroup, decode
from magnet_rt.errors import CheckpointError, InvalidParams
from magnet_rt.graphs import StepGraphs
from magnet_rt.lm import Attention
from magnet_rt.params import DecodeParams
from magnet_rt.tempo import BEAT_FEATURES, beat_grids
from magnet_rt.tonality import KEY_FEATURES, key_vector, key_vectors, prompt_key
from magnet_rt.train.datagen import KEYS, SCALES

PARAMS = DecodeParams(decoding_steps=(4, 2, 2, 2))


def key_lm(seed: int = 0, beat: bool = False, **kw):
    """A small LM with a key input (and a beat grid when `beat`) whose projections are not zero."""
    lm = small_lm(seed, **kw).with_control("key_features", KEY_FEATURES)
    if beat:
        lm = lm.with_control("beat_features", BEAT_FEATURES)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for proj in (lm.key_proj, lm.beat_proj):
            if proj is not None:
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=g))
    return lm.eval()


# ---- reading the key -------------------------------------------------------------------------------------
def test_prompt_key_reads_the_keys_musicians_write():
    assert prompt_key("upbeat funk at 112 bpm in E minor") == (4, "minor")
    assert prompt_key("Eb major ballad") == (3, "major")
    assert prompt_key("F# Minor groove") == prompt_key("F sharp minor groove") == (6, "minor")
    assert prompt_key("B-flat major") == prompt_key("Bb MAJOR") == (10, "major")
    assert prompt_key("C#  major, 90 bpm") == (1, "major")
    assert prompt_key("Cb major") == (11, "major") and prompt_key("B# minor") == (0, "minor")
    assert prompt_key("a major hit") is None  # a lone lower-case "a" is an article, not a key
    assert prompt_key("calm piano") is None and prompt_key(None) is None and prompt_key("") is None
    assert prompt_key("in A minor, later C major") == (9, "minor")  # the first one


def test_the_generators_captions_all_read_back():
    for tonic, name in enumerate(KEYS):
        for mode in SCALES:
            assert prompt_key(f"jazz trio in {name} {mode}") == (tonic, mode)


def test_the_vector_is_tonic_and_scale():
    v = key_vector((4, "minor"))  # E minor: E F# G A B C D
    assert v.shape == (KEY_FEATURES,) and v[:12].nonzero().flatten().tolist() == [4]
    assert v[12:].nonzero().flatten().tolist() == [0, 2, 4, 6, 7, 9, 11]
    g = key_vector((7, "major"))  # G major: the same scale, another tonic
    assert torch.equal(v[12:], g[12:]) and not torch.equal(v[:12], g[:12])
    assert not key_vector(None).any()
    rows = key_vectors(["in E minor", "no key"])
    assert torch.equal(rows[0], v) and not rows[1].any()
    assert key_vectors([]).shape == (0, KEY_FEATURES)


# ---- the model -------------------------------------------------------------------------------------------
def test_a_new_key_input_starts_at_zero_and_changes_nothing():
    lm = small_lm(3)
    withkey = lm.with_control("key_features", KEY_FEATURES).eval()
    h, m = random_text(2, 5, 16, lengths=[5, 3])
    key = key_vectors(["in D major", "in F minor"])
    a = decode(lm, lm.project_text(h, m), 60, PARAMS, [RowGroup(2, torch.Generator().manual_seed(1))])[0]
    b = decode(withkey, withkey.project_text(h, m), 60, PARAMS, [RowGroup(2, torch.Generator().manual_seed(1))],
               key=key)[0]
    assert torch.equal(a, b)
    assert torch.equal(a, decode(lm, lm.project_text(h, m), 60, PARAMS,  # a model without one ignores a key
                                 [RowGroup(2, torch.Generator().manual_seed(1))], key=key)[0])
    with pytest.raises(ValueError, match="already"):
        withkey.with_control("key_features", KEY_FEATURES)
    with pytest.raises(ValueError, match="no control"):
        lm.with_control("mood_features", 3)


def test_the_key_reaches_the_conditioned_rows_only():
    logits = cfg_pair_logits(key_lm(1))
    plain, keyed = logits(), logits(key=key_vectors(["in A minor"]))
    other, silent = logits(key=key_vectors(["in C major"])), logits(key=key_vectors(["no key"]))
    assert not torch.allclose(plain[0], keyed[0]) and not torch.allclose(keyed[0], other[0])
    assert torch.equal(plain[1], keyed[1])  # the CFG null row never hears it
    assert torch.equal(plain, silent)  # no key in the prompt: an all-zero vector, no effect


@pytest.mark.parametrize("beat", [False, True], ids=["key", "key+beat"])
@pytest.mark.parametrize("form", list(Attention))
def test_every_decode_path_plays_the_same_key(form, beat):
    lm = key_lm(4, beat=beat, segment_duration=1.0)
    h, m = random_text(2, 5, 16, lengths=[5, 2])
    prompts = ["techno 130 bpm in F minor", "dub at 70 bpm in G major"]
    grid = beat_grids(prompts, 50, [0, 33]) if beat else None

    def run(prompts, path=None, graphs=None):
        with torch.inference_mode():
            groups = [RowGroup(1, torch.Generator().manual_seed(s)) for s in (5, 6)]
            return decode(lm, lm.project_text(h, m), 50, PARAMS, groups, cross_len=m.sum(-1), beat=grid,
                          key=key_vectors(prompts), path=path, graphs=graphs)

    ref = run(prompts, DecodePath.REFERENCE)
    for path in (DecodePath.DYNAMIC, DecodePath.STATIC):
        out = run(prompts, path, StepGraphs(lm) if path is DecodePath.STATIC else None)
        assert all(torch.equal(a, b) for a, b in zip(ref, out, strict=True)), path
    other = run(["techno 130 bpm in B major", "dub at 70 bpm in G major"], DecodePath.DYNAMIC)
    assert not torch.equal(other[0], ref[0])  # another key: another take
    assert torch.equal(other[1], ref[1])  # its batch mate is untouched
    with pytest.raises(InvalidParams, match="key inputs"):
        decode(lm, lm.project_text(h, m), 50, PARAMS, [RowGroup(2)], key=key_vectors(["in C major"]))


# ---- the pipeline and bundles ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key_pipe(tmp_path_factory):
    from magnet_rt.codec import Codec
    from magnet_rt.conditioning import T5TextEncoder, build_random_t5
    from magnet_rt.encodec_checkpoints import random_encodec_config, random_encodec_model
    from magnet_rt.pipeline import MagnetPipeline

    te_dir = build_random_t5(tmp_path_factory.mktemp("t5"), d_model=16, seed=0)
    codec = Codec(random_encodec_model(random_encodec_config(n_filters=4, dimension=16, card=64), seed=0))
    lm = key_lm(0, beat=True, segment_duration=1.0)
    return MagnetPipeline(lm, T5TextEncoder.from_pretrained(te_dir), codec, name="key")


def test_the_pipeline_reads_each_prompts_key_and_a_bundle_keeps_it(key_pipe, tmp_path):
    from magnet_rt.bundle import load_bundle, read_bundle_config, save_bundle

    p = DecodeParams(decoding_steps=(3, 2, 1, 1))
    d_major = key_pipe.generate("house at 128 bpm in D major", duration_s=1.0, params=p, seed=3, loudness=None)
    b_minor = key_pipe.generate("house at 128 bpm in B minor", duration_s=1.0, params=p, seed=3, loudness=None)
    assert not torch.equal(d_major.codes, b_minor.codes)
    both = key_pipe.generate(["house at 128 bpm in D major", "house at 128 bpm in B minor"], duration_s=1.0,
                             params=p, seed=3, loudness=None)
    assert torch.equal(both.codes[0], d_major.codes[0]) and torch.equal(both.codes[1], b_minor.codes[0])
    d = save_bundle(key_pipe, tmp_path / "b", lm_dtype=torch.float32)
    assert read_bundle_config(d)["lm"]["key_features"] == KEY_FEATURES
    back = load_bundle(d, device="cpu")
    assert torch.equal(back.lm.key_proj.weight, key_pipe.lm.key_proj.weight)
    assert torch.equal(back.generate("x in D major", duration_s=0.5, params=p, seed=2).codes,
                       key_pipe.generate("x in D major", duration_s=0.5, params=p, seed=2).codes)
    with pytest.raises(CheckpointError, match="key input"):
        save_audiocraft_lm(small_lm(1).with_control("key_features", KEY_FEATURES), tmp_path / "state_dict.bin")


# ---- training ----------------------------------------------------------------------------------------------
def test_training_reads_the_caption_key(key_pipe):
    from magnet_rt.train.trainer import LMTrainer, TrainConfig

    codes = torch.randint(0, 64, (2, 4, 50), generator=torch.Generator().manual_seed(3))
    caps = ["funk in E minor", "jazz in Bb major"]
    trainer = LMTrainer(key_lm(2, segment_duration=1.0), key_pipe.text_encoder, TrainConfig(seed=0, key_dropout=0.0))

    def loss(captions):
        trainer.generator = torch.Generator().manual_seed(7)  # the same masks each time
        with torch.no_grad():
            return float(trainer.compute_loss(codes, captions, stage=0, drop=False)[0])

    base = loss(caps)
    assert loss(caps) == base and loss(["funk in F minor", "jazz in Bb major"]) != base  # the key is heard
    dropped = LMTrainer(key_lm(2, beat=True, segment_duration=1.0), key_pipe.text_encoder,
                        TrainConfig(seed=0, key_dropout=1.0, beat_dropout=0.0, cfg_dropout=0.0))
    info = dropped.train_step(codes, ["funk in E minor, 100 bpm", "jazz in Bb major, 90 bpm"])
    assert math.isfinite(info.loss)
    assert not dropped.lm.key_proj.weight.grad.any()  # every key dropped: nothing to learn from it
    assert dropped.lm.beat_proj.weight.grad.any()  # the beat grid, dropped on its own draw, still learns
    groups = dropped.optimizer.param_groups  # both controls learn faster than the rest of the model
    assert len(groups) == 3
    assert {id(p) for p in groups[2]["params"]} == {id(dropped.lm.beat_proj.weight), id(dropped.lm.key_proj.weight)}
    assert groups[2]["initial_lr"] == pytest.approx(20 * groups[0]["initial_lr"])
