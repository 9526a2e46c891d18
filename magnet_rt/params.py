"""Decoding parameters: one validated dataclass with the release's defaults.

Defaults are `MAGNeT.set_generation_params` (audiocraft `magnet.py:60-88`) plus `anneal_temp=True`
and `span_scoring='max'` from `_generate_magnet`'s signature: one set for all six checkpoints.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InvalidParams

SPAN_ARRANGEMENTS = ("nonoverlap", "stride1")
SPAN_SCORINGS = ("max", "prod")
MAX_STEPS_PER_STAGE = 200

# Seeds, in one place. A request's seed s gives its variation v the seed s + v (and a long-form window
# more): a seed is accepted below MAX_SEED, picked at random below PICKED_SEEDS, and derived seeds are
# folded back below PICKED_SEEDS, which leaves room for the variations under torch's 2^64.
MAX_SEED = 2**63 - 1024  # exclusive
PICKED_SEEDS = 2**62  # exclusive


def pick_seed(seed: int | None = None) -> int:
    """`seed` checked, or a random one when None."""
    if seed is None:
        return secrets.randbits(62)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise InvalidParams(f"seed must be an integer in [0, 2^63 - 1024), got {seed!r}")
    return seed


@dataclass(frozen=True)
class DecodeParams:
    decoding_steps: tuple[int, ...] = (20, 10, 10, 10)  # one entry per codebook
    span_arrangement: str = "nonoverlap"  # 'stride1' is what the authors recommend for quality
    span_scoring: str = "max"  # nonoverlap only: 1 - max p in the span ('max') or sum -log p ('prod')
    use_sampling: bool = True  # False: argmax of the CFG logits
    temperature: float = 3.0  # annealed linearly to 0 (floored at 0.01) when anneal_temperature
    anneal_temperature: bool = True
    top_p: float = 0.9  # in (0, 1]; 1.0 = off (keeps every token: plain multinomial)
    top_k: int = 0  # 0 = off; used only when top-p is off (as the release checks top_p first)
    max_cfg_coef: float = 10.0  # CFG annealed from max (all masked) to min (none masked)
    min_cfg_coef: float = 1.0
    higher_cfg_coef: float | None = None  # max_cfg_coef of codebooks 2..K (None: max_cfg_coef, as released)
    rescore_weight: float = 0.0  # reserved for the paper's rescoring (Eq. 5); 0 = off

    def __post_init__(self) -> None:
        steps = self.decoding_steps
        if isinstance(steps, list):
            object.__setattr__(self, "decoding_steps", tuple(steps))
            steps = self.decoding_steps
        if not isinstance(steps, tuple) or not steps:
            raise InvalidParams("decoding_steps must be a non-empty list of step counts, one per codebook")
        for s in steps:
            if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_STEPS_PER_STAGE:
                raise InvalidParams(f"decoding_steps entries must be integers in 1..{MAX_STEPS_PER_STAGE}, got {s!r}")
        if self.span_arrangement not in SPAN_ARRANGEMENTS:
            raise InvalidParams(f"span_arrangement must be one of {SPAN_ARRANGEMENTS}, got {self.span_arrangement!r}")
        if self.span_scoring not in SPAN_SCORINGS:
            raise InvalidParams(f"span_scoring must be one of {SPAN_SCORINGS}, got {self.span_scoring!r}")
        for name in ("use_sampling", "anneal_temperature"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParams(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("temperature", "max_cfg_coef", "min_cfg_coef"):
            _check_float(name, getattr(self, name), lo=0.0)
        if self.higher_cfg_coef is not None:
            _check_float("higher_cfg_coef", self.higher_cfg_coef, lo=0.0)
        _check_float("top_p", self.top_p, lo=0.0, hi=1.0)
        if self.top_p == 0.0:
            raise InvalidParams("top_p must be in (0, 1]; use 1.0 to turn top-p off")
        _check_float("rescore_weight", self.rescore_weight, lo=0.0, hi=1.0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidParams(f"top_k must be an integer >= 0, got {self.top_k!r}")

    def check_stages(self, n_q: int) -> None:
        if len(self.decoding_steps) != n_q:
            raise InvalidParams(
                f"decoding_steps has {len(self.decoding_steps)} entries but the model has {n_q} codebooks")

    def start_cfg_coef(self, stage: int) -> float:
        """The CFG coefficient at the start of codebook `stage` (0-based), annealed to min_cfg_coef."""
        return self.max_cfg_coef if stage == 0 or self.higher_cfg_coef is None else self.higher_cfg_coef

    @property
    def total_steps(self) -> int:
        return sum(self.decoding_steps)

    def with_overrides(self, overrides: dict[str, Any] | None) -> DecodeParams:
        """A copy with `overrides` applied; unknown keys raise InvalidParams naming them."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidParams(f"unknown decoding parameter(s): {', '.join(unknown)}")
        values = dict(overrides)
        if "decoding_steps" in values and isinstance(values["decoding_steps"], list):
            values["decoding_steps"] = tuple(values["decoding_steps"])
        for name in ("temperature", "top_p", "max_cfg_coef", "min_cfg_coef", "higher_cfg_coef", "rescore_weight"):
            if name in values and isinstance(values[name], int) and not isinstance(values[name], bool):
                values[name] = float(values[name])
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoding_steps"] = list(self.decoding_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodeParams:
        return cls().with_overrides(d)


def _check_float(name: str, value: Any, lo: float, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParams(f"{name} must be a finite number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidParams(f"{name} must be {bound}, got {value!r}")
