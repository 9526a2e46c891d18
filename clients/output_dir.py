"""The OSC bridge's output folder: each take a WAV written atomically under a name of ours, and the files older
than a TTL removed (`cleanup`). `magnet-rt serve --osc` hands the daemon's folder (its --output-dir) to the bridge."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

OUTPUT_PREFIX = "magnet-"


def default_output_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "magnet-rt" / "outputs"


class OutputDir:
    def __init__(self, root: str | Path | None = None, ttl_s: float = 3600.0):
        self.root = Path(root) if root is not None else default_output_dir()
        self.ttl_s = float(ttl_s)

    def ensure(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.root

    def holds(self, path: str) -> str | None:
        """The real path of `path` if it names a regular file inside this folder (a take we wrote), else None."""
        if "\x00" in path or not os.path.isabs(path) or ".." in Path(path).parts:
            return None
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        return real if os.path.commonpath([real, root]) == root and os.path.isfile(real) else None

    def write_wav(self, audio: np.ndarray, sample_rate: int, name_hint: str = "") -> str:
        """Write float audio [C, N] or [N] as 32-bit float WAV; returns the absolute path."""
        x = np.asarray(audio, dtype=np.float32)
        frames = x[:, None] if x.ndim == 1 else x.T  # soundfile wants [N, C]
        safe = "".join(c for c in name_hint if c.isalnum() or c in "-_")[:32]
        name = f"{OUTPUT_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{safe + '-' if safe else ''}{uuid.uuid4().hex[:8]}.wav"
        root = self.ensure()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".wav", dir=root)
        try:
            with os.fdopen(fd, "wb") as f:
                sf.write(f, frames, int(sample_rate), subtype="FLOAT", format="WAV")
            final = root / name
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(final.resolve())

    def cleanup(self, now: float | None = None) -> int:
        """Remove our WAV files (and stale temp files) older than the TTL; returns how many."""
        if not self.root.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.ttl_s
        removed = 0
        for entry in os.scandir(self.root):
            ours = entry.name.startswith((OUTPUT_PREFIX, ".tmp-")) and entry.name.endswith(".wav")
            if not ours or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
