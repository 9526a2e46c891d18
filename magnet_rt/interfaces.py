"""The engine's interfaces as `typing.Protocol`s: what a caller may rely on, whatever implements it.

`Pipeline` is what the daemon and the engine's own request helpers (`longform`, `regions`, `hybrid`,
`loop`) use of `pipeline.MagnetPipeline`; a stand-in (another process, another machine) implements the
same. `Rescorer` is what `decoding.decode` calls between sampling and scoring (Ziv et al., Eq. 5);
`BindableRescorer` one that is conditioned on each batch's text and told which rows are left.
Only annotations import the engine's classes: this module adds no import edge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .codec import Codec
    from .conditioning import TextEncoder
    from .decoding import StepEvent
    from .lm import MagnetLM
    from .pipeline import Job, JobResult, Prepared
    from .spectral_codec import SpectralCodec


@runtime_checkable
class Rescorer(Protocol):
    """(codes [B, K, T] with this step's samples in place, stage) -> probabilities [B, T] that an external
    model gives codes[:, stage, t]."""

    def __call__(self, codes: Tensor, stage: int) -> Tensor: ...


@runtime_checkable
class BindableRescorer(Protocol):
    """A rescorer conditioned row by row on a batch's text (`bind`), called with the batch rows still
    decoding (`rows`, after cancellations)."""

    name: str

    def bind(self, text_hidden: Tensor | None, text_mask: Tensor | None) -> BindableRescorer: ...

    def __call__(self, codes: Tensor, stage: int, rows: Tensor | None = None) -> Tensor: ...


class Pipeline(Protocol):
    """Prompts -> audio, in batches of jobs (`run_batch`), plus the facts a caller plans with."""

    lm: MagnetLM
    codec: Codec | SpectralCodec
    text_encoder: TextEncoder
    rescorer: Rescorer | None

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_rate(self) -> int: ...

    @property
    def segment_duration(self) -> float: ...

    @property
    def device(self) -> torch.device: ...

    def frames_for(self, duration_s: float | None) -> int: ...

    def run_batch(self, jobs: list[Job], on_step: Callable[[int, StepEvent], None] | None = None,
                  is_cancelled: Callable[[int], bool] | None = None) -> list[JobResult | None]: ...

    def prepare_inpaint(self, audio, sample_rate: int, start_s: float, end_s: float, prompt: str | None,
                        params=None, seed: int | None = None, variations: int = 1, fade_s: float = ...) -> Prepared: ...

    def prepare_continue(self, audio, sample_rate: int, prompt: str | None, duration_s: float, params=None,
                         seed: int | None = None, variations: int = 1, fade_s: float = ...) -> Prepared: ...
