"""The installed magnet-rt's version: what `welcome.daemon_version` reports and every front end prints."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """The installed distribution's version, "0.0.0" when run from a source tree that is not installed."""
    try:
        return metadata.version("magnet-rt")
    except metadata.PackageNotFoundError:
        return "0.0.0"
