"""magnet-rt bundles (magnet_rt/bundle.py) and the registry's "demo" entry."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import small_lm

from magnet_rt.bundle import is_bundle, load_bundle, read_bundle_config, save_bundle
from magnet_rt.errors import CheckpointError
from magnet_rt.params import DecodeParams

PARAMS = DecodeParams(decoding_steps=(3, 2, 1, 1))


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from magnet_rt.codec import Codec
    from magnet_rt.conditioning import T5TextEncoder, build_random_t5
    from magnet_rt.encodec_checkpoints import random_encodec_config, random_encodec_model
    from magnet_rt.pipeline import MagnetPipeline

    te_dir = build_random_t5(tmp_path_factory.mktemp("t5"), d_model=16, seed=0)
    codec = Codec(random_encodec_model(random_encodec_config(n_filters=4, dimension=16, card=64), seed=0))
    lm = small_lm(0, card=64, text_dim=16, segment_duration=1.0)
    return MagnetPipeline(lm, T5TextEncoder.from_pretrained(te_dir), codec, name="tiny")


def _same(a, b):
    assert torch.equal(a.codes, b.codes)
    assert (a.audio == b.audio).all()


def test_save_load_identical_generation_fp32(tiny_pipe, tmp_path):
    d = save_bundle(tiny_pipe, tmp_path / "b", lm_dtype=torch.float32, provenance={"steps": 3}, metrics={"loss": 1.5})
    assert is_bundle(d) and sorted(p.name for p in d.iterdir()) == ["codec.safetensors", "config.json",
                                                                     "model.safetensors", "text_encoder"]
    cfg = read_bundle_config(d)
    assert cfg["lm"]["dim"] == 32 and cfg["text_encoder"]["kind"] == "t5" and cfg["metrics"] == {"loss": 1.5}
    back = load_bundle(d, device="cpu")
    assert back.lm.cfg == tiny_pipe.lm.cfg and back.name == "tiny"
    _same(tiny_pipe.generate(["funk bass", None], duration_s=1.0, params=PARAMS, seed=7),
          back.generate(["funk bass", None], duration_s=1.0, params=PARAMS, seed=7))


def test_fp16_bundle_equals_the_fp16_rounded_model(tiny_pipe, tmp_path):
    import copy

    from magnet_rt.pipeline import MagnetPipeline

    d = save_bundle(tiny_pipe, tmp_path / "b16")  # default: LM in fp16
    assert (d / "model.safetensors").stat().st_size < 0.6 * 4 * sum(p.numel() for p in tiny_pipe.lm.parameters())
    rounded = copy.deepcopy(tiny_pipe.lm)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    ref = MagnetPipeline(rounded, tiny_pipe.text_encoder, tiny_pipe.codec)
    _same(ref.generate("sad piano", duration_s=0.5, params=PARAMS, seed=3),
          load_bundle(d, device="cpu").generate("sad piano", duration_s=0.5, params=PARAMS, seed=3))


def test_a_bundles_decoding_reaches_every_entry_point(tiny_pipe, tmp_path):
    from magnet_rt.pipeline import MagnetPipeline
    from magnet_rt.presets import ModelDecoding, resolve_params

    decoding = ModelDecoding({"max_cfg_coef": 2.0}, {"live": {"decoding_steps": [3, 2, 2, 2]}})
    own = MagnetPipeline(tiny_pipe.lm, tiny_pipe.text_encoder, tiny_pipe.codec, "tiny", decoding=decoding)
    d = save_bundle(own, tmp_path / "b", lm_dtype=torch.float32)
    assert read_bundle_config(d)["decoding"] == decoding.to_config()
    back = load_bundle(d, device="cpu")
    assert back.decoding == decoding and back.decoding.default_params.max_cfg_coef == 2.0
    assert back.with_options(back.options).decoding == decoding
    assert resolve_params("live", None, back.decoding).decoding_steps == (3, 2, 2, 2)
    assert load_bundle(save_bundle(tiny_pipe, tmp_path / "plain"), device="cpu").decoding == ModelDecoding()
    steps = {"decoding_steps": [3, 2, 1, 1]}
    lowered = resolve_params("balanced", steps, back.decoding)
    _same(back.generate("funk", duration_s=0.5, params=lowered, seed=5),
          tiny_pipe.generate("funk", duration_s=0.5, params=resolve_params("balanced", {**steps, "max_cfg_coef": 2.0}),
                             seed=5))
    release = resolve_params("balanced", steps)
    assert not torch.equal(back.generate("funk", duration_s=0.5, params=lowered, seed=5).codes,
                           back.generate("funk", duration_s=0.5, params=release, seed=5).codes)
    _same(back.generate("funk", duration_s=0.5, seed=5),  # no params: the release's defaults + the bundle's
          back.generate("funk", duration_s=0.5, params=DecodeParams(max_cfg_coef=2.0), seed=5))
    cfg = json.loads((d / "config.json").read_text())
    for bad in ({"defaults": {"max_cfg": 2.0}}, {"defaults": {"max_cfg_coef": -1.0}}, {"max_cfg_coef": 2.0},
                {"presets": {"loud": {}}}, {"presets": []}, ["defaults"]):
        (d / "config.json").write_text(json.dumps({**cfg, "decoding": bad}))
        with pytest.raises(CheckpointError, match="invalid 'decoding'"):
            load_bundle(d, device="cpu")


def test_bad_bundles_are_refused(tiny_pipe, tmp_path):
    d = save_bundle(tiny_pipe, tmp_path / "b", lm_dtype=torch.float32)
    cfg = json.loads((d / "config.json").read_text())
    cfg["lm"]["dim"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        load_bundle(d, device="cpu")
    (d / "config.json").write_text(json.dumps({**cfg, "format": "other"}))
    with pytest.raises(CheckpointError, match="format"):
        load_bundle(d, device="cpu")
    (d / "config.json").write_text(json.dumps({**cfg, "version": 99, "format": "magnet-rt-bundle"}))
    with pytest.raises(CheckpointError, match="newer"):
        load_bundle(d, device="cpu")
    with pytest.raises(CheckpointError, match="not a magnet-rt bundle"):
        load_bundle(tmp_path / "nothing", device="cpu")


def test_demo_entry(monkeypatch, tmp_path, tiny_pipe):
    from magnet_rt import registry

    monkeypatch.setattr(registry, "demo_dir", lambda: tmp_path / "demo")
    with pytest.raises(CheckpointError, match="not built yet.*magnet_rt.train.datagen"):
        registry.load_pipeline("demo", device="cpu")
    save_bundle(tiny_pipe, tmp_path / "demo")
    pipe = registry.load_pipeline("demo", device="cpu")
    assert pipe.name == "demo" and pipe.lm.cfg == tiny_pipe.lm.cfg
