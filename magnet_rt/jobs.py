"""A request as the engine runs it (`Job`), its result (`JobResult`), a request that needs several windows
or splicing (`Prepared`), and what a caller may rely on of a pipeline (`Pipeline`, a `typing.Protocol`).

`pipeline.MagnetPipeline` implements `Pipeline`; the engine's request helpers (`regions`, `longform`,
`hybrid`, `loop`) and the daemon are written against it, so a stand-in (another process, another machine)
can take its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from .params import DecodeParams

if TYPE_CHECKING:
    from .codec import Codec
    from .conditioning import TextEncoder
    from .decoding import StepEvent
    from .graphs import StepGraphs
    from .interfaces import Rescorer
    from .lm import MagnetLM
    from .presets import ModelDecoding
    from .spectral_codec import SpectralCodec


@dataclass
class Job:
    """One request: prompts x variations rows decoded together."""

    prompts: list[str | None]
    frames: int
    params: DecodeParams
    seed: int
    variations: int = 1
    fixed: Tensor | None = None  # [K, frames] bool: pinned positions
    init_codes: Tensor | None = None  # [K, frames] (or [variations, K, frames]) codes at the pinned positions
    first_frame: float = 0.0  # where frame 0 sits on the beat grid: frames since the first downbeat (`tempo.py`)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.variations

    def pinned(self, row: int) -> tuple[Tensor, Tensor]:
        """(fixed, init_codes) [K, frames] of row `row`: `init_codes` may be [variations, K, frames]."""
        init = self.init_codes if self.init_codes.dim() == 2 else self.init_codes[row % self.variations]
        return self.fixed, init

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a batch."""
        return (self.frames, self.params)

    def row_seeds(self) -> list[int]:
        """Variation v of every prompt draws from seed + v: each take can be re-made on its own."""
        return [self.seed + v for _ in self.prompts for v in range(self.variations)]


@dataclass
class JobResult:
    codes: Tensor  # [rows, K, frames]
    audio: np.ndarray  # [rows, C, samples] float32 at the codec's sample rate
    sample_rate: int
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1  # how many jobs shared the batch



@dataclass
class Prepared:
    """A job plus what turns its result into the user's audio (splicing into the source)."""

    job: Job
    finish: Callable[[JobResult], JobResult]
    step: Callable[[JobResult], Job | None] | None = None  # several windows: record one, get the next (or None)
    windows: int = 1


class Pipeline(Protocol):
    """Prompts -> audio, in batches of jobs (`run_batch`), plus the facts a caller plans with."""

    lm: MagnetLM
    codec: Codec | SpectralCodec
    text_encoder: TextEncoder
    rescorer: Rescorer | None
    decoding: ModelDecoding  # the model's own decoding choices (presets.resolve_params takes them)

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_rate(self) -> int: ...

    @property
    def segment_duration(self) -> float: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def graphs(self) -> StepGraphs | None: ...

    def frames_for(self, duration_s: float | None) -> int: ...

    def run_batch(self, jobs: list[Job], on_step: Callable[[int, StepEvent], None] | None = None,
                  is_cancelled: Callable[[int], bool] | None = None) -> list[JobResult | None]: ...

    def prepare_inpaint(self, audio, sample_rate: int, start_s: float, end_s: float, prompt: str | None,
                        params=None, seed: int | None = None, variations: int = 1, fade_s: float = ...,
                        downbeat_s: float = 0.0) -> Prepared: ...

    def prepare_continue(self, audio, sample_rate: int, prompt: str | None, duration_s: float, params=None,
                         seed: int | None = None, variations: int = 1, fade_s: float = ...) -> Prepared: ...
