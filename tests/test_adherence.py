"""The prompt-adherence classifier (train/adherence.py) on synthetic audio with known labels."""

import numpy as np
import torch

from magnet_rt.train.adherence import (
    TARGETS,
    accuracy,
    audio_features,
    chance,
    fit_classifier,
    frechet_distance,
    load_classifier,
    save_classifier,
    tempo_class,
)

SR = 32000


def clip(bpm: float, pitch: float, drums: bool, rng: np.random.Generator, seconds: float = 4.0) -> np.ndarray:
    """A tone at `pitch` re-struck on every beat, plus noise bursts (a 'drum') on every beat if `drums`."""
    t = np.arange(int(seconds * SR)) / SR
    beat = 60.0 / bpm
    phase = (t + rng.uniform(0, beat)) % beat
    env = np.exp(-phase * 6.0)
    x = 0.3 * env * np.sin(2 * np.pi * pitch * t)
    if drums:
        x += 0.3 * np.exp(-phase * 60.0) * rng.standard_normal(t.shape)
    return (x + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)


def dataset(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rows, audio = [], []
    for _ in range(n):
        r = {"style": rng.choice(["low", "high"]), "drums": bool(rng.integers(2)),
             "tempo": float(rng.choice([70, 150])), "lead": {"family": "sine"}}
        pitch = 220.0 if r["style"] == "low" else 1760.0
        audio.append(clip(r["tempo"], pitch, r["drums"], rng))
        rows.append(r)
    feats = audio_features(torch.from_numpy(np.stack(audio)))
    return feats, {k: [f(r) for r in rows] for k, f in TARGETS.items()}


def test_classifier_learns_style_drums_and_tempo_from_audio(tmp_path):
    train_x, train_y = dataset(48, 0)
    test_x, test_y = dataset(24, 1)
    clf = fit_classifier(train_x, train_y, epochs=300)
    acc = accuracy(clf.predict(test_x), test_y)
    assert acc["style"] >= 0.95 and acc["drums"] >= 0.9 and acc["tempo"] >= 0.9, acc
    base = chance(train_y, test_y)
    assert acc["mean"] > base["mean"] + 0.3 and base["lead"] == 1.0  # one lead family: chance is 1
    save_classifier(clf, tmp_path / "clf.safetensors")
    back = load_classifier(tmp_path / "clf.safetensors")
    assert back.classes == clf.classes
    assert torch.equal(back.embed(test_x), clf.embed(test_x))


def test_feature_shape_and_tempo_classes():
    x = torch.zeros(2, SR * 2)
    x[:, ::16000] = 1.0
    f = audio_features(x)
    assert f.shape == (2, 64 + 64 + 2 + 63) and torch.isfinite(f).all()
    assert [tempo_class(b) for b in (60, 89.9, 90, 124, 125, 170)] == ["slow", "slow", "medium", "medium", "fast",
                                                                        "fast"]


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    near, far = frechet_distance(a, a + 0.1), frechet_distance(a, a + 1.0)
    assert abs(near - 8 * 0.01) < 1e-6 and abs(far - 8.0) < 1e-6


def test_held_out_features_are_checked_against_the_bundles_codec(tmp_path):
    import pytest

    from magnet_rt.train.adherence import FEATURES, file_sha, held_out_features

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "codec.safetensors").write_bytes(b"codec A")
    held = torch.arange(6.0).view(2, 3)
    torch.save({"codec": file_sha(bundle / "codec.safetensors"), "held": held}, tmp_path / FEATURES)
    assert torch.equal(held_out_features(tmp_path, bundle), held)
    (bundle / "codec.safetensors").write_bytes(b"codec B")
    with pytest.raises(ValueError, match="another codec"):
        held_out_features(tmp_path, bundle)


def test_adherence_command_averages_seeds_and_caches_takes(tmp_path, monkeypatch):
    """`python -m magnet_rt.train.adherence` end to end on the shipped demo bundle and a small labelled
    folder: one take per held-out caption per seed, accuracies averaged over the seeds, takes cached per
    seed and decoding code (a second run generates nothing)."""
    import json

    import soundfile as sf

    from magnet_rt.registry import demo_dir
    from magnet_rt.train import adherence

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(10):
        bpm, drums = (70, 100, 140)[i % 3], i % 2 == 0
        sf.write(str(data / f"c{i}.wav"), clip(bpm, 220 * (1 + i % 4), drums, rng, seconds=2.0), SR)
        rows.append({"file": f"c{i}.wav", "caption": f"{'funk' if i % 2 else 'jazz'} at {bpm} bpm",
                     "style": "funk" if i % 2 else "jazz", "drums": drums, "tempo": bpm,
                     "lead": {"family": "piano" if i % 4 < 2 else "organ"}})
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "adh"
    argv = ["--data", str(data), "--bundle", str(demo_dir()), "--out", str(out), "--valid", "2",
            "--train-clips", "8", "--preset", "live", "--seeds", "5,6"]
    assert adherence.main(argv) == 0
    r = json.loads((out / "adherence.json").read_text())
    assert r["seeds"] == [5, 6] and set(r["generated_per_seed"]) == {"5", "6"}
    for label in TARGETS:
        per_seed = [r["generated_per_seed"][s][label] for s in ("5", "6")]
        assert r["generated"][label] == np.mean(per_seed)
    assert len(list(out.glob("generated-live-*-seed*-valid2-*.pt"))) == 2

    def no_generation(*a, **k):
        raise AssertionError("the cached takes should have been used")

    monkeypatch.setattr(adherence, "generated_features", no_generation)
    assert adherence.main(argv) == 0
    assert json.loads((out / "adherence.json").read_text())["generated"] == r["generated"]
