"""Codec: transformers EncodecModel behind audiocraft's checkpoint formats and calling conventions."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import yaml

from magnet_rt.audio import resample
from magnet_rt.codec import Codec
from magnet_rt.devices import codec_device, codec_half
from magnet_rt.encodec_checkpoints import (
    CHECKPOINT_NAME,
    audiocraft_to_transformers_key,
    audiocraft_xp_cfg,
    encodec_config_from_xp_cfg,
    load_audiocraft_codec,
    random_encodec_config,
    random_encodec_model,
    write_audiocraft_compression_checkpoint,
    write_pointer_checkpoint,
)
from magnet_rt.errors import CheckpointError, InvalidAudio, InvalidParams, UnsupportedConfig

SR, HOP = 32000, 640
N = int(SR * 1.37) + 17  # 43857 samples, not a multiple of the hop -> ceil gives 69 frames


@pytest.fixture(scope="module")
def model():
    return random_encodec_model(random_encodec_config(lstm_layers=2), seed=0)


@pytest.fixture(scope="module")
def codec(model):
    return Codec(model)


@pytest.fixture(scope="module")
def wave():
    return (np.random.default_rng(0).standard_normal((2, 1, N)) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ac")
    write_audiocraft_compression_checkpoint(d, model, audiocraft_xp_cfg(model.config))
    return d / CHECKPOINT_NAME


def test_round_trip_shapes_and_determinism(codec, wave):
    assert (codec.sample_rate, codec.channels, codec.frame_rate, codec.hop_length) == (SR, 1, 50, HOP)
    assert (codec.n_q, codec.card, codec.bandwidth) == (4, 2048, 2.2)
    codes = codec.encode(wave, SR)
    assert codes.dtype == torch.int64 and codes.shape == (2, 4, math.ceil(N / HOP)) == (2, 4, 69)
    assert 0 <= codes.min() and codes.max() < 2048
    assert min(len(torch.unique(codes[:, k])) for k in range(4)) > 50  # varied codes, not a collapsed book
    assert torch.equal(codes, codec.encode(wave, SR))
    audio = codec.decode(codes)
    assert audio.dtype == torch.float32 and audio.shape == (2, 1, 69 * HOP)  # untrimmed, like audiocraft
    assert torch.isfinite(audio).all() and audio.abs().max() > 0.01
    assert torch.equal(audio, codec.decode(codes))


def test_encode_layouts_and_downmix(codec, wave):
    mono = wave[0, 0]
    ref = codec.encode(mono[None, None], SR)
    assert torch.equal(codec.encode(mono, SR), ref)  # [N]
    assert torch.equal(codec.encode(mono[None], SR), ref)  # [C, N]
    assert torch.equal(codec.encode(torch.from_numpy(mono), SR), ref)  # torch input
    stereo = np.stack([mono + 0.1, mono - 0.1])  # mean == mono
    assert torch.equal(codec.encode(stereo, SR), ref)
    pcm = (np.clip(mono, -1, 1) * 32767).astype(np.int16)  # int16 PCM is scaled to [-1, 1)
    assert torch.equal(codec.encode(pcm, SR), codec.encode(pcm.astype(np.float32) / 32768, SR))


@pytest.mark.parametrize("bad", [np.zeros(0), np.zeros((1, 0)), np.full(1000, np.nan), np.full(1000, np.inf),
                                 np.zeros((1, 1, 1, 100))])
def test_encode_rejects_bad_audio(codec, bad):
    with pytest.raises(InvalidAudio):
        codec.encode(bad, SR)


@pytest.mark.parametrize("sr", [0, -16000, 44100.5, None])
def test_encode_rejects_bad_sample_rate(codec, sr):
    with pytest.raises(InvalidAudio):
        codec.encode(np.zeros(1000, np.float32), sr)


def test_resampling_441k_keeps_duration(codec):
    t = np.arange(44100) / 44100
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1.000 s at 44.1 kHz
    y = resample(x, 44100, 32000)
    assert y.shape == (32000,)  # exact ratio 320/441
    codes = codec.encode(x, 44100)
    assert codes.shape == (1, 4, 50)  # 1 s at 50 Hz
    assert torch.equal(codes, codec.encode(y, SR))


def test_partial_codebook_decode(codec, model, wave):
    codes = codec.encode(wave, SR)
    full, first = codec.decode(codes), codec.decode(codes[:, :1])
    assert first.shape == full.shape
    assert (full - first).abs().max() > 1e-3
    with torch.no_grad():  # the preview is the decoder applied to codebook 0's embedding alone
        emb = model.quantizer.layers[0].decode(codes[:, 0])
        assert torch.allclose(first, model.decoder(emb), atol=1e-6)
    assert (codec.decode(codes[:, :3]) - full).abs().max() > 0


@pytest.mark.parametrize("bad", [torch.zeros(1, 5, 10, dtype=torch.long), torch.zeros(1, 0, 10, dtype=torch.long),
                                 torch.full((1, 4, 10), 2048), torch.full((1, 4, 10), -1), torch.zeros(4, 10),
                                 torch.zeros(1, 4, 10, dtype=torch.float32)])
def test_decode_rejects_bad_codes(codec, bad):
    with pytest.raises(InvalidParams):
        codec.decode(bad)


def test_audiocraft_export_layout(exported, model):
    pkg = torch.load(exported, weights_only=True)
    assert set(pkg) == {"best_state", "xp.cfg", "version", "exported"}
    state = pkg["best_state"]
    # 28 convs x (g, v, bias) + 2 LSTMs x 8 (2 layers) + 4 codebooks x 4 = 116, as the released files
    assert len(state) == 116 == len(model.state_dict())
    for key, shape in [("encoder.model.0.conv.conv.weight_g", (4, 1, 1)),
                       ("encoder.model.0.conv.conv.weight_v", (4, 1, 7)),
                       ("encoder.model.1.block.3.conv.conv.bias", (4,)),
                       ("decoder.model.3.convtr.convtr.weight_g", (64, 1, 1)),  # [in, 1, 1] for convtr
                       ("decoder.model.3.convtr.convtr.weight_v", (64, 32, 16)),
                       ("encoder.model.13.lstm.weight_hh_l1", (256, 64)),
                       ("quantizer.vq.layers.3._codebook.embed_avg", (2048, 16)),
                       ("quantizer.vq.layers.0._codebook.inited", (1,))]:
        assert tuple(state[key].shape) == shape, key
    xp = pkg["xp.cfg"]
    assert isinstance(xp, str)
    for raw in ("sample_rate: ${sample_rate}", "channels: ${channels}", "causal: ${encodec.causal}"):
        assert raw in xp  # unresolved, as the real files keep them
    assert audiocraft_to_transformers_key("decoder.model.12.convtr.convtr.weight_v") == \
        "decoder.layers.12.conv.parametrizations.weight.original1"
    assert audiocraft_to_transformers_key("quantizer.vq.layers.2._codebook.embed") == \
        "quantizer.layers.2.codebook.embed"


def test_from_audiocraft_is_bit_identical(exported, model, codec, wave):
    loaded = load_audiocraft_codec(exported.parent)  # a folder holding the file works too
    assert loaded.model.config.pad_mode == "constant" and not loaded.model.config.use_causal_conv
    ref_codes, codes = codec.encode(wave, SR), loaded.encode(wave, SR)
    assert torch.equal(ref_codes, codes)
    assert (loaded.decode(codes) - codec.decode(ref_codes)).abs().max().item() == 0.0
    ref_sd, sd = model.state_dict(), loaded.model.state_dict()
    assert ref_sd.keys() == sd.keys() and all(torch.equal(ref_sd[k], sd[k]) for k in sd)


def test_export_from_state_dict_matches_export_from_model(exported, model, tmp_path):
    path = write_audiocraft_compression_checkpoint(tmp_path / "s.bin", model.state_dict(),
                                                   audiocraft_xp_cfg(model.config))
    a = torch.load(exported, weights_only=True)["best_state"]
    b = torch.load(path, weights_only=True)["best_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pad_mode_comes_from_the_file(model, tmp_path, wave):
    reflect_xp = audiocraft_xp_cfg(model.config, {"seanet.pad_mode": "reflect"})
    path = write_audiocraft_compression_checkpoint(tmp_path / "r.bin", model, reflect_xp)
    constant = Codec(model)
    reflect = load_audiocraft_codec(path)
    assert reflect.model.config.pad_mode == "reflect"
    assert all(m.pad_mode == "reflect" for m in reflect.model.modules() if hasattr(m, "pad_mode"))
    c_codes, r_codes = constant.encode(wave, SR), reflect.encode(wave, SR)
    agree = (c_codes == r_codes).float().mean().item()
    assert agree < 0.99  # same weights, padding differs at the edges (and beyond, via the LSTM)
    assert (constant.decode(c_codes) - reflect.decode(c_codes)).abs().max() > 1e-3


def test_pointer_form_loads_save_pretrained_dir(model, codec, wave, tmp_path):
    model.save_pretrained(tmp_path / "encodec_local")
    absolute = write_pointer_checkpoint(tmp_path / "abs" / CHECKPOINT_NAME, str(tmp_path / "encodec_local"))
    relative = write_pointer_checkpoint(tmp_path, "encodec_local")  # a folder beside the file is tried first
    assert torch.load(relative, weights_only=True)["pretrained"] == "encodec_local"
    for path in (absolute, relative):
        loaded = load_audiocraft_codec(path)
        assert torch.equal(loaded.encode(wave, SR), codec.encode(wave, SR))
    via_pretrained = Codec.from_pretrained(tmp_path / "encodec_local")
    codes = codec.encode(wave, SR)
    assert (via_pretrained.decode(codes) - codec.decode(codes)).abs().max().item() == 0.0


def test_pointer_to_unknown_model_is_a_checkpoint_error(tmp_path):
    path = write_pointer_checkpoint(tmp_path, str(tmp_path / "no" / "such" / "encodec"))
    with pytest.raises(CheckpointError):
        load_audiocraft_codec(path)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling would create a directory
        return (os.mkdir, (self.marker,))


def test_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"best_state": {}, "xp.cfg": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="code") as err:
        load_audiocraft_codec(path)
    assert "refused" in str(err.value) and "mkdir" in str(err.value)
    assert not marker.exists()


def test_truncated_empty_and_missing_files(exported, tmp_path):
    data = exported.read_bytes()
    for name, blob in [("half.bin", data[: len(data) // 2]), ("empty.bin", b""), ("junk.bin", b"not a ckpt")]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match=name):
            load_audiocraft_codec(path)
    with pytest.raises(CheckpointError, match="no such"):
        load_audiocraft_codec(tmp_path / "absent.bin")


def _rewrite(src, dst, edit):
    pkg = torch.load(src, weights_only=True)
    edit(pkg)
    torch.save(pkg, dst)
    return dst


def test_wrong_shape_missing_and_unexpected_keys_are_named(exported, tmp_path):
    key = "decoder.model.15.conv.conv.weight_v"

    def reshape(pkg):
        pkg["best_state"][key] = torch.zeros(1, 8, 7)

    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as err:
        load_audiocraft_codec(_rewrite(exported, tmp_path / "shape.bin", reshape))
    assert "[1, 8, 7]" in str(err.value) and "[1, 4, 7]" in str(err.value)

    def drop(pkg):
        del pkg["best_state"]["quantizer.vq.layers.1._codebook.embed"]

    with pytest.raises(CheckpointError, match=r"missing \['quantizer\.vq\.layers\.1\._codebook\.embed'\]"):
        load_audiocraft_codec(_rewrite(exported, tmp_path / "drop.bin", drop))

    def extra(pkg):
        pkg["best_state"]["encoder.model.1.shortcut.conv.conv.weight_v"] = torch.zeros(4, 4, 1)

    with pytest.raises(CheckpointError, match="unexpected.*shortcut"):
        load_audiocraft_codec(_rewrite(exported, tmp_path / "extra.bin", extra))


@pytest.mark.parametrize("option,value", [
    ("seanet.lstm", 0), ("seanet.disable_norm_outer_blocks", 1), ("seanet.norm", "none"),
    ("seanet.activation", "LeakyReLU"), ("seanet.decoder.final_activation", "Tanh"),
    ("seanet.encoder.n_filters", 8), ("compression_model", "dac"), ("encodec.quantizer", "no_quant"),
    ("rvq.bins", 1000), ("seanet.decoder.trim_right_ratio", 0.5),
])
def test_unsupported_options_are_named(model, tmp_path, option, value):
    path = write_audiocraft_compression_checkpoint(tmp_path / "u.bin", model,
                                                   audiocraft_xp_cfg(model.config, {option: value}))
    with pytest.raises(UnsupportedConfig, match=option.replace(".", r"\.")):
        load_audiocraft_codec(path)
    assert issubclass(UnsupportedConfig, CheckpointError)


def test_xp_cfg_interpolations():
    xp = yaml.safe_load(audiocraft_xp_cfg(random_encodec_config(sample_rate=16000, ratios=(8, 5, 4, 2))))
    assert xp["encodec"]["sample_rate"] == "${sample_rate}"
    cfg = encodec_config_from_xp_cfg(xp)  # the unrelated ${oc.env:USER} under dora does no harm
    assert (cfg.sampling_rate, cfg.audio_channels, cfg.use_causal_conv, cfg.hop_length) == (16000, 1, False, 320)
    xp["encodec"]["causal"] = "${flags.causal}"  # dotted path, nested interpolation
    xp["flags"] = {"causal": True}
    assert encodec_config_from_xp_cfg(xp).use_causal_conv is True
    del xp["seanet"]["pad_mode"], xp["seanet"]["n_residual_layers"]  # absent -> audiocraft's SEANet defaults
    cfg = encodec_config_from_xp_cfg(xp)
    assert (cfg.pad_mode, cfg.num_residual_layers) == ("reflect", 3)
    xp["sample_rate"] = "${encodec.sample_rate}"  # cycle
    with pytest.raises(CheckpointError, match="cycle"):
        encodec_config_from_xp_cfg(xp)


@pytest.mark.parametrize("card", [1024, 2048])
def test_bandwidth_gives_exactly_n_q_codebooks(card):
    for n_q in range(1, 9):
        cfg = random_encodec_config(card=card, n_q=n_q)
        assert cfg.num_quantizers == n_q
    assert random_encodec_config().target_bandwidths == [2.2]


def test_codec_device_rule(model):
    assert codec_device("mps") == torch.device("cpu")
    assert codec_device(torch.device("mps", 0)) == torch.device("cpu")
    assert codec_device("cuda:1") == torch.device("cuda", 1)
    assert codec_device("cpu") == torch.device("cpu")
    assert codec_half(torch.device("cuda")) and not codec_half(codec_device("mps")) and not codec_half("cpu")


def test_fp16_decode_stays_close_and_retries_in_fp32_on_overflow(codec, wave):
    """The half decoder (default on CUDA; any device when asked) against fp32, and its overflow guard:
    codebook vectors beyond fp16's range decode as inf in half, so the decode is redone in fp32."""
    codes = codec.encode(wave, SR)
    half = Codec(random_encodec_model(random_encodec_config(lstm_layers=2), seed=0), half=True)
    ref, out = codec.decode(codes), half.decode(codes)
    snr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
    assert out.dtype == torch.float32 and half.half_fallbacks == 0 and snr > 40, float(snr)
    big32, big16 = (Codec(random_encodec_model(random_encodec_config(lstm_layers=2), seed=0), half=h)
                    for h in (False, True))
    for c in (big32, big16):
        for layer in c.model.quantizer.layers:
            layer.codebook.embed.mul_(1e6)
    want = big32.decode(codes)
    assert torch.isfinite(want).all()
    assert torch.equal(big16.decode(codes), want) and big16.half_fallbacks == 1
