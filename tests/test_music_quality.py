"""The outside ear (benchmarks/music_quality.py): its measures tell a frame buzz from music, and a small run
judges the shipped default model's codec and takes against FluidSynth clips (librosa, basic-pitch, mir_eval)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sigint_default

from benchmarks import music_quality as mq

ROOT = Path(__file__).resolve().parents[1]
SR = 32000


def test_buzz_measures_tell_a_frame_buzz_from_notes():
    t = np.arange(3 * SR) / SR
    buzz = np.zeros(3 * SR)
    buzz[:: SR // 50] = 1.0  # one click per 20 ms codec frame: the old demo codec's signature
    buzz = np.convolve(buzz, np.hanning(64), mode="same")
    rng = np.random.default_rng(0)
    notes = sum(np.sin(2 * np.pi * f * t) * (t % 0.5 < 0.3) for f in (261.6, 329.6, 392.0))
    notes = notes + 0.01 * rng.standard_normal(len(t))
    b, n = mq.buzz(buzz, SR), mq.buzz(notes, SR)
    assert b["corr_20ms"] > 0.9 and b["comb_50hz"] > 0.8
    assert n["corr_20ms"] < 0.5 and n["comb_50hz"] < 0.25


def test_a_held_chord_near_50_hz_multiples_reads_high_on_the_autocorrelation_only(tmp_path):
    """Why a take can leave the training range on the 20 ms autocorrelation with no buzz: FluidSynth's own
    held G3+D4 (196 and 294 Hz, near 4 and 6 x 49 Hz) reads above the training clips' 0.35, with no comb."""
    from benchmarks.held_chords import held_chord

    organ = mq.buzz(held_chord((55, 62), 16, 4.0, tmp_path), SR)
    assert organ["corr_20ms"] > 0.45 and organ["comb_50hz"] < 0.01
    fifth_off_grid = mq.buzz(held_chord((57, 64), 16, 4.0, tmp_path), SR)  # A3+E4: 220 and 330 Hz
    assert fifth_off_grid["corr_20ms"] < 0.1


def test_key_and_tempo_helpers():
    t = np.arange(6 * SR) / SR
    a_minor = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.6, 329.6)) / 3  # A C E
    assert mq.estimate_key(a_minor.astype(np.float32), SR) == ("A", "minor")
    # how a wrong estimate relates to the caption's key (mir_eval's MIREX weights)
    relations = {truth: mq.key_measures(a_minor.astype(np.float32), SR, truth)["key_relation"]
                 for truth in (("A", "minor"), ("D", "minor"), ("C", "major"), ("A", "major"), ("F#", "major"))}
    assert relations == {("A", "minor"): "same", ("D", "minor"): "fifth", ("C", "major"): "relative",
                         ("A", "major"): "parallel", ("F#", "major"): "other"}
    chroma = mq.mean_chroma(a_minor, SR)
    on_a, on_d = mq.tonic_shares(chroma, "A"), mq.tonic_shares(chroma, "D")
    assert on_a["tonic_share"] > 0.2 and on_a["fifth_share"] > 0.2  # A and E both sound
    assert on_d["tonic_share"] < 0.1 and on_d["fifth_share"] > 0.2  # D does not; its fifth (A) does
    assert mq.tempo_ok(121.0, 120) and mq.tempo_ok(60.5, 120) and mq.tempo_ok(236.0, 120)
    assert not mq.tempo_ok(100.0, 120)
    clicks = np.zeros(8 * SR, np.float32)
    clicks[:: SR // 2] = 1.0  # 120 bpm, a click on every beat from sample 0
    on_beat = mq.beat_phase(clicks, SR, 120.0)
    late = mq.beat_phase(np.roll(clicks, SR // 4), SR, 120.0)  # an eighth late: the opposite phase
    assert abs(on_beat) > 0.5 and abs(late) > 0.5 and abs(on_beat + late) < 0.3 * abs(on_beat)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from magnet_rt.train import datagen

    return datagen.generate(tmp_path_factory.mktemp("synth") / "data", n=12, seed=3, seconds=4.0,
                            keep_midi=False)  # 10..11: no drums


@pytest.mark.slow
def test_small_run_on_the_shipped_model(tmp_path, small_data):
    """A CI-sized run: 12 FluidSynth clips, the demo bundle's codec round trip and 2 takes. The default model
    must not be a frame buzz (the defect this benchmark was written to catch)."""
    data = small_data
    out = tmp_path / "mq"
    subprocess.run([sys.executable, "-m", "benchmarks.music_quality", "--data", str(data), "--bundle", "demo=demo",
                    "--clips", "1", "--takes", "2", "--seconds", "4", "--preset", "live", "--held-out-every", "1",
                    "--threads", "1", "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=600,
                   preexec_fn=sigint_default)
    r = json.loads((out / "music_quality-items.json").read_text())
    assert "per_item" not in json.loads((out / "music_quality.json").read_text())["takes"]["demo"]
    assert (out / "spectrograms.png").stat().st_size > 10_000
    clips, codec, takes = r["takes"]["clips"], r["codec"]["demo"], r["takes"]["demo"]
    assert clips["n"] == 2 and takes["n"] == 2 and codec["n"] == 1
    assert clips["corr_20ms_range"][1] < 0.5 and clips["comb_50hz_range"][1] < 0.25  # FluidSynth: music
    assert codec["corr_20ms"] < 0.5 and codec["comb_50hz"] < 0.25  # the codec keeps it music
    assert 0.0 <= codec["note_f1"] <= 1.0 and -1.0 <= codec["chroma_cosine"] <= 1.0
    assert codec["key_ok"] in (0.0, 1.0) and codec["source_key_ok"] in (0.0, 1.0)  # the round trip keeps the key?
    assert 0 < codec["tonic_share"] < 1 and 0 < codec["source_tonic_share"] < 1
    assert all(0 < p["tonic_share"] < 1 and 0 < p["fifth_share"] < 1 for p in takes["per_item"])
    assert clips["beat_phase_agreement"] is None or 0 <= clips["beat_phase_agreement"] <= 1
    assert takes["corr_20ms_range"][1] < 0.5 and takes["comb_50hz_range"][1] < 0.25  # takes are no buzz
    assert all(abs(p["dc"]) < 1e-3 for p in takes["per_item"])
    assert r["training_clips"]["n"] == 12 and 0 <= takes["inside_training_range"] <= 2  # all 12 clips (the default)
    assert 1 <= takes["key_rank"] <= 24 and all(1 <= p["key_rank"] <= 24 for p in clips["per_item"])
    assert 0 <= takes["key_weighted"] <= 1 and 0 <= codec["key_weighted"] <= 1
    assert len(takes["min_distinct_tokens"]) == 4 and min(takes["min_distinct_tokens"]) >= 1
    # minimal drum pairs: each caption against itself with the drums phrase turned over, same seed
    assert takes["drum_pairs"] == 2 and takes["drum_pairs_separated"] in (0.0, 0.5, 1.0)
    assert clips["drum_pairs"] == 2 and clips["drum_pairs_separated"] == 1.0  # the datagen's own twins: ceiling
    assert all(p["twin_percussive_share"] >= 0 for p in takes["per_item"])


def test_drum_twins_turn_the_drums_phrase_over_in_every_datagen_template(small_data):
    from magnet_rt.train.contrast import with_drums
    from magnet_rt.train.data import find_captioned_audio

    assert with_drums("funk, happy, piano melody, slap bass, with drums, E minor, 112 bpm", False) == \
        "funk, happy, piano melody, slap bass, no drums, E minor, 112 bpm"
    assert with_drums("sad hip hop with piano, synth bass and drums at 87 bpm in C# minor", False) == \
        "sad hip hop with piano, synth bass at 87 bpm in C# minor"
    assert with_drums("joyful rock with organ, picked bass at 133 bpm in B major", True) == \
        "joyful rock with organ, picked bass and drums at 133 bpm in B major"
    assert with_drums("a calm folk piece featuring flute and piano, 80 bpm, key of C major", True) == \
        "a calm folk piece featuring flute and piano and drums, 80 bpm, key of C major"
    assert with_drums("folk, calm, flute melody, cello, without drums, C major, 80 bpm", True) == \
        "folk, calm, flute melody, cello, with drums, C major, 80 bpm"
    assert with_drums("a drummer's dream", True) is None and with_drums("rock with drums", True) is None
    clips = find_captioned_audio(small_data)
    twins = mq.drum_twins(clips)
    assert all(t is not None for t in twins)
    assert all(with_drums(t, not c.labels["drums"]) is None for c, t in zip(clips, twins, strict=True))  # turned
    row = {"per_item": [{"drums": True, "percussive_share": 0.3}, {"drums": False, "percussive_share": 0.1},
                        {"drums": False, "percussive_share": 0.2}]}
    loud, soft = np.random.default_rng(0).standard_normal(SR).astype(np.float32), np.zeros(SR, np.float32)
    mq.drum_pairs(row, ["t0", "t1", None], {0: soft, 1: loud})
    assert row["drum_pairs"] == 2 and row["drum_pairs_separated"] == pytest.approx(1.0)


@pytest.mark.slow
def test_text_sensitivity_on_the_shipped_model(small_data):
    """benchmarks/text_sensitivity.py: the same masks under four captions; the demo LM uses its text."""
    from benchmarks.text_sensitivity import key_moved, sensitivity, tempo_moved

    assert key_moved("funk at 112 bpm in E minor") == "funk at 112 bpm in Bb minor"
    assert tempo_moved("funk at 80 bpm in E minor") == "funk at 120 bpm in E minor"
    assert tempo_moved("funk at 150 bpm") == "funk at 100 bpm" and tempo_moved("sad piano") is None
    r = sensitivity("demo", str(small_data), valid=12)
    assert r["files"] == 12 and set(r["ce"]) == {"true", "key", "tempo", "none"}
    assert all(len(v) == 4 and all(np.isfinite(v)) for v in r["ce"].values())
    assert r["delta"]["none"][0] > 0.2  # no text: a worse first codebook


@pytest.mark.slow
def test_decoding_sweep_reports_one_row_per_override(small_data):
    out = subprocess.run([sys.executable, "-m", "benchmarks.decoding_sweep", "--data", str(small_data), "--bundle",
                          "demo", "--set", "{}", "--set", '{"min_cfg_coef": 3}', "--seeds", "1", "--takes", "2",
                          "--seconds", "4", "--preset", "live", "--threads", "1"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=600, preexec_fn=sigint_default)
    ref, *rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert ref["training_clips"]["n"] == 12 and len(ref["training_clips"]["highest_corr_20ms"]) == 5
    assert ref["training_clips"]["highest_corr_20ms"][0]["corr_20ms"] == ref["training_clips"]["corr_20ms_range"][1]
    assert [r["overrides"] for r in rows] == [{}, {"min_cfg_coef": 3}]
    for r in rows:
        assert r["takes"] == 2 and 0 <= r["key_ok"] <= 1 and 1 <= r["key_rank"] <= 24
        assert sum(r["key_relations"].values()) == 2 and r["key_relations"]["same"] == 2 * r["key_ok"]
        assert 0 <= r["tempo_ok_with_drums"] <= 1 and 0 <= r["inside_training_range"] <= 2
        assert len(r["outside"]) == 2 - r["inside_training_range"]  # each take outside, named with its measures


def test_finished_takes_land_on_the_default_loudness(small_data, capsys):
    """benchmarks/take_loudness.py on the shipped model: every finished take at -14 LUFS with its peaks at most
    -1 dBFS (the look-ahead limiter), where gain alone leaves a peaky take under the target or on the ceiling."""
    from benchmarks import take_loudness

    assert take_loudness.main(["--data", str(small_data), "--bundle", "demo", "--takes", "2", "--seconds", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert summary["takes"] == 2 and len(lines) == 3
    low, high = summary["finished"]["lufs_range"]
    assert -14.5 < low <= high < -13.5 and summary["finished"]["peak_dbfs_max"] <= -1.0 + 1e-3
    assert summary["gain_only"]["peak_dbfs_max"] <= -1.0 + 1e-3 and summary["gain_only"]["lufs_range"][1] < -13.5
