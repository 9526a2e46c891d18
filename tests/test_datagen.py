"""The captioned-music generator (magnet_rt/train/datagen.py): determinism, captions vs labels, rendering.

Rendering needs the `fluidsynth` binary and the GM soundfont: apt-get install -y fluidsynth fluid-soundfont-gm.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from magnet_rt.train import datagen
from magnet_rt.train.midi import Note, midi_bytes

N_DRAWS = 400


def require_fluidsynth():
    if shutil.which("fluidsynth") is None:
        pytest.fail("the 'fluidsynth' binary is missing; " + datagen.INSTALL_HINT)
    try:
        datagen.find_soundfont()
    except FileNotFoundError as e:
        pytest.fail(str(e))


def test_captions_match_labels():
    for i in range(N_DRAWS):
        c = datagen.draw_clip(0, i)
        cap, lab = c.caption, c.labels()
        assert lab["style"] in cap and f"{lab['tempo']} bpm" in cap, cap
        assert f"{lab['key']} {lab['mode']}" in cap, cap
        assert lab["mood_word"] in cap and lab["mood_word"] in datagen.MOODS[lab["mood"]], cap
        assert lab["lead"]["name"] in cap, cap
        assert lab["mood"] == datagen.mood_category(lab["mode"], lab["tempo"])
        lo, hi = c.style.tempo
        assert lo <= lab["tempo"] <= hi
        if lab["drums"]:
            assert re.search(r"\b(with|and) drums\b", cap), cap
        else:
            assert "drums" not in cap or re.search(r"\b(no|without) drums\b", cap), cap
        assert lab["lead"]["program"] != lab["comp"]["program"]


def test_enough_variety_for_prompts_to_matter():
    clips = [datagen.draw_clip(0, i) for i in range(N_DRAWS)]
    assert {c.style.name for c in clips} == {s.name for s in datagen.STYLES}
    assert {c.drums for c in clips} == {True, False}
    assert len({c.lead for c in clips}) >= 20 and len({c.key for c in clips}) == 12
    assert {c.mood for c in clips} == set(datagen.MOODS) and {c.mode for c in clips} == {"major", "minor"}
    assert len({c.caption for c in clips}) == N_DRAWS
    # clip i does not depend on how many clips are drawn; another seed gives other clips
    assert datagen.draw_clip(0, 7) == datagen.draw_clip(0, 7)
    assert [datagen.draw_clip(1, i).caption for i in range(20)] != [c.caption for c in clips[:20]]


def test_midi_writer_layout():
    data = midi_bytes([Note(0, 1, 60, 100, 0), Note(0.5, 0.25, 36, 90, 9)], 120, {0: 0, 9: 0})
    assert data[:4] == b"MThd" and int.from_bytes(data[8:10], "big") == 0  # format 0
    assert data[14:18] == b"MTrk" and int.from_bytes(data[18:22], "big") == len(data) - 22
    assert data.endswith(b"\xff\x2f\x00")
    assert b"\xff\x51\x03" + (500000).to_bytes(3, "big") in data  # 120 bpm
    notes, programs = datagen.compose(datagen.draw_clip(0, 3), 10.0)
    assert notes and set(programs) <= {0, 1, 2, 9}
    assert midi_bytes(notes, 100, programs) == midi_bytes(list(notes), 100, dict(programs))


def test_render_is_deterministic_and_labelled(tmp_path):
    require_fluidsynth()
    a = datagen.generate(tmp_path / "a", n=2, seed=5, seconds=2.0)
    b = datagen.generate(tmp_path / "b", n=2, seed=5, seconds=2.0)
    ha, hb = datagen.file_hashes(a), datagen.file_hashes(b)
    assert ha == hb and {"00000.wav", "00001.wav", "00000.mid", "captions.jsonl"} <= set(ha)
    import soundfile as sf

    x, sr = sf.read(str(a / "00000.wav"))
    assert sr == 32000 and len(x) == 64000 and np.abs(x).max() > 0.5 and np.sqrt((x ** 2).mean()) > 0.01
    rows = [json.loads(line) for line in (a / "captions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == [datagen.draw_clip(5, i).caption for i in range(2)]
    from magnet_rt.train.data import find_captioned_audio

    found = find_captioned_audio(a)
    assert [f.caption for f in found] == [r["caption"] for r in rows] and found[0].labels["tempo"] == rows[0]["tempo"]


def test_missing_fluidsynth_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(datagen.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y fluidsynth fluid-soundfont-gm"):
        datagen.find_fluidsynth()
