"""The options of `magnet-rt generate` beyond a plain take (PROTOCOL.md §6): the flags, and the endless run.

- `--rescore W` (any render command): spans re-ranked by the daemon's MusicGen with weight W.
- `--hybrid SECONDS`: the first seconds autoregressively (MusicGen), the rest by MAGNeT.
- `--duration` longer than the model's segment: long-form, window by window (`--overlap`); the usual path.
- `--endless`: windows until Ctrl-C, written to a WAV that grows as they arrive (and played with `--play`).
  Ctrl-C sends `cancel`; the audio decoded up to then still arrives and is written; exit 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import protocol as P
from clients import errors as E

OPTION_FLAGS = {"rescore": "--rescore", "hybrid_s": "--hybrid", "overlap_s": "--overlap", "endless": "--endless"}


def add_render_options(render: argparse.ArgumentParser) -> None:
    render.add_argument("--rescore", type=float, metavar="W",
                        help="rescore spans with the daemon's MusicGen at weight W in [0, 1] (daemon needs --rescorer)")


def add_generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hybrid", type=float, metavar="SECONDS",
                   help="generate the first SECONDS autoregressively with MusicGen (daemon needs --rescorer)")
    p.add_argument("--overlap", type=float, metavar="SECONDS",
                   help="long-form and endless: seconds each window shares with the previous (default 3)")
    p.add_argument("--endless", action="store_true",
                   help="stream windows until Ctrl-C into a growing WAV (with --play: hear it); --duration ignored")
    p.add_argument("--no-normalize", action="store_true",
                   help="keep the model's own level (the daemon normalises every take to -14 LUFS by default)")


def generate_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"hybrid_s": args.hybrid, "overlap_s": args.overlap, "endless": True if args.endless else None,
            "normalize": False if args.no_normalize else None}


class GrowingWav:
    """A WAV written chunk by chunk, its header brought up to date after each one (readable while it grows)."""

    def __init__(self, path: str | Path, subtype: str = "FLOAT") -> None:
        self.path, self.subtype = Path(path), subtype
        self.file = None
        self.frames = 0

    def write(self, x: np.ndarray, sample_rate: int) -> None:
        import soundfile

        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = soundfile.SoundFile(str(self.path), "w", samplerate=sample_rate, channels=x.shape[0],
                                            subtype=self.subtype, format="WAV")
        self.file.write(np.ascontiguousarray(x.T))
        self.file.flush()
        self.frames += x.shape[-1]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Stop(Exception):
    """The first Ctrl-C of an endless run: cancel, keep what is still on its way."""


def run_endless(args: argparse.Namespace, client, stream, reporter, audition=None) -> int:
    """Iterate an endless stream into a growing WAV until Ctrl-C (then cancel and drain) or its end."""
    wav = GrowingWav(args.output, args.subtype)
    t0, first, stopping = time.monotonic(), None, False

    def on_sigint(*_: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop waiting at once
        raise _Stop

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        while True:
            try:
                for msg in stream:
                    reporter.event(msg)
                    if isinstance(msg, P.AudioChunk) and msg.TYPE == "audio":
                        x = P.pcm_decode(msg.data, msg.format, msg.channels)
                        wav.write(x, msg.sample_rate)
                        if first is None:
                            first = time.monotonic() - t0
                            reporter.note(f"first audio after {first:.2f} s; Ctrl-C stops")
                        if audition is not None:
                            audition.on_chunk(0, x, msg.sample_rate, msg.last)
                break
            except _Stop:
                if stopping:
                    continue
                stopping = True
                reporter.note("stopping: cancelling the endless request ...")
                try:
                    client.cancel(stream.id)
                except E.RequestFailed:  # it had ended already
                    pass
    except KeyboardInterrupt:
        stream.close()
    finally:
        signal.signal(signal.SIGINT, old)
        stream.close()
        wav.close()
        reporter.stop()
    if audition is not None:
        audition.player.wait(5.0)
        audition.player.stop()
    if wav.frames:
        print(str(wav.path), flush=True)
    rate = wav.file.samplerate if wav.file is not None else 0
    print(f"wrote {wav.frames / rate if rate else 0:.2f} s to {wav.path}" if wav.frames else "no audio arrived",
          file=sys.stderr)
    if isinstance(stream.terminal, P.Cancelled) and stopping:
        return E.EXIT_OK
    if isinstance(stream.terminal, P.Error):
        raise E.RequestFailed.from_protocol(stream.terminal)
    return E.EXIT_FAILED
