"""Named decoding presets from `presets.json`; a request may override any field."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from .errors import InvalidParams
from .params import DecodeParams

DEFAULT_PRESET = "balanced"


class UnknownPreset(InvalidParams):
    """The preset name is not in presets.json."""


@cache
def _table() -> dict[str, dict[str, Any]]:
    raw = json.loads(resources.files(__package__).joinpath("presets.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def preset_names() -> list[str]:
    return list(_table())


def preset_description(name: str) -> str:
    return _table()[name].get("description", "")


def resolve_params(preset: str | None = None, overrides: dict[str, Any] | None = None,
                   model_defaults: dict[str, Any] | None = None) -> DecodeParams:
    """The preset's parameters with `overrides` on top. Fields the preset leaves out come from
    `model_defaults` (a model's own decoding defaults, `MagnetPipeline.decoding_defaults`), then from the
    release's defaults."""
    name = preset or DEFAULT_PRESET
    if name not in _table():
        raise UnknownPreset(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    fields = {k: v for k, v in _table()[name].items() if k != "description"}
    return DecodeParams().with_overrides(model_defaults).with_overrides(fields).with_overrides(overrides)
