"""The rescorer's interface as `typing.Protocol`s (the pipeline's is `jobs.Pipeline`).

`Rescorer` is what `decoding.decode` calls between sampling and scoring (Ziv et al., Eq. 5);
`BindableRescorer` one that is conditioned on each batch's text and told which rows are left
(`rescoring.MusicgenRescorer`). Test rescorers are plain callables.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


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
