"""Typed exceptions raised by the magnet-rt engine.

Callers (pipeline, daemon, CLI) map these onto protocol error codes, so keep the
set small and the names stable.
"""

from __future__ import annotations

__all__ = [
    "DecodeCancelled",
    "CheckpointError",
    "InvalidAudio",
    "InvalidParams",
    "InvalidRegion",
    "MagnetError",
    "UnsupportedConfig",
]


class MagnetError(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(MagnetError):
    """A checkpoint file is missing, truncated/corrupt, has wrong keys or shapes,
    or carries pickled code (refused: only plain tensors/containers are loaded)."""


class UnsupportedConfig(CheckpointError):
    """A checkpoint's configuration uses an option this engine cannot express
    (the message names the option)."""


class InvalidParams(MagnetError, ValueError):
    """Generation parameters are out of range or inconsistent."""


class InvalidAudio(MagnetError, ValueError):
    """Input audio is empty, contains NaN/inf, has a bad shape or a bad sample rate."""


class InvalidRegion(MagnetError, ValueError):
    """A time region (e.g. an inpainting span) is empty, reversed or outside the audio."""


class DecodeCancelled(MagnetError):
    """The request was cancelled before it finished."""
