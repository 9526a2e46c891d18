"""Named decoding presets from `presets.json`; a model may adjust them (`ModelDecoding`) and a request may
override any field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ModelDecoding:
    """A model's own decoding choices, a bundle's `decoding`: `defaults` (DecodeParams fields) sit under
    every preset, `presets` ({preset name: fields}) over the named preset; a request overrides both.
    The released checkpoints have none (the release's defaults); the demo model needs them
    (docs/TRAINING.md 5.3)."""

    defaults: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = DecodeParams().with_overrides(self.defaults)  # unknown fields and bad values raise here
        for name, fields in self.presets.items():
            if name not in _table():
                raise UnknownPreset(f"decoding for unknown preset {name!r}; known: {', '.join(preset_names())}")
            base.with_overrides(fields)

    @classmethod
    def from_config(cls, raw: dict[str, Any] | None) -> ModelDecoding:
        raw = {} if raw is None else raw
        if not isinstance(raw, dict) or set(raw) - {"defaults", "presets"}:
            raise InvalidParams("decoding must be an object with 'defaults' and/or 'presets'")
        defaults, presets = raw.get("defaults", {}), raw.get("presets", {})
        if not isinstance(defaults, dict) or not isinstance(presets, dict) or not all(
                isinstance(v, dict) for v in presets.values()):
            raise InvalidParams("decoding 'defaults' must be an object of fields, 'presets' an object of such objects")
        return cls(dict(defaults), {k: dict(v) for k, v in presets.items()})

    def to_config(self) -> dict[str, Any]:
        return {"defaults": dict(self.defaults), "presets": {k: dict(v) for k, v in self.presets.items()}}

    @property
    def default_params(self) -> DecodeParams:
        """What a call without params decodes with: the release's defaults with `defaults` on top."""
        return DecodeParams().with_overrides(self.defaults)


def resolve_params(preset: str | None = None, overrides: dict[str, Any] | None = None,
                   model: ModelDecoding | None = None) -> DecodeParams:
    """The preset's parameters with `overrides` on top. `model` (a pipeline's `decoding`) puts its defaults
    under the preset and its adjustment of this preset over it; fields nobody sets are the release's."""
    name = preset or DEFAULT_PRESET
    if name not in _table():
        raise UnknownPreset(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    model = model or ModelDecoding()
    fields = {k: v for k, v in _table()[name].items() if k != "description"}
    return (DecodeParams().with_overrides(model.defaults).with_overrides(fields)
            .with_overrides(model.presets.get(name)).with_overrides(overrides))
