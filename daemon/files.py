"""Files the daemon may read: the policy for `source.path` (the daemon writes none; the OSC bridge's WAV takes
go to clients/output_dir.py's folder).

Reading (`PathPolicy`): a path must be absolute, have no `..` component, and resolve (realpath, so every
symlink is followed) to a regular file inside one of the `--allow-dir` folders; with no folder allowed every
path is refused. The file is opened with O_NOFOLLOW|O_NONBLOCK and checked again on the open descriptor, so a
symlink or fifo swapped in after the check is not followed or waited on. Refusals raise
ProtocolError(forbidden_path); unreadable or unsuitable audio raises ProtocolError(invalid_audio).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import soundfile as sf

from protocol import ErrorCode, ProtocolError

MIN_RATE, MAX_RATE = 8000, 192000


def _forbidden(path: str, why: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN_PATH, f"source.path {why}", details={"path": path[:64]})


def _bad_audio(why: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_AUDIO, f"source.path: {why}", details={"field": "source.path"})


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


class PathPolicy:
    def __init__(self, allow_dirs: list[str | Path] = ()):
        self.allowed: list[str] = []
        for d in allow_dirs:
            real = os.path.realpath(d)
            if not os.path.isdir(real):
                raise ValueError(f"--allow-dir {d}: not a folder")
            self.allowed.append(real)

    def resolve(self, path: str) -> str:
        """The real path of an allowed regular file, else ProtocolError(forbidden_path)."""
        if not self.allowed:
            raise _forbidden(path, "is refused: this daemon reads no files (start it with --allow-dir DIR)")
        if "\x00" in path or not os.path.isabs(path):
            raise _forbidden(path, "must be an absolute path")
        if ".." in Path(path).parts:
            raise _forbidden(path, "must not contain '..'")
        real = os.path.realpath(path)
        if not any(_inside(real, d) for d in self.allowed):
            raise _forbidden(path, "is not inside a folder this daemon may read")
        try:
            st = os.stat(real)
        except OSError as exc:
            raise _bad_audio(f"cannot read the file ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise _forbidden(path, "is not a regular file")
        return real

    def read_audio(self, path: str, max_s: float) -> tuple[np.ndarray, int]:
        """Audio [C, N] float32 and its rate from an allowed file of at most `max_s` seconds."""
        real = self.resolve(path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _bad_audio(f"cannot open the file ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _forbidden(path, "is not a regular file")
            try:
                with sf.SoundFile(f) as snd:
                    rate, channels, frames = snd.samplerate, snd.channels, snd.frames
                    if not MIN_RATE <= rate <= MAX_RATE or not 1 <= channels <= 2:
                        raise _bad_audio(f"{rate} Hz, {channels} channels: need 1-2 channels at 8000-192000 Hz")
                    if frames <= 0 or frames / rate > max_s + 1e-9:
                        raise _bad_audio(f"the file is {frames / rate:.2f} s long; it must be (0, {max_s:g}] s")
                    data = snd.read(dtype="float32", always_2d=True)  # [N, C]
            except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
                raise _bad_audio(f"not a readable audio file ({exc})"[:300]) from None
        if not data.size or not np.isfinite(data).all():
            raise _bad_audio("the file is empty or holds NaN/inf samples")
        return np.ascontiguousarray(data.T), rate
