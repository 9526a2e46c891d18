"""Writing a finished request to disk: one WAV per output (`out.wav`, `out-2.wav`, ...), optional loudness
normalisation, and the `--json` summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clients.client import Result

SUBTYPES = ("FLOAT", "PCM_16", "PCM_24")


def output_paths(base: str | Path, n: int) -> list[Path]:
    """`out.wav` for the first output, then `out-2.wav`, `out-3.wav`, ... (1-based, like the takes)."""
    base = Path(base)
    suffix = base.suffix or ".wav"
    stem = base.name[: -len(base.suffix)] if base.suffix else base.name
    return [base.with_name(f"{stem}{suffix}") if i == 0 else base.with_name(f"{stem}-{i + 1}{suffix}")
            for i in range(n)]


def normalize(takes: list[np.ndarray], sample_rate: int, lufs: float) -> list[np.ndarray]:
    """Each take to `lufs` integrated loudness, peaks held under -1 dBFS as the engine finishes a take
    (magnet_rt.audio.loudness_normalize with its limiter)."""
    from magnet_rt.audio import TAKE_LIMIT_DB, loudness_normalize  # imports the engine (torch): only when asked

    return [loudness_normalize(x, sample_rate, target_lufs=lufs, max_limit_db=TAKE_LIMIT_DB) for x in takes]


def write_takes(result: Result, base: str | Path, subtype: str = "FLOAT", loudness: float | None = None) -> list[Path]:
    import soundfile

    takes = result.audio
    if loudness is not None:
        takes = normalize(takes, result.sample_rate, loudness)
    paths = output_paths(base, len(takes))
    for path, x in zip(paths, takes, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), np.ascontiguousarray(x.T), result.sample_rate, subtype=subtype)
    return paths


def summary(result: Result, paths: list[Path]) -> str:
    """The `--json` object: where the takes went and how they were made."""
    return json.dumps({
        "paths": [str(p) for p in paths], "request_id": result.request_id, "seed": result.seed,
        "seeds": result.seeds, "sample_rate": result.sample_rate, "duration_s": result.duration_s,
        "frames": result.frames, "model": result.model, "batch_size": result.batch_size,
        "timings": result.timings,
    })
