"""Does the 20 ms autocorrelation call a held chord "buzz"? FluidSynth renders held chords with the training
soundfont (no codec, no model: real instrument samples) and `music_quality.buzz` measures them as it measures
takes. A chord whose notes all sit near multiples of 50 Hz (G3 196 Hz ~ 4 x 49, D4 294 Hz ~ 6 x 49) repeats
almost every 20 ms, so its autocorrelation at one codec frame is high with no 50 Hz comb at all.

    python -m benchmarks.held_chords [--seconds 6]

Prints one line per chord and instrument; needs fluidsynth and the GM soundfont (the datagen's).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

CHORDS = {"G3+D4": (55, 62), "D4+A4": (62, 69), "C4+E4+G4": (60, 64, 67), "A3+E4": (57, 64)}
INSTRUMENTS = {"drawbar organ": 16, "piano": 0, "strings": 48}


def held_chord(pitches: tuple[int, ...], program: int, seconds: float, tmp: Path) -> np.ndarray:
    from magnet_rt.train.datagen import find_soundfont, render
    from magnet_rt.train.midi import Note, write_midi

    beats = seconds * 2  # at 120 bpm
    mid = write_midi(tmp / "chord.mid", [Note(0.0, beats, p, 90, 0) for p in pitches], 120.0, {0: program})
    return render(mid, seconds, find_soundfont())


def main(argv: list[str] | None = None) -> int:
    from benchmarks.music_quality import buzz

    p = argparse.ArgumentParser(prog="python -m benchmarks.held_chords", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        for chord, pitches in CHORDS.items():
            for name, program in INSTRUMENTS.items():
                b = buzz(held_chord(pitches, program, args.seconds, Path(d)), 32000)
                corr, comb = b["corr_20ms"], 100 * b["comb_50hz"]
                print(f"{chord:9} {name:14} autocorr. 20 ms {corr:+.2f}  50 Hz comb {comb:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
