"""The beat grid: a take's tempo as a per-frame input of the LM (the demo model's; released checkpoints have none).

Musicians write the tempo into the prompt ("... 120 bpm"), as DAW bridges do with the host tempo. A model whose
config has `beat_features` > 0 reads it from there and adds, to every frame of the conditioned rows, a learned
projection of the beat phase at that frame:

    phase(t) = (first_frame + t) / frame_rate * bpm / 60              # beats since the grid's downbeat
    grid[t]  = [cos(2 pi h phase(t)), sin(2 pi h phase(t)) for h in BEAT_HARMONICS]

with h in cycles per beat (a 4/4 bar, half a bar, the beat, eighths, sixteenths). `first_frame` is the frame
the decoded window starts at, counted from the downbeat (0 for a take; a long take's later windows and a
region of a song carry it, so the grid runs on across windows). A prompt without a tempo, and the CFG null
rows, get an all-zero grid: the model's "no tempo given" (trained by dropping the grid at random).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import InvalidParams

__all__ = ["BEAT_HARMONICS", "BEAT_FEATURES", "TEMPO_PHRASE", "prompt_bpm", "beat_grid", "beat_grids"]

BEAT_HARMONICS = (0.25, 0.5, 1.0, 2.0, 4.0)  # cycles per beat
BEAT_FEATURES = 2 * len(BEAT_HARMONICS)
TEMPO_PHRASE = re.compile(r"\b(\d+(?:\.\d+)?) ?bpm\b", re.IGNORECASE)


def prompt_bpm(prompt: str | None) -> float | None:
    """The first "N bpm" (or "Nbpm") of a prompt, None when it names no tempo (0 bpm: InvalidParams). Which
    tempi a service accepts is its own call (the daemon: protocol.PROMPT_BPM_RANGE)."""
    m = TEMPO_PHRASE.search(prompt or "")
    if m is None:
        return None
    bpm = float(m.group(1))
    if bpm <= 0:
        raise InvalidParams(f"prompt tempo {m.group(0)!r} must be above 0 bpm")
    return bpm


def beat_grid(bpm: float | None, frames: int, first_frame: float = 0.0, frame_rate: int = 50) -> Tensor:
    """[frames, BEAT_FEATURES] float32: the grid of one row (zeros when `bpm` is None)."""
    if bpm is None:
        return torch.zeros(frames, BEAT_FEATURES)
    t = torch.arange(frames, dtype=torch.float64) + float(first_frame)
    phase = t / frame_rate * (bpm / 60.0)  # beats since the downbeat
    angles = 2 * math.pi * phase[:, None] * torch.tensor(BEAT_HARMONICS, dtype=torch.float64)[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1).flatten(1).float()


def beat_grids(prompts: Sequence[str | None], frames: int, first_frames: Sequence[float] | float = 0.0,
               frame_rate: int = 50) -> Tensor:
    """[B, frames, BEAT_FEATURES]: each prompt's grid (its own tempo, its own first frame)."""
    starts = [float(first_frames)] * len(prompts) if isinstance(first_frames, (int, float)) else list(first_frames)
    if len(starts) != len(prompts):
        raise ValueError(f"{len(starts)} first frames for {len(prompts)} prompts")
    return torch.stack([beat_grid(prompt_bpm(p), frames, s, frame_rate) for p, s in zip(prompts, starts, strict=True)])
