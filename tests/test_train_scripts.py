"""End to end on tiny sizes: codec training script -> LM training (from scratch, resume, fine-tune) ->
bundle + released-format export that load and generate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from magnet_rt.params import DecodeParams


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    t = np.arange(int(1.2 * 32000)) / 32000
    words = ["funk bass", "sad piano", "fast drums", "calm pad", "bright synth"]
    for i in range(10):
        x = 0.3 * np.sin(2 * np.pi * (110 * (i + 1)) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(str(d / f"clip{i}.wav"), x.astype(np.float32), 32000)
        (d / f"clip{i}.txt").write_text(f"{words[i % 5]} number {i}\n")
    (d / "uncaptioned.wav").write_bytes((d / "clip0.wav").read_bytes())
    return d


@pytest.fixture(scope="module")
def codec_dir(data_dir, tmp_path_factory):
    from magnet_rt.train import codec as codec_train

    out = tmp_path_factory.mktemp("codec")
    rc = codec_train.main(["--data", str(data_dir), "--out", str(out), "--steps", "3", "--batch-size", "2",
                           "--seconds", "0.5", "--filters", "4", "--dimension", "16", "--eval-every", "2",
                           "--ckpt-every", "2", "--eval-clips", "2", "--eval-seconds", "1", "--held-out-every", "3"])
    assert rc == 0
    return out


def test_codec_script_outputs_a_loadable_codec_with_metrics(codec_dir, data_dir):
    from magnet_rt.bundle import load_codec, read_bundle_config
    from magnet_rt.encodec_checkpoints import load_audiocraft_codec

    cfg = read_bundle_config(codec_dir / "codec")
    m = cfg["metrics"]
    assert m["step"] == 3 and np.isfinite(m["mel_distance"]) and np.isfinite(m["si_sdr"])
    assert len(m["codebook_usage"]) == 4
    codec = load_codec(codec_dir / "codec")
    assert (codec.sample_rate, codec.frame_rate, codec.n_q, codec.card) == (32000, 50, 4, 2048)
    x, _ = sf.read(str(data_dir / "clip0.wav"), dtype="float32")
    codes = codec.encode(x, 32000)
    assert codes.shape == (1, 4, 60)
    released = load_audiocraft_codec(codec_dir / "codec" / "compression_state_dict.bin")
    assert torch.equal(released.encode(x, 32000), codes)
    state = torch.load(codec_dir / "trainer.pt", weights_only=True)
    assert state["step"] == 3
    # the codebooks were trained (k-means init + EMA), not left at transformers' init
    assert bool(codec.model.quantizer.layers[0].codebook.inited.item())


def test_codec_trainer_reduces_reconstruction_loss():
    from magnet_rt.train.codec import CodecTrainer, build_model, demo_codec_config

    torch.manual_seed(0)
    tr = CodecTrainer(build_model(demo_codec_config(4, 16, 1)), lr=3e-3)
    t = torch.arange(4000) / 32000
    x = (0.3 * torch.sin(2 * np.pi * torch.tensor([220.0, 330.0])[:, None] * t))[:, None]
    first = tr.train_step(x)["loss"]
    for _ in range(15):
        last = tr.train_step(x)["loss"]
    assert last < 0.8 * first, (first, last)


def test_lm_scratch_resume_export_and_finetune(data_dir, codec_dir, tmp_path):
    from magnet_rt.bundle import load_bundle, read_bundle_config
    from magnet_rt.checkpoints import load_audiocraft_lm
    from magnet_rt.conditioning import build_random_t5
    from magnet_rt.train import cli

    te = build_random_t5(tmp_path / "t5", d_model=16)
    run = tmp_path / "run"
    common = ["--data", str(data_dir), "--batch-size", "2", "--valid", "2", "--ckpt-every", "2", "--eval-every", "2",
              "--log-every", "1", "--device", "cpu"]
    scratch = common + ["--out", str(run), "--codec", str(codec_dir / "codec"), "--text-encoder", str(te),
                        "--dim", "32", "--layers", "1", "--heads", "2", "--segment", "1.0"]
    assert cli.main(scratch + ["--steps", "3"]) == 0
    assert cli.main(scratch + ["--steps", "5"]) == 0  # resumes from OUT/trainer.pt
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "step" in r and "eval" not in r] == [1, 2, 3, 4, 5]
    assert any("eval" in r for r in rows)
    assert torch.load(run / "trainer.pt", weights_only=True)["step"] == 5
    cfg = read_bundle_config(run / "bundle")
    assert cfg["provenance"]["step"] == 5 and cfg["lm"]["dim"] == 32 and "loss" in cfg["metrics"]
    pipe = load_bundle(run / "bundle", device="cpu")
    res = pipe.generate("funk bass", duration_s=0.5, params=DecodeParams(decoding_steps=(2, 1, 1, 1)), seed=1)
    assert res.codes.shape == (1, 4, 25) and np.isfinite(res.audio).all()
    lm = load_audiocraft_lm(run / "export" / "state_dict.bin")
    assert lm.cfg == pipe.lm.cfg
    # fine-tune the trained bundle (the --init path also takes released folders and registry names)
    ft = tmp_path / "ft"
    assert cli.main(common + ["--out", str(ft), "--init", str(run / "bundle"), "--steps", "2", "--lr", "1e-4"]) == 0
    assert read_bundle_config(ft / "bundle")["provenance"]["init"] == str(run / "bundle")


def test_cli_errors_are_reported(tmp_path, capsys):
    from magnet_rt.train import cli

    assert cli.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--init",
                     str(tmp_path / "nope")]) == 2
    assert "error" in capsys.readouterr().err


def test_demo_script_defaults():
    from magnet_rt.train.cli import build_parser
    from magnet_rt.train.magnet import DEMO_DEFAULTS

    args = build_parser(defaults=DEMO_DEFAULTS).parse_args(["--data", "d", "--out", "o", "--codec", "c"])
    assert (args.dim, args.layers, args.heads, args.text_encoder, args.segment) == (256, 6, 4, "minilm", 10.0)


def test_decoder_only_finetune_keeps_tokens_and_publishes_with_the_lm(data_dir, codec_dir, tmp_path):
    """The demo recipe: the LM trains on frozen tokens while the codec's decoder keeps learning; the shipped
    bundle pairs the LM with that decoder, and refuses a codec whose tokens differ."""
    from magnet_rt.bundle import load_bundle, load_codec, read_bundle_config
    from magnet_rt.conditioning import build_random_t5
    from magnet_rt.errors import CheckpointError
    from magnet_rt.train import cli
    from magnet_rt.train import codec as codec_train
    from magnet_rt.train.data import codec_fingerprint
    from magnet_rt.train.publish import publish

    dec = tmp_path / "codec-dec"
    rc = codec_train.main(["--data", str(data_dir), "--out", str(dec), "--init", str(codec_dir / "codec"),
                           "--decoder-only", "--steps", "2", "--batch-size", "2", "--seconds", "0.5", "--filters", "4",
                           "--dimension", "16", "--lr", "1e-2", "--eval-every", "2", "--eval-clips", "2",
                           "--eval-seconds", "1", "--held-out-every", "3"])
    assert rc == 0
    before, after = load_codec(codec_dir / "codec"), load_codec(dec / "codec")
    a, b = before.model.state_dict(), after.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder.", "quantizer.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert codec_fingerprint(before) == codec_fingerprint(after)
    assert read_bundle_config(dec / "codec")["provenance"]["decoder_only"] is True
    # --eval-only scores the folder's weights now and records that in its config
    assert codec_train.main(["--data", str(data_dir), "--out", str(dec), "--eval-only", "--eval-clips", "2",
                             "--eval-seconds", "1", "--held-out-every", "3"]) == 0
    m = read_bundle_config(dec / "codec")["metrics"]
    assert m["step"] == 2 and m["clips"] == 2 and np.isfinite(m["mel_distance"])
    # resuming a decoder-only run with a full-codec trainer is refused, not silently mixed
    assert codec_train.main(["--data", str(data_dir), "--out", str(dec), "--steps", "3", "--filters", "4",
                             "--dimension", "16"]) == 2

    run = tmp_path / "lm"
    te = build_random_t5(tmp_path / "t5", d_model=16)
    assert cli.main(["--data", str(data_dir), "--out", str(run), "--codec", str(codec_dir / "codec"), "--text-encoder",
                     str(te), "--dim", "32", "--layers", "1", "--heads", "2", "--segment", "1.0", "--steps", "1",
                     "--batch-size", "2", "--valid", "2", "--device", "cpu"]) == 0
    out = publish(run / "bundle", dec / "codec", tmp_path / "demo", {"adherence": {"mean": 0.5}})
    pipe = load_bundle(out, device="cpu")
    assert all(torch.equal(v, b[k]) for k, v in pipe.codec.model.state_dict().items())
    cfg = read_bundle_config(out)
    assert cfg["name"] == "demo" and cfg["metrics"]["adherence"] == {"mean": 0.5}
    assert cfg["provenance"]["codec"]["decoder_only"] is True
    # a later LM published with the shipped bundle as its codec's source keeps that codec's metrics, and a
    # --decoding of its own
    again = publish(run / "bundle", out, tmp_path / "demo2", decoding={"defaults": {"higher_cfg_coef": 3}})
    cfg2 = read_bundle_config(again)
    assert cfg2["metrics"]["codec"] == cfg["metrics"]["codec"] and cfg2["provenance"]["codec"]["decoder_only"]
    assert load_bundle(again, device="cpu").decoding.defaults == {"higher_cfg_coef": 3}
    other = tmp_path / "other"
    assert codec_train.main(["--data", str(data_dir), "--out", str(other), "--steps", "1", "--batch-size", "2",
                             "--seconds", "0.5", "--filters", "4", "--dimension", "16", "--seed", "5",
                             "--eval-clips", "2", "--eval-seconds", "1", "--held-out-every", "3"]) == 0
    with pytest.raises(CheckpointError, match="differ"):
        publish(run / "bundle", other / "codec", tmp_path / "bad")


def test_parallel_encode_equals_serial_and_checks_the_codec(data_dir, codec_dir, tmp_path):
    from magnet_rt.bundle import load_codec
    from magnet_rt.train.data import encode_folder

    codec = load_codec(codec_dir / "codec")
    serial = encode_folder(codec, data_dir, cache=tmp_path / "a.pt")
    parallel = encode_folder(codec, data_dir, cache=tmp_path / "b.pt", workers=2, codec_path=codec_dir / "codec")
    assert serial.files == parallel.files and serial.captions == parallel.captions and len(serial) == 10
    assert all(torch.equal(a, b) for a, b in zip(serial.codes, parallel.codes, strict=True))
    with pytest.raises(ValueError, match="codec_path"):
        encode_folder(codec, data_dir, cache=tmp_path / "c.pt", workers=2)


def test_recipe_commands_are_valid_invocations_of_each_stage(monkeypatch, capsys):
    """Every command of the one-command recipe parses with its module's own argument parser."""
    import argparse
    import importlib
    from types import SimpleNamespace

    from magnet_rt.train import recipe

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    todo = recipe.stages(Path("w"), Path("pub"), SimpleNamespace(codec_steps=10, lm_steps=5, decoder_steps=7, clips=20,
                                                                 threads=2))
    assert [n for n, _ in todo] == ["data", "codec", "lm+decoder", "adherence", "publish"]
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for _, cmds in todo:
        for cmd in cmds:
            assert cmd[1] == "-m"
            module = importlib.import_module(cmd[2])
            with pytest.raises(Parsed):
                module.main(cmd[3:])
    monkeypatch.undo()
    assert recipe.main(["--work", "w", "--dry-run", "--from-stage", "adherence"]) == 0
    out = capsys.readouterr().out
    assert "== adherence" in out and "== publish" in out and "== codec" not in out
    assert "python -m magnet_rt.train.publish --lm w/runs/lm/bundle" in out
