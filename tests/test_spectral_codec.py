"""The spectral codec (magnet_rt/spectral_codec.py): the Codec contract, Griffin-Lim keeps pitch without a
frame buzz, PCA initialisation, batch independence, bundle round trip and the trainer's CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from magnet_rt.bundle import BUNDLE_VERSION, load_codec, read_bundle_config
from magnet_rt.errors import CheckpointError, InvalidParams
from magnet_rt.spectral_codec import SpectralCodec, SpectralCodecConfig, SpectralCodecModel

SR = 32000
SMALL = SpectralCodecConfig(hidden=32, latent_dim=16, layers=1, codebook_size=64, griffin_lim_iters=16)


def tone(freqs: list[float], seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (sum(np.sin(2 * np.pi * f * t) for f in freqs) * 0.3 / len(freqs)).astype(np.float32)


def frame_buzz(x: np.ndarray, sr: int = SR) -> tuple[float, float]:
    """(autocorrelation at one 20 ms frame, share of 200 Hz-8 kHz energy within 2 Hz of a multiple of 50 Hz)."""
    m = x.astype(np.float64) - x.mean()
    lag = sr // 50
    corr = float(m[:-lag] @ m[lag:] / np.sqrt((m[:-lag] @ m[:-lag]) * (m[lag:] @ m[lag:])))
    p = np.abs(np.fft.rfft(m * np.hanning(len(m)))) ** 2
    f = np.fft.rfftfreq(len(m), 1 / sr)
    band, comb = (f > 200) & (f < 8000), np.abs(f - 50 * np.round(f / 50)) < 2
    return corr, float(p[band & comb].sum() / p[band].sum())


def codec(seed: int = 0) -> SpectralCodec:
    torch.manual_seed(seed)
    model = SpectralCodecModel(SMALL)
    model.pca_init(model.features(torch.from_numpy(np.stack([tone([220, 330]), tone([440]), tone([110, 587])]))))
    for layer in model.quantizer.layers:  # codebooks: latents of the same tones, so codes are meaningful
        layer.codebook.embed.normal_(0, 1.0)
    return SpectralCodec(model)


def test_contract_shapes_rates_and_previews():
    c = codec()
    assert (c.sample_rate, c.channels, c.hop_length, c.frame_rate, c.card, c.n_q) == (SR, 1, 640, 50, 64, 4)
    x = tone([440], 0.5) + 0.01
    codes = c.encode(np.stack([x, x[::-1].copy()])[:, None], SR)
    assert codes.shape == (2, 4, 25) and codes.dtype == torch.long  # ceil(16000 / 640)
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    audio = c.decode(codes)
    assert audio.shape == (2, 1, 25 * 640) and audio.dtype == torch.float32
    assert c.decode(codes[:, :1]).shape == (2, 1, 25 * 640)  # first codebook only: a preview
    assert c.encode(tone([440], 0.01), SR).shape[-1] == 1  # shorter than a frame: one frame
    assert c.encode(tone([440], 0.5, 44100), 44100).shape[-1] == 25  # resampled to 32 kHz first


def test_bad_codes_are_typed_errors():
    c = codec()
    for bad in (torch.zeros(4, 10, dtype=torch.long), torch.zeros(1, 5, 10, dtype=torch.long),
                torch.full((1, 4, 10), 64), torch.full((1, 4, 10), -1), torch.zeros(1, 4, 10)):
        with pytest.raises(InvalidParams):
            c.decode(bad)


def test_decode_is_deterministic_and_batch_independent():
    c = codec()
    codes = torch.randint(64, (3, 4, 20), generator=torch.Generator().manual_seed(1))
    batch = c.decode(codes)
    assert torch.equal(batch, c.decode(codes))
    for b in range(3):
        assert torch.allclose(c.decode(codes[b:b + 1])[0], batch[b], atol=1e-6)


@pytest.mark.parametrize("freqs", [[220.0], [261.6, 329.6, 392.0]])
def test_griffin_lim_keeps_pitch_without_a_frame_buzz(freqs):
    """The exact magnitudes through Griffin-Lim: the notes come back where they were, and nothing lands on
    the 50 Hz frame-rate comb (the defect of the waveform codec this one replaced)."""
    model = SpectralCodecModel(SpectralCodecConfig(griffin_lim_iters=32))
    x = tone(freqs, 2.0)
    y = model.synthesize(model.features(torch.from_numpy(x)[None]))[0].numpy()
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    f = np.fft.rfftfreq(len(y), 1 / SR)
    peaks = sorted(f[np.argsort(spectrum)[-len(freqs) * 40:]])
    for want in freqs:  # energy sits within 3 Hz of each note
        assert min(abs(p - want) for p in peaks) < 3.0
    corr, comb = frame_buzz(y[SR // 10:-SR // 10])
    src_corr, _ = frame_buzz(x[SR // 10:-SR // 10])
    assert abs(corr - src_corr) < 0.2  # same 20 ms correlation as the source itself (pure tones are periodic)
    assert comb < 0.3 or min(abs(fr - 50 * round(fr / 50)) for fr in freqs) < 2  # no new comb energy
    near = np.zeros_like(f, dtype=bool)
    for want in freqs:
        near |= np.abs(f - want) < 15.0  # a 12.5 Hz bin either side
    assert (spectrum[near] ** 2).sum() / (spectrum ** 2).sum() > 0.8  # the energy is in the notes


def test_pca_init_reconstructs_before_any_training():
    torch.manual_seed(0)
    model = SpectralCodecModel(SMALL)
    x = torch.from_numpy(np.stack([tone([220, 330]), tone([440]), tone([110, 587])]))
    feats = model.features(x)
    with torch.no_grad():
        before = (model.decoder(model.encoder(feats)) - feats).abs().mean()
        model.pca_init(feats)
        after = (model.decoder(model.encoder(feats)) - feats).abs().mean()
    assert after < 0.2 * before and after < 0.05


def test_bundle_round_trip_names_the_kind(tmp_path):
    from magnet_rt.train.codec import save_codec_folder

    c = codec()
    folder = save_codec_folder(c.model, tmp_path / "codec", {"x": 1}, {"step": 0})
    config = read_bundle_config(folder)
    assert config["codec"]["kind"] == "spectral" and config["version"] == BUNDLE_VERSION
    assert not (folder / "compression_state_dict.bin").exists()  # audiocraft's format holds EnCodec only
    loaded = load_codec(folder)
    assert isinstance(loaded, SpectralCodec)
    codes = c.encode(tone([330], 0.4), SR)
    assert torch.equal(loaded.encode(tone([330], 0.4), SR), codes)
    assert torch.equal(loaded.decode(codes), c.decode(codes))
    config["codec"]["kind"] = "vocoder"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown codec kind 'vocoder'"):
        load_codec(folder)


def test_trainer_cli_trains_resumes_and_scores(tmp_path):
    from magnet_rt.train import codec as trainer

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):  # a few notes; some names hash into the held-out set
        f = 110 * 2 ** (rng.integers(0, 24) / 12)
        sf.write(str(data / f"{i:03d}.wav"), tone([f, 1.5 * f], 1.0), SR, subtype="PCM_16")
    args = ["--kind", "spectral", "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "4",
            "--seconds", "0.5", "--hidden", "32", "--dimension", "16", "--layers", "1", "--eval-every", "4",
            "--eval-clips", "2", "--eval-seconds", "0.5", "--ckpt-every", "2", "--log-every", "1"]
    assert trainer.main([*args, "--steps", "4"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r and "logmag" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in steps)
    assert set(steps[0]) >= {"logmag", "sc", "commit"} and "mel" not in steps[0]
    assert any("eval" in r for r in log)
    assert trainer.main([*args, "--steps", "6"]) == 0  # resumes at 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "logmag" in r][-2:] == [5, 6]
    loaded = load_codec(tmp_path / "run" / "codec")
    assert isinstance(loaded, SpectralCodec) and loaded.model.config.hidden == 32
    assert bool(loaded.model.quantizer.layers[0].codebook.inited.item())
