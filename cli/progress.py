"""What the CLI shows on stderr while a request runs: rich bars on a TTY, plain lines otherwise, nothing with -q.

All three reporters take the protocol events in order (`event(msg)`) and free-form notes (`note(text)`).
The rich one follows rich's `dynamic_progress.py`/`status.py`: a spinner while the request waits in the queue,
then an overall step bar and one row for the codebook stage being decoded, then one for receiving the audio.
"""

from __future__ import annotations

import sys
from typing import Self, TextIO

import protocol as P


class Reporter:
    """Quiet: shows nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def event(self, msg: P.Event) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainReporter(Reporter):
    """One line per milestone (accepted, each codebook stage, each output, done), for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.stage = -1
        self.outputs = 1

    def note(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def event(self, msg: P.Event) -> None:
        if isinstance(msg, P.Accepted):
            self.outputs = msg.outputs
            self.note(f"accepted {msg.id}: {msg.outputs} output(s), seed {msg.seed}, "
                      f"queue position {msg.queue_position}")
        elif isinstance(msg, P.Window):
            self.note(f"window {msg.window}: {msg.start_s:.2f}-{msg.start_s + msg.duration_s:.2f} s "
                      f"({msg.elapsed_s:.1f} s), prompt {msg.prompt!r}")
        elif isinstance(msg, P.Progress) and msg.window is None and msg.stage != self.stage:
            self.stage = msg.stage
            self.note(f"codebook stage {msg.stage + 1}: {msg.stage_steps} steps "
                      f"(step {msg.step}/{msg.total}, {msg.elapsed_s:.1f} s)")
        elif isinstance(msg, P.AudioChunk) and msg.TYPE == "audio" and msg.seq == 0:
            self.note(f"receiving output {msg.variation + 1}/{self.outputs}")
        elif isinstance(msg, P.Done):
            total = msg.timings.get("total")
            took = f" in {total:.2f} s" if total is not None else ""
            self.note(f"done: {len(msg.seeds)} x {msg.duration_s:.2f} s at {msg.sample_rate} Hz{took} "
                      f"(model {msg.model}, batch of {msg.batch_size})")
        elif isinstance(msg, P.Cancelled):
            self.note("cancelled")


class RichReporter(Reporter):
    """Spinner while queued; overall steps bar plus the current codebook stage; then the audio download."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=out, stderr=out is sys.stderr)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
        self.overall = self.progress.add_task("waiting for the daemon", total=None)
        self.stage_task: int | None = None
        self.audio_task: int | None = None
        self.stage = -1
        self.outputs = 1
        self.progress.start()

    def note(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def event(self, msg: P.Event) -> None:
        p = self.progress
        if isinstance(msg, P.Accepted):
            self.outputs = msg.outputs
            where = f"queued, position {msg.queue_position}" if msg.queue_position else "starting"
            p.update(self.overall, description=f"{where} (seed {msg.seed})")
        elif isinstance(msg, P.Progress):
            p.update(self.overall, description="decoding", total=msg.total, completed=msg.step)
            if msg.stage != self.stage:
                self.stage = msg.stage
                if self.stage_task is None:
                    self.stage_task = p.add_task("", total=msg.stage_steps)
                p.reset(self.stage_task, total=msg.stage_steps)
            p.update(self.stage_task, description=f"  codebook stage {msg.stage + 1}", completed=msg.stage_step)
        elif isinstance(msg, P.AudioChunk) and msg.TYPE == "audio":
            if self.stage_task is not None:
                p.update(self.stage_task, visible=False)
            if self.audio_task is None:
                self.audio_task = p.add_task("receiving audio", total=self.outputs)
            if msg.last:
                p.advance(self.audio_task)
        elif P.is_terminal(msg):
            self.stop()

    def stop(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool, out: TextIO | None = None) -> Reporter:
    out = out if out is not None else sys.stderr
    if quiet:
        return Reporter()
    return RichReporter(out) if out.isatty() else PlainReporter(out)
