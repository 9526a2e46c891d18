"""Live audition: play the first take while it is still streaming in, then step through the takes.

The PortAudio callback runs on the audio thread and only copies out of a `RingBuffer` (single producer, single
consumer, no lock, no allocation): when the chunks arrive late it plays silence and counts an underrun, it
never waits. The chunk iterator (the CLI's main thread) is the producer. `sounddevice` is imported only when
playback is asked for, and a missing PortAudio becomes `AudioUnavailable` with the fix.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from .errors import AudioUnavailable

PORTAUDIO_HINT = ("Install PortAudio (Debian/Ubuntu: `sudo apt install libportaudio2`; macOS: "
                  "`brew install portaudio`), or run without --play.")


def load_sounddevice() -> Any:
    try:
        import sounddevice
    except (OSError, ImportError) as exc:  # sounddevice raises OSError when libportaudio is missing
        raise AudioUnavailable(f"audio playback is unavailable: {exc}. {PORTAUDIO_HINT}") from None
    return sounddevice


def list_devices(out: TextIO | None = None) -> None:
    """Print the output devices, the default one marked with `*`."""
    out = out or sys.stdout
    sd = load_sounddevice()
    default_out = sd.default.device[1] if isinstance(sd.default.device, list | tuple) else sd.default.device
    outputs = [(i, dev) for i, dev in enumerate(sd.query_devices()) if dev["max_output_channels"] > 0]
    if not outputs:
        raise AudioUnavailable("PortAudio finds no audio output device on this machine")
    for i, dev in outputs:
        mark = "*" if i == default_out else " "
        print(f"{mark} {i:3d}  {dev['name']}  ({dev['max_output_channels']} ch, "
              f"{dev['default_samplerate']:.0f} Hz)", file=out)


class RingBuffer:
    """float32 frames `[N, C]` passed from one writer thread to one reader (the audio callback).

    The counters only grow; the writer copies data before it advances `_w`, the reader copies before it
    advances `_r`, and each counter has one writer, so no lock is needed (Python int stores are atomic)."""

    def __init__(self, capacity_frames: int, channels: int) -> None:
        self.buf = np.zeros((max(1, capacity_frames), channels), np.float32)
        self.capacity, self.channels = len(self.buf), channels
        self._w = 0
        self._r = 0
        self.closed = False  # the writer has written its last frame
        self.underruns = 0

    @property
    def available(self) -> int:
        return self._w - self._r

    @property
    def drained(self) -> bool:
        return self.closed and self._w == self._r

    def write(self, frames: np.ndarray, timeout_s: float = 30.0) -> int:
        """Append frames `[N, C]`, waiting while the ring is full (at most `timeout_s`); returns frames written."""
        frames = np.asarray(frames, np.float32).reshape(-1, self.channels)
        done, deadline = 0, time.monotonic() + timeout_s
        while done < len(frames):
            space = self.capacity - (self._w - self._r)
            if space == 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
                continue
            n = min(space, len(frames) - done)
            at = self._w % self.capacity
            first = min(n, self.capacity - at)
            self.buf[at:at + first] = frames[done:done + first]
            self.buf[:n - first] = frames[done + first:done + n]
            self._w += n
            done += n
        return done

    def close(self) -> None:
        self.closed = True

    def read_into(self, out: np.ndarray) -> int:
        """Fill `out` `[frames, C]` with what is there and silence after it; never blocks."""
        want = len(out)
        n = min(want, self._w - self._r)
        at = self._r % self.capacity
        first = min(n, self.capacity - at)
        out[:first] = self.buf[at:at + first]
        out[first:n] = self.buf[:n - first]
        out[n:] = 0.0
        self._r += n
        if n < want and not self.closed:
            self.underruns += 1
        return n


class Player:
    """One output stream at a time, fed through a RingBuffer. `stream_factory` defaults to
    `sounddevice.OutputStream`; tests pass a fake that calls the callback from a thread."""

    def __init__(self, device: int | str | None = None, stream_factory: Callable[..., Any] | None = None,
                 capacity_s: float = 60.0) -> None:
        self.device, self.capacity_s = device, capacity_s
        self.errors: tuple[type[Exception], ...] = (RuntimeError, OSError, ValueError)  # what opening may raise
        if stream_factory is None:
            sd = load_sounddevice()
            self.errors = (sd.PortAudioError, ValueError)
            try:
                sd.check_output_settings(device=device)
            except self.errors as exc:  # no such device, or no device at all
                which = "no default audio output device" if device is None else f"no output device {device!r}"
                raise AudioUnavailable(f"{which} ({exc}). `magnet-rt generate --list-devices` lists the "
                                       "devices; pick one with --output-device, or run without --play.") from None
            stream_factory = sd.OutputStream
        self.stream_factory = stream_factory
        self.stream: Any = None
        self.ring: RingBuffer | None = None

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        ring = self.ring
        if ring is None:
            outdata[:] = 0.0
        else:
            ring.read_into(outdata)

    def start(self, sample_rate: int, channels: int, frames: int = 0) -> RingBuffer:
        self.stop()
        self.ring = RingBuffer(max(frames, int(self.capacity_s * sample_rate)), channels)
        try:
            self.stream = self.stream_factory(samplerate=sample_rate, channels=channels, dtype="float32",
                                              device=self.device, callback=self._callback)
            self.stream.start()
        except self.errors as exc:
            raise AudioUnavailable(f"cannot open the output device: {exc}") from None
        return self.ring

    def feed(self, x: np.ndarray, sample_rate: int) -> None:
        """Queue samples `[C, N]`, opening the stream on the first call."""
        if self.stream is None:
            self.start(sample_rate, x.shape[0])
        self.ring.write(x.T)

    def end_of_take(self) -> None:
        if self.ring is not None:
            self.ring.close()

    def play(self, x: np.ndarray, sample_rate: int) -> None:
        """Replace whatever plays with the whole take `[C, N]`."""
        self.start(sample_rate, x.shape[0], frames=x.shape[1]).write(x.T, timeout_s=0.0)
        self.ring.close()

    def wait(self, timeout_s: float) -> bool:
        """Wait until the current take has played out (bounded); True if it did."""
        deadline = time.monotonic() + timeout_s
        while self.ring is not None and not self.ring.drained:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            finally:
                self.stream = None
        self.ring = None


def tty_keys() -> Callable[[], str] | None:
    """A function reading one key press from the terminal, or None without a terminal."""
    if not sys.stdin.isatty():
        return None
    try:
        import termios
        import tty

        fd = os.open("/dev/tty", os.O_RDONLY)
    except (ImportError, OSError):
        return None

    def read_key() -> str:
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            return os.read(fd, 1).decode(errors="replace")
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    return read_key


class Audition:
    """Glue for the CLI: `on_chunk` streams output 0 to the player; `finish` waits for it, then lets the
    user step through the takes: n/p next/previous, r replay, q quit."""

    def __init__(self, player: Player, out: TextIO | None = None) -> None:
        self.player, self.out = player, out or sys.stderr

    def on_chunk(self, variation: int, x: np.ndarray, sample_rate: int, last: bool) -> None:
        if variation == 0:
            self.player.feed(x, sample_rate)
            if last:
                self.player.end_of_take()

    def finish(self, takes: list[np.ndarray], sample_rate: int, keys: Callable[[], str] | None = None) -> None:
        if not takes:
            return
        if self.player.ring is None:  # no chunk was streamed (e.g. the audio arrived before playback)
            self.player.play(takes[0], sample_rate)
        self.player.wait(takes[0].shape[1] / sample_rate + 5.0)
        i = 0
        while keys is not None:
            print(f"take {i + 1}/{len(takes)}: [n]ext [p]revious [r]eplay [q]uit", file=self.out, flush=True)
            key = keys().lower()
            if key in ("q", "\x1b", "\x04", ""):
                break
            if key not in "npr":
                continue
            i = (i + 1) % len(takes) if key == "n" else (i - 1) % len(takes) if key == "p" else i
            self.player.play(takes[i], sample_rate)
        self.player.stop()
