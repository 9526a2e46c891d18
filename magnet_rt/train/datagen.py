"""Deterministic captioned music for training the demo models: MIDI composed here, rendered by FluidSynth
with the General MIDI soundfont (FluidR3_GM).

    python -m magnet_rt.train.datagen --out data/synth --n 4000 --seed 0 --seconds 10

Each clip draws (from `random.Random(f"{seed}:{index}")`, so clip i is the same whatever --n is) a style
(funk, rock, jazz, ambient, orchestral, techno, hip hop, reggae, bossa nova, folk), its instruments (GM
programs: a lead, a comping part, a bass), drums or not (channel 10 patterns per style), tempo, key, mode,
density and a mood that follows from mode and tempo; composes a chord progression, bass line, comping,
a motif-based melody and drums; writes `NNNNN.mid`, renders `NNNNN.wav` (32 kHz mono 16-bit, exactly
`seconds` long, peak-normalised) and one line per clip in `captions.jsonl`:

    {"file": "00000.wav", "caption": "upbeat funk with slap bass and drums at 112 bpm in E minor",
     "style": ..., "lead": {"program", "name", "family"}, "comp": ..., "bass": ..., "drums": true,
     "tempo": 112, "key": "E", "mode": "minor", "mood": "energetic", "mood_word": "upbeat",
     "density": "dense", "seed": "0:0"}

The labels (instrument families, drums, tempo, key, mode, mood) are for a later prompt-adherence classifier.
Requires the `fluidsynth` binary and `/usr/share/sounds/sf2/FluidR3_GM.sf2`
(Debian/Ubuntu: `apt-get install -y fluidsynth fluid-soundfont-gm`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..audio import remove_dc
from .midi import Note, write_midi

log = logging.getLogger(__name__)

SAMPLE_RATE = 32000
SOUNDFONT_CANDIDATES = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2",
                        "/usr/share/sounds/sf2/default-GM.sf2")
MAX_DC = 1e-3  # a clip whose mean is further from zero than this is refused, never written
INSTALL_HINT = "install it with: apt-get update && apt-get install -y fluidsynth fluid-soundfont-gm"

KEYS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}

# GM program -> (caption name, family)
PROGRAMS = {
    0: ("piano", "piano"), 4: ("electric piano", "piano"), 7: ("clavinet", "piano"),
    11: ("vibraphone", "mallet"), 12: ("marimba", "mallet"), 46: ("harp", "strings"),
    16: ("organ", "organ"), 19: ("church organ", "organ"),
    24: ("nylon guitar", "guitar"), 25: ("acoustic guitar", "guitar"), 27: ("clean electric guitar", "guitar"),
    29: ("overdriven guitar", "guitar"), 30: ("distorted guitar", "guitar"),
    32: ("upright bass", "bass"), 33: ("electric bass", "bass"), 34: ("picked bass", "bass"),
    36: ("slap bass", "bass"), 38: ("synth bass", "bass"), 39: ("synth bass", "bass"),
    40: ("violin", "strings"), 42: ("cello", "strings"), 48: ("strings", "strings"), 49: ("slow strings", "strings"),
    52: ("choir", "voice"), 56: ("trumpet", "brass"), 57: ("trombone", "brass"), 61: ("brass section", "brass"),
    65: ("alto sax", "reed"), 66: ("tenor sax", "reed"), 68: ("oboe", "reed"), 71: ("clarinet", "reed"),
    73: ("flute", "pipe"), 22: ("harmonica", "reed"), 105: ("banjo", "guitar"), 110: ("fiddle", "strings"),
    80: ("square lead", "synth lead"), 81: ("saw lead", "synth lead"), 88: ("new age pad", "synth pad"),
    89: ("warm pad", "synth pad"), 90: ("polysynth", "synth pad"), 95: ("sweep pad", "synth pad"),
}


@dataclass(frozen=True)
class Style:
    name: str
    tempo: tuple[int, int]
    drums: str  # pattern name
    bass: tuple[int, ...]
    bass_pattern: str
    comp: tuple[int, ...]
    comp_pattern: str
    lead: tuple[int, ...]
    modes: tuple[str, ...] = ("major", "minor")
    swing: float = 0.0


STYLES = [
    Style("funk", (92, 118), "funk", (36, 33), "funk", (7, 27, 4), "stabs", (61, 27, 65, 81)),
    Style("rock", (100, 150), "rock", (33, 34), "eighths", (29, 30), "power", (30, 29, 81)),
    Style("jazz", (90, 170), "jazz", (32,), "walking", (0, 4), "jazz", (65, 66, 56, 11), swing=0.17),
    Style("ambient", (60, 84), "ambient", (38, 89), "whole", (89, 88, 95, 52), "pad", (73, 11, 46, 88)),
    Style("orchestral", (70, 120), "orchestral", (42,), "half", (48, 49), "pad", (40, 73, 68, 56, 71)),
    Style("techno", (120, 135), "four", (38, 39), "offbeat", (90, 81), "arp", (80, 81)),
    Style("hip hop", (78, 96), "boombap", (33, 38), "hiphop", (4, 0, 11), "sustain", (11, 0, 73, 4)),
    Style("reggae", (68, 88), "onedrop", (33,), "reggae", (16, 27), "skank", (56, 22, 16)),
    Style("bossa nova", (110, 140), "bossa", (32,), "bossa", (24,), "bossa", (73, 66, 11), ("major", "minor")),
    Style("folk", (88, 128), "folk", (32, 33), "half", (25, 24, 105), "strum", (110, 22, 73, 25)),
]

PROGRESSIONS = {
    "major": [[0, 4, 5, 3], [0, 3, 4, 3], [0, 5, 3, 4], [1, 4, 0, 0], [0, 3, 0, 4], [0, 4, 3, 4]],
    "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 6], [0, 3, 6, 2], [0, 5, 3, 4], [0, 0, 3, 3]],
}
MOODS = {  # category -> words; category from (mode, tempo)
    "happy": ["upbeat", "happy", "cheerful", "bright", "joyful"],
    "calm": ["calm", "peaceful", "relaxed", "gentle", "warm"],
    "energetic": ["energetic", "driving", "intense", "dark energetic", "powerful"],
    "sad": ["sad", "melancholic", "somber", "dark", "wistful"],
}
DENSITY_WORDS = {"sparse": ["sparse", "minimal", "laid-back"], "medium": ["", "", ""],
                 "dense": ["busy", "dense", "lively"]}

# drum patterns on a 16-step bar: instrument (GM drum key) -> steps with velocity
KICK, SNARE, RIM, CLAP, CHH, OHH, RIDE, CRASH, SHAKER, TAMB, LTOM = 36, 38, 37, 39, 42, 46, 51, 49, 70, 54, 45
DRUMS = {
    "funk": {KICK: [0, 3, 10], SNARE: [4, 12], CHH: list(range(0, 16, 1)), OHH: [14]},
    "rock": {KICK: [0, 6, 8], SNARE: [4, 12], CHH: list(range(0, 16, 2))},
    "jazz": {RIDE: [0, 4, 7, 8, 12, 15], CHH: [4, 12], KICK: [0]},
    "ambient": {SHAKER: [0, 4, 8, 12], RIDE: [0], LTOM: [10]},
    "orchestral": {LTOM: [0, 8], CRASH: []},
    "four": {KICK: [0, 4, 8, 12], CLAP: [4, 12], OHH: [2, 6, 10, 14], CHH: [0, 4, 8, 12]},
    "boombap": {KICK: [0, 7, 10], SNARE: [4, 12], CHH: list(range(0, 16, 2))},
    "onedrop": {KICK: [8], RIM: [8], CHH: list(range(0, 16, 2))},
    "bossa": {KICK: [0, 3, 8, 11], RIM: [0, 3, 6, 10, 13], SHAKER: list(range(0, 16, 1))},
    "folk": {KICK: [0, 8], SNARE: [4, 12], TAMB: list(range(0, 16, 2))},
}


def mood_category(mode: str, tempo: int) -> str:
    fast = tempo >= 105
    return {("major", True): "happy", ("major", False): "calm", ("minor", True): "energetic",
            ("minor", False): "sad"}[(mode, fast)]


@dataclass
class Clip:
    index: int
    seed: str
    style: Style
    tempo: int
    key: int
    mode: str
    density: str
    drums: bool
    lead: int
    comp: int
    bass: int
    mood: str
    mood_word: str
    caption: str

    def labels(self) -> dict:
        def inst(p):
            return {"program": p, "name": PROGRAMS[p][0], "family": PROGRAMS[p][1]}
        return {"style": self.style.name, "lead": inst(self.lead), "comp": inst(self.comp), "bass": inst(self.bass),
                "drums": self.drums, "tempo": self.tempo, "key": KEYS[self.key], "mode": self.mode,
                "mood": self.mood, "mood_word": self.mood_word, "density": self.density, "seed": self.seed}


def draw_clip(seed: int, index: int) -> Clip:
    """Clip `index`: styles cycle (every 10 consecutive clips hold each style once) and drums alternate per
    style cycle, so any 20 consecutive clips are balanced in style x drums; the rest is drawn."""
    rng = random.Random(f"{seed}:{index}")
    cycle, pos = divmod(index, len(STYLES))
    style = STYLES[(pos + seed) % len(STYLES)]
    tempo = rng.randint(*style.tempo)
    key, mode = rng.randrange(12), rng.choice(style.modes)
    density = rng.choice(["sparse", "medium", "dense"])
    drums = cycle % 2 == 0
    lead = rng.choice(style.lead)
    comp = rng.choice([c for c in style.comp if c != lead] or list(style.comp))
    bass = rng.choice(style.bass)
    mood = mood_category(mode, tempo)
    mood_word = rng.choice(MOODS[mood])
    caption = make_caption(rng, style.name, tempo, KEYS[key], mode, mood_word, density, drums, lead, comp, bass)
    return Clip(index, f"{seed}:{index}", style, tempo, key, mode, density, drums, lead, comp, bass, mood, mood_word,
                caption)


def make_caption(rng: random.Random, style: str, tempo: int, key: str, mode: str, mood_word: str, density: str,
                 drums: bool, lead: int, comp: int, bass: int) -> str:
    lead_n, comp_n, bass_n = PROGRAMS[lead][0], PROGRAMS[comp][0], PROGRAMS[bass][0]
    dens = rng.choice(DENSITY_WORDS[density])
    d_with = " and drums" if drums else ""
    d_flag = "with drums" if drums else rng.choice(["no drums", "without drums"])
    templates = [
        f"{mood_word} {style} with {lead_n}, {bass_n}{d_with} at {tempo} bpm in {key} {mode}",
        f"{dens + ' ' if dens else ''}{mood_word} {style} track, {lead_n} over {comp_n}, {d_flag}, "
        f"{tempo} bpm, {key} {mode}",
        f"a {mood_word} {style} piece featuring {lead_n} and {comp_n}{d_with}, {tempo} bpm, key of {key} {mode}",
        f"{style}, {mood_word}, {lead_n} melody, {bass_n}, {d_flag}, {key} {mode}, {tempo} bpm",
    ]
    return rng.choice(templates)


# ---- composition -------------------------------------------------------------------------------------
def compose(clip: Clip, seconds: float) -> tuple[list[Note], dict[int, int]]:
    rng = random.Random(f"compose:{clip.seed}")
    st, scale = clip.style, SCALES[clip.mode]
    beats_needed = seconds * clip.tempo / 60 + 2
    bars = math.ceil(beats_needed / 4)
    prog = rng.choice(PROGRESSIONS[clip.mode])
    root_pc = clip.key
    notes: list[Note] = []
    LEAD, COMP, BASS = 0, 1, 2
    programs = {LEAD: clip.lead, COMP: clip.comp, BASS: clip.bass}
    if clip.drums:
        programs[9] = 0

    def degree_pitch(deg: int, base: int) -> int:
        octave, d = divmod(deg, 7)
        return base + root_pc + 12 * octave + scale[d]

    def chord(deg: int, base: int, seventh: bool = False) -> list[int]:
        return [degree_pitch(deg + i, base) for i in ((0, 2, 4, 6) if seventh else (0, 2, 4))]

    def swing(t: float) -> float:  # delay off-beat eighths
        return t + st.swing if st.swing and abs((t % 1) - 0.5) < 1e-6 else t

    def v(base: int, spread: int = 12) -> int:
        return max(1, min(127, base + rng.randint(-spread, spread)))

    for bar in range(bars):
        deg = prog[bar % len(prog)]
        t0 = 4.0 * bar
        # bass
        broot = degree_pitch(deg, 36)
        bp = st.bass_pattern
        if bp == "funk":
            for s in [0, 3, 6, 8, 10, 11, 14]:
                if rng.random() < 0.85:
                    p = broot + (12 if s in (6, 14) and rng.random() < 0.5 else 0)
                    notes.append(Note(t0 + s / 4, 0.2, p, v(100), BASS))
        elif bp == "eighths":
            for s in range(8):
                notes.append(Note(t0 + s / 2, 0.45, broot, v(95, 8), BASS))
        elif bp == "walking":
            tones = [broot, degree_pitch(deg + 2, 36), degree_pitch(deg + 4, 36),
                     degree_pitch(prog[(bar + 1) % len(prog)], 36) + rng.choice([-1, 1])]
            for b in range(4):
                notes.append(Note(t0 + b, 0.9, tones[b], v(90), BASS))
        elif bp == "whole":
            notes.append(Note(t0, 4.0, broot, v(80, 6), BASS))
        elif bp == "half":
            notes.append(Note(t0, 2.0, broot, v(85), BASS))
            notes.append(Note(t0 + 2, 2.0, degree_pitch(deg + 4, 36), v(80), BASS))
        elif bp == "offbeat":
            for b in range(4):
                notes.append(Note(t0 + b + 0.5, 0.4, broot, v(100, 6), BASS))
        elif bp == "hiphop":
            for s, ln in [(0, 1.5), (7, 0.5), (10, 1.0)]:
                notes.append(Note(t0 + s / 4, ln, broot, v(95), BASS))
        elif bp == "reggae":
            for b, ln in [(0, 0.75), (1.5, 0.5), (2, 1.0)]:
                notes.append(Note(t0 + b, ln, broot, v(95), BASS))
        elif bp == "bossa":
            fifth = degree_pitch(deg + 4, 36) - 12
            for b, p in [(0, broot), (1.5, fifth), (2, fifth), (3.5, broot)]:
                notes.append(Note(t0 + b, 0.5, p, v(85), BASS))
        # comping
        cp = st.comp_pattern
        ch = chord(deg, 60, seventh=st.name in ("jazz", "bossa nova", "hip hop"))
        if cp == "stabs":
            for s in [2, 6, 7, 10, 14]:
                if rng.random() < 0.7:
                    notes += [Note(t0 + s / 4, 0.15, p, v(85), COMP) for p in ch]
        elif cp == "power":
            r = degree_pitch(deg, 48)
            for s in range(8):
                notes += [Note(t0 + s / 2, 0.45, p, v(90, 6), COMP) for p in (r, r + 7, r + 12)]
        elif cp == "jazz":
            for b in sorted(rng.sample([0, 1.5, 2, 2.5, 3.5], 2)):
                notes += [Note(swing(t0 + b), 0.6, p, v(70), COMP) for p in ch]
        elif cp == "pad":
            notes += [Note(t0, 4.0, p, v(70, 6), COMP) for p in ch]
        elif cp == "arp":
            for s in range(16):
                notes.append(Note(t0 + s / 4, 0.22, ch[s % len(ch)] + (12 if (s // 3) % 2 else 0), v(80), COMP))
        elif cp == "sustain":
            notes += [Note(t0, 1.9, p, v(65), COMP) for p in ch] + [Note(t0 + 2.5, 1.4, p, v(60), COMP) for p in ch]
        elif cp == "skank":
            for b in (1, 3):
                notes += [Note(t0 + b, 0.3, p, v(80), COMP) for p in ch]
        elif cp == "bossa":
            for b in (0, 0.75, 1.5, 2.5, 3.25):
                notes += [Note(t0 + b, 0.4, p, v(70), COMP) for p in ch]
        elif cp == "strum":
            for s in range(8):
                if s in (0, 2, 3, 5, 6) or rng.random() < 0.3:
                    notes += [Note(t0 + s / 2 + 0.012 * i, 0.45, p, v(80), COMP)
                              for i, p in enumerate(ch + [ch[0] + 12])]

    # melody: a 2-bar motif, varied and repeated
    step = {"sparse": [2.0, 1.0, 1.0], "medium": [1.0, 0.5, 1.0, 0.5], "dense": [0.5, 0.25, 0.5, 0.5]}[clip.density]
    lead_base = 72 if clip.lead not in (30, 29, 42, 57) else 60

    def motif() -> list[tuple[float, float, int]]:
        out, t, d = [], 0.0, rng.choice([0, 2, 4])
        while t < 8.0:
            ln = min(rng.choice(step), 8.0 - t)
            if rng.random() > 0.18:
                out.append((t, ln, d))
            d = max(-3, min(9, d + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3])))
            t += ln
        return out

    m = motif()
    for phrase in range(math.ceil(bars / 2)):
        if phrase % 4 == 2:
            m = motif()
        shift = rng.choice([0, 0, 1, -1]) if phrase % 2 else 0
        for t, ln, d in m:
            bar = int((8.0 * phrase + t) // 4)
            if bar >= bars:
                continue
            notes.append(Note(swing(8.0 * phrase + t), ln * 0.95, degree_pitch(d + shift, lead_base), v(95, 10), LEAD))

    if clip.drums:
        pat = DRUMS[clip.style.drums]
        for bar in range(bars):
            t0 = 4.0 * bar
            if bar == 0 and clip.style.drums != "jazz":
                notes.append(Note(t0, 1.0, CRASH, v(90), 9))
            for inst, steps in pat.items():
                for s in steps:
                    if inst in (CHH, SHAKER, TAMB, RIDE) and clip.density == "sparse" and s % 4:
                        continue
                    acc = 100 if s % 4 == 0 else 75
                    notes.append(Note(swing(t0 + s / 4), 0.2, inst, v(acc, 10), 9))
            if bar % 4 == 3 and rng.random() < 0.6:  # fill
                for s in range(12, 16):
                    notes.append(Note(t0 + s / 4, 0.2, rng.choice([SNARE, LTOM]), v(90), 9))
    return notes, programs


# ---- rendering ---------------------------------------------------------------------------------------
def find_soundfont() -> Path:
    for c in SOUNDFONT_CANDIDATES:
        if Path(c).is_file():
            return Path(c)
    raise FileNotFoundError(f"General MIDI soundfont not found (looked at {', '.join(SOUNDFONT_CANDIDATES)}); "
                            f"{INSTALL_HINT}")


def find_fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise FileNotFoundError(f"the 'fluidsynth' binary is not on PATH; {INSTALL_HINT}")
    return exe


def render(mid: Path, seconds: float, soundfont: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """FluidSynth offline render -> float32 mono [seconds * sr], peak-normalised to -1 dBFS."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="magnet-datagen-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = [find_fluidsynth(), "-ni", "-q", "-F", str(wav), "-r", str(sample_rate), "-g", "0.5",
               "-o", "synth.cpu-cores=1", str(soundfont), str(mid)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"fluidsynth failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        data, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise RuntimeError(f"fluidsynth rendered {sr} Hz, asked {sample_rate}")
    x = data.mean(axis=1, dtype=np.float64)
    n = int(round(seconds * sample_rate))
    x = np.pad(x, (0, max(0, n - len(x))))[:n]
    x = remove_dc(x, sample_rate)  # FluidSynth's mixes carry offsets of up to +0.3
    fade = int(0.02 * sample_rate)  # 20 ms fade-out at the cut
    x[-fade:] *= np.linspace(1.0, 0.0, fade)
    x -= x.mean()  # the fade moved the mean by a hair
    peak = float(np.abs(x).max())
    if peak > 0:
        x = x * (10 ** (-1 / 20) / peak)
    if abs(float(x.mean())) > MAX_DC:
        raise RuntimeError(f"{mid.name}: rendered clip keeps a DC offset of {x.mean():+.2e} after filtering")
    return x.astype(np.float32)


def _write_clip(job: tuple[Path, int, int, float, Path, bool]) -> dict:
    """Render clip i into `out` unless its WAV exists (resumable); its captions.jsonl row."""
    import soundfile as sf

    out, seed, i, seconds, soundfont, keep_midi = job
    clip = draw_clip(seed, i)
    wav = out / f"{i:05d}.wav"
    mid = out / f"{i:05d}.mid"
    if not wav.is_file():
        notes, programs = compose(clip, seconds)
        write_midi(mid, notes, clip.tempo, programs)
        audio = render(mid, seconds, soundfont)
        tmp = wav.with_name(f".{wav.name}.tmp")
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav)
        if not keep_midi:
            mid.unlink()
        if (i + 1) % 100 == 0:
            log.info("clip %d written", i + 1)
    return {"file": wav.name, "caption": clip.caption, **clip.labels()}


def render_drum_twin(clip_seed: str, seconds: float, tmp: Path) -> np.ndarray:
    """The clip with seed `clip_seed` ("seed:index", its captions.jsonl label) rendered with its drums turned
    over: the same notes (the drum part is composed last and draws nothing the others use), plus or minus
    the drums. float32 mono at SAMPLE_RATE."""
    seed, index = (int(v) for v in clip_seed.split(":"))
    clip = draw_clip(seed, index)
    clip = replace(clip, drums=not clip.drums)
    notes, programs = compose(clip, seconds)
    mid = write_midi(Path(tmp) / f"twin-{seed}-{index}.mid", notes, clip.tempo, programs)
    try:
        return render(mid, seconds, find_soundfont())
    finally:
        mid.unlink(missing_ok=True)


def generate(out: str | Path, n: int, seed: int = 0, seconds: float = 10.0, start: int = 0,
             keep_midi: bool = True, workers: int = 1) -> Path:
    """Write clips start..n-1 into `out` (existing complete clips are kept: resumable) and captions.jsonl;
    `workers` processes render in parallel (same bytes as one worker)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    soundfont = find_soundfont()
    find_fluidsynth()
    jobs = [(out, seed, i, seconds, soundfont, keep_midi) for i in range(start, n)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            rows = list(pool.imap(_write_clip, jobs, chunksize=4))
    else:
        rows = [_write_clip(job) for job in jobs]
    meta = {"generator": "magnet_rt.train.datagen", "seed": seed, "n": n, "seconds": seconds,
            "sample_rate": SAMPLE_RATE, "soundfont": str(soundfont), "fluidsynth": fluidsynth_version()}
    (out / "datagen.json").write_text(json.dumps(meta, indent=2) + "\n")
    with (out / "captions.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out


def fluidsynth_version() -> str:
    try:
        res = subprocess.run([find_fluidsynth(), "--version"], capture_output=True, text=True, timeout=30)
        return res.stdout.splitlines()[0].strip() if res.stdout else ""
    except (OSError, subprocess.SubprocessError, FileNotFoundError):
        return ""


def file_hashes(folder: str | Path, pattern: str = "*") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).glob(pattern)) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m magnet_rt.train.datagen", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-midi", action="store_true", help="do not keep the .mid files")
    p.add_argument("--workers", type=int, default=1, help="render with this many processes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        generate(args.out, args.n, args.seed, args.seconds, keep_midi=not args.no_midi, workers=args.workers)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"datagen: error: {e}", file=sys.stderr)
        return 2
    print(f"datagen: {args.n} clips in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
