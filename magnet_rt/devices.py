"""Device choice: CUDA, Apple MPS or CPU, automatically or as the user asks, and per-component rules.

- The transformer runs in fp16 on CUDA (as the release does under autocast); fp32 elsewhere.
- EnCodec decodes in fp16 on CUDA (with an fp32 retry on overflow); fp32 elsewhere.
- EnCodec stays on the CPU under MPS: its quantizer is reported to compute wrong codes there
  (audiocraft PR #612), so the codec never follows the LM onto MPS.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .errors import InvalidParams
from .lm import Attention


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit name must be available."""
    name = str(requested or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InvalidParams(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParams("device cuda requested but this torch has no CUDA device")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidParams("device mps requested but MPS is not available")
    return device


def cpu_threads(device: str | torch.device = "auto", requested: int | None = None, *, cpus: int | None = None,
                load: float | None = None) -> int:
    """Torch's CPU threads for an engine on `device`, measured in benchmarks/RESULTS.md ("CPU threads").
    `requested` wins, then OMP_NUM_THREADS (torch's current count). On a GPU the CPU only feeds it: 1. On a
    CPU: torch's default (the physical cores) less the cores already busy (1-minute load average over the
    `cpus` this process may use), at least 1, since OpenMP threads that share a busy core spin-wait on each
    other: on a 2-core machine with one core taken, 2 threads made a take ~2x slower than 1."""
    if requested:
        return requested
    if "OMP_NUM_THREADS" in os.environ:  # the user's own choice, which torch has read
        return torch.get_num_threads()
    if pick_device(device).type != "cpu":
        return 1
    cpus = cpus or len(os.sched_getaffinity(0))
    load = os.getloadavg()[0] if load is None else load
    return max(1, min(torch.get_num_threads(), cpus - round(load)))


@dataclass(frozen=True)
class FastestForms:
    """The faster of each pair of equivalent computations on one kind of device, by measurement."""

    static_steps: bool  # static decode steps (CUDA graphs) over dynamic ones
    attention: Attention  # banded or dense window attention for stages >= 1


# Measured side by side, same weights, same run (benchmarks/RESULTS.md). Static vs dynamic steps: "Static
# steps and CUDA graphs" (`python -m benchmarks.latency`), on both. Dense vs banded attention: "Attention
# form per device" (`python -m benchmarks.attention_forms`), on the CPU; on CUDA banded is kept as it was
# (not yet measured side by side there). A device type not measured keeps the forms it had before the
# measurements (dynamic steps, banded attention).
MEASURED_FORMS: dict[str, FastestForms] = {
    "cpu": FastestForms(static_steps=False, attention=Attention.DENSE),
    "cuda": FastestForms(static_steps=True, attention=Attention.BANDED),
}
UNMEASURED = FastestForms(static_steps=False, attention=Attention.BANDED)


def fastest_forms(device: str | torch.device) -> FastestForms:
    return MEASURED_FORMS.get(torch.device(device).type, UNMEASURED)


def lm_dtype(device: torch.device) -> torch.dtype:
    """The transformer blocks' dtype the release runs in on `device`."""
    return torch.float16 if device.type == "cuda" else torch.float32


def codec_half(device: torch.device) -> bool:
    """EnCodec decodes in fp16 on CUDA (a half copy of its decoder, fp32 again if the output overflows);
    fp16 convolutions gain nothing on a CPU."""
    return torch.device(device).type == "cuda"


def codec_device(requested: str | torch.device) -> torch.device:
    """Device the codec runs on for a requested engine device: MPS -> CPU (EnCodec's quantizer is
    reported to return wrong values on MPS: audiocraft PR #612, issue #31); others are kept."""
    device = torch.device(requested)
    return torch.device("cpu") if device.type == "mps" else device


class Stopwatch:
    """Named marks of a device's timeline. On CUDA the marks are events recorded on the stream (no host
    sync while work is queued, and the times are when the GPU got there, not when the host launched it);
    `durations` waits once for the last mark. Elsewhere the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list[tuple[str, object]] = []
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def durations(self) -> dict[str, float]:
        """Seconds from each mark to the next, by the later mark's name, and "total"."""
        if self.cuda:
            self.marks[-1][1].synchronize()
            gap = [a.elapsed_time(b) / 1000 for (_, a), (_, b) in zip(self.marks, self.marks[1:], strict=False)]
        else:
            gap = [b - a for (_, a), (_, b) in zip(self.marks, self.marks[1:], strict=False)]
        out = {name: g for (name, _), g in zip(self.marks[1:], gap, strict=True)}
        out["total"] = sum(gap)
        return out
