"""Loading the released format: other shapes, fp16 files, the hub cache, and every kind of bad file."""

import io
import pickle
import shutil

import pytest
import torch
import yaml
from conftest import random_text, small_lm

from magnet_rt.checkpoints import load_audiocraft_lm, load_pretrained_lm, resolve_file, save_audiocraft_lm
from magnet_rt.errors import CheckpointError, UnsupportedConfig


def _export(tmp_path, lm, dtype=torch.float16, name="ckpt"):
    return save_audiocraft_lm(lm, tmp_path / name, dtype=dtype)


def test_fp16_export_of_another_shape_round_trips(tmp_path):
    lm = small_lm(seed=9, dim=48, num_heads=3, num_layers=3, card=128, text_dim=24, subcodes_context=3,
                  segment_duration=3.0)
    path = _export(tmp_path, lm)
    pkg = torch.load(path, weights_only=True)
    assert set(pkg) == {"best_state", "xp.cfg", "version", "exported"}
    assert all(v.dtype == torch.float16 for v in pkg["best_state"].values())
    assert "transformer.layers.2.cross_attention.in_proj_weight" in pkg["best_state"]
    assert "condition_provider.conditioners.description.output_proj.bias" in pkg["best_state"]
    loaded = load_audiocraft_lm(path.parent)
    assert loaded.cfg == lm.cfg
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # cast to the compute dtype
    rounded = small_lm(seed=9, dim=48, num_heads=3, num_layers=3, card=128, text_dim=24, subcodes_context=3,
                       segment_duration=3.0)
    rounded.load_state_dict({k: v.half().float() for k, v in lm.state_dict().items()})
    h, m = random_text(1, 5, 24)
    codes = torch.randint(0, 129, (1, 4, 20), generator=torch.Generator().manual_seed(0))
    for stage in range(4):
        assert torch.equal(loaded.logits(codes, h, m, stage), rounded.logits(codes, h, m, stage))


def test_fixture_state_dict_layout(fixture_dir):
    lm = load_audiocraft_lm(fixture_dir / "state_dict.bin")
    assert (lm.cfg.dim, lm.cfg.num_layers, lm.cfg.num_heads, lm.cfg.text_dim) == (64, 2, 4, 768)
    assert len(lm.state_dict()) == 36
    assert lm.text_encoder_name == "t5-base"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_audiocraft_lm(tmp_path / "nope" / "state_dict.bin")
    with pytest.raises(CheckpointError, match="state_dict.bin"):
        load_audiocraft_lm(tmp_path)


def test_truncated_file(tmp_path):
    path = _export(tmp_path, small_lm())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_audiocraft_lm(path)


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "state_dict.bin"
    torch.save({"best_state": {}, "xp.cfg": "", "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled code"):
        load_audiocraft_lm(path)
    raw = tmp_path / "raw.bin"
    buf = io.BytesIO()
    pickle.dump(Payload(), buf)
    raw.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        load_audiocraft_lm(raw)


def _rewrite(path, edit):
    pkg = torch.load(path, weights_only=True)
    edit(pkg)
    torch.save(pkg, path)


def test_wrong_shape_and_missing_and_extra_keys_are_named(tmp_path):
    path = _export(tmp_path, small_lm())
    key = "transformer.layers.1.linear1.weight"
    _rewrite(path, lambda p: p["best_state"].__setitem__(key, torch.zeros(7, 32)))
    with pytest.raises(CheckpointError, match=r"layers\.1\.linear1\.weight: checkpoint \[7, 32\]"):
        load_audiocraft_lm(path)
    path = _export(tmp_path, small_lm(), name="b")
    _rewrite(path, lambda p: p["best_state"].pop("linears.3.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 key.*linears\.3\.weight"):
        load_audiocraft_lm(path)
    path = _export(tmp_path, small_lm(), name="c")
    _rewrite(path, lambda p: p["best_state"].__setitem__("transformer.layers.0.extra.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected 1 key.*extra"):
        load_audiocraft_lm(path)


def test_not_an_export_and_unsupported_options(tmp_path):
    path = tmp_path / "x.bin"
    torch.save({"weights": {}}, path)
    with pytest.raises(CheckpointError, match="best_state"):
        load_audiocraft_lm(path)
    path = _export(tmp_path, small_lm(), name="d")

    def causal(p):
        xp = yaml.safe_load(p["xp.cfg"])
        xp["transformer_lm"]["causal"] = True
        p["xp.cfg"] = yaml.safe_dump(xp)
    _rewrite(path, causal)
    with pytest.raises(UnsupportedConfig, match="causal"):
        load_audiocraft_lm(path)


def test_from_pretrained_local_dir_and_offline_hub_cache(tmp_path, monkeypatch):
    src = _export(tmp_path, small_lm(seed=4), name="local")
    assert load_pretrained_lm(str(src.parent)).cfg.dim == 32
    # A hub cache laid out as huggingface_hub writes it, read with no network.
    cache = tmp_path / "hub"
    snap = cache / "models--facebook--magnet-small-10secs" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    shutil.copy(src, snap / "state_dict.bin")
    (cache / "models--facebook--magnet-small-10secs" / "refs").mkdir()
    (cache / "models--facebook--magnet-small-10secs" / "refs" / "main").write_text("a" * 40)
    lm = load_pretrained_lm("facebook/magnet-small-10secs", cache_dir=str(cache), local_files_only=True)
    assert lm.cfg.dim == 32
    with pytest.raises(CheckpointError, match="offline|local hub cache"):
        resolve_file("facebook/magnet-medium-10secs", "state_dict.bin", cache_dir=str(cache), local_files_only=True)
