"""magnet-rt engine: MAGNeT (Ziv et al., ICLR 2024) computed exactly like the released checkpoints.

    from magnet_rt import DecodeParams
    from magnet_rt.checkpoints import load_audiocraft_lm
    from magnet_rt.decoding import decode_single
    lm = load_audiocraft_lm("path/to/magnet-small-10secs")
    codes = decode_single(lm, text_hidden, text_mask, frames=500, params=DecodeParams(), seed=1)
"""

from __future__ import annotations

from .errors import (
    CheckpointError,
    DecodeCancelled,
    InvalidAudio,
    InvalidParams,
    InvalidRegion,
    MagnetError,
    UnsupportedConfig,
)
from .lm import RELEASED_SHAPES, MagnetConfig, MagnetLM
from .params import DecodeParams

__all__ = [
    "RELEASED_SHAPES",
    "DecodeCancelled",
    "CheckpointError",
    "DecodeParams",
    "InvalidAudio",
    "InvalidParams",
    "InvalidRegion",
    "MagnetConfig",
    "MagnetError",
    "MagnetLM",
    "MagnetPipeline",
    "UnsupportedConfig",
]


def __getattr__(name: str):
    if name == "MagnetPipeline":  # imports transformers: only when asked for
        from .pipeline import MagnetPipeline

        return MagnetPipeline
    raise AttributeError(name)
