"""Drive the built MagnetRT.vst3 inside DawDreamer (a host this project did not write), headless.

Run as a subprocess by tests/test_plugin.py (so the real-time check can preload its interposer into the host):

    python tests/plugin_host.py PLUGIN.vst3 STATE.bin TAKES_DIR OUT.npz [--bpm 96] [--sr 32000] [--block 384]

1. Load the plugin, set its state (JUCE's binary XML: prompt, preset, seed, bars, daemon address, take folder).
2. Render 1 bar with MIDI note 36 (slot 1, empty: the plugin asks the daemon for a take).
3. Wait (bounded) for the take's WAV in TAKES_DIR.
4. Render 6 bars with note 36 at beat 0.5: slot 1 now holds the take, which starts at the next bar line.
5. Save the plugin's state, load it into a second instance, render 3 bars with note 36 at beat 0 (a bar line).
Every wait is bounded; OUT.npz gets both renders, the saved state and the take's path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dawdreamer as daw
import numpy as np


def parameter_index(synth, name: str) -> int:
    """The index of the plugin parameter called `name` (as the host lists them)."""
    for d in synth.get_parameters_description():
        if d["name"] == name:
            return int(d["index"])
    raise SystemExit(f"no parameter {name!r} in {[d['name'] for d in synth.get_parameters_description()]}")


def interactive(a) -> None:
    """`--interactive`: commands on stdin, one per line, each answered on stdout ('ok ...' or 'timeout'):
    `note N` (render one bar with note N at beat 0), `render BARS`, `takes K SECONDS` (wait for K WAVs),
    `press NAME` (a button parameter on for a quarter beat, then off for a quarter beat, as an automation
    pulse or a momentary pad would do), `play BARS OUT.npy [NOTE@BEAT@VELOCITY ...]` (render with those notes,
    the audio saved to OUT.npy)."""
    engine = daw.RenderEngine(a.sr, a.block)
    engine.set_bpm(a.bpm)
    synth = engine.make_plugin_processor("magnet", a.plugin)
    synth.load_state(a.state)
    engine.load_graph([(synth, [])])
    print("ok loaded", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "note":
            synth.clear_midi()
            synth.add_midi_note(int(args[0]), 100, 0.0, 0.5, beats=True)
            engine.render(4, beats=True)
            print("ok", flush=True)
        elif cmd == "render":
            synth.clear_midi()
            engine.render(4 * float(args[0]), beats=True)
            print("ok", int(np.count_nonzero(synth.get_audio())), flush=True)
        elif cmd == "takes":
            deadline = time.monotonic() + float(args[1])
            while time.monotonic() < deadline and len(list(Path(a.takes).glob("*.wav"))) < int(args[0]):
                time.sleep(0.05)
            n = len(list(Path(a.takes).glob("*.wav")))
            print("ok" if n >= int(args[0]) else "timeout", n, flush=True)
        elif cmd == "press":
            index = parameter_index(synth, " ".join(args))
            synth.clear_midi()
            for value in (1.0, 0.0):
                synth.set_parameter(index, value)
                engine.render(0.25, beats=True)
            print("ok", flush=True)
        elif cmd == "play":
            synth.clear_midi()
            for spec in args[2:]:
                note, beat, velocity = spec.split("@")
                synth.add_midi_note(int(note), int(velocity), float(beat), 0.25, beats=True)
            engine.render(4 * float(args[0]), beats=True)
            audio = synth.get_audio()
            np.save(args[1], audio)
            print("ok", int(np.count_nonzero(audio)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plugin")
    ap.add_argument("state")
    ap.add_argument("takes")
    ap.add_argument("out")
    ap.add_argument("--bpm", type=float, default=96.0)
    ap.add_argument("--sr", type=int, default=32000)
    ap.add_argument("--block", type=int, default=384)
    ap.add_argument("--wait", type=float, default=120.0)
    ap.add_argument("--interactive", action="store_true")
    a = ap.parse_args()
    if a.interactive:
        return interactive(a)
    beats = 4

    engine = daw.RenderEngine(a.sr, a.block)
    engine.set_bpm(a.bpm)
    synth = engine.make_plugin_processor("magnet", a.plugin)
    synth.load_state(a.state)
    engine.load_graph([(synth, [])])

    synth.add_midi_note(36, 100, 0.25, 0.5, beats=True)
    engine.render(beats, beats=True)
    first = synth.get_audio()

    deadline = time.monotonic() + a.wait
    takes: list[Path] = []
    while time.monotonic() < deadline and not takes:
        takes = sorted(Path(a.takes).glob("*.wav"))
        time.sleep(0.1)
    if not takes:
        raise SystemExit(f"no take appeared in {a.takes} within {a.wait} s")

    synth.clear_midi()
    synth.add_midi_note(36, 1, 0.5, 0.25, beats=True)  # velocity 1: triggers are velocity-independent
    engine.render(6 * beats, beats=True)
    second = synth.get_audio()

    saved = Path(a.out).with_suffix(".state")
    synth.save_state(str(saved))

    engine2 = daw.RenderEngine(a.sr, a.block)
    engine2.set_bpm(a.bpm)
    restored = engine2.make_plugin_processor("restored", a.plugin)
    restored.load_state(str(saved))
    engine2.load_graph([(restored, [])])
    deadline = time.monotonic() + 30
    third = np.zeros((2, 0), np.float32)
    while time.monotonic() < deadline:  # the restored take is read from its WAV on the plugin's own thread
        restored.clear_midi()
        restored.add_midi_note(36, 127, 0.0, 0.25, beats=True)
        engine2.render(3 * beats, beats=True)
        third = restored.get_audio()
        if np.any(third):
            break
        time.sleep(0.1)

    np.savez(a.out, first=first, second=second, third=third, state=np.frombuffer(saved.read_bytes(), np.uint8),
             take=str(takes[0]))


if __name__ == "__main__":
    main()
