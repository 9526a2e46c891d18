"""Counterfactual captions: make the LM use the words it can ignore in teacher forcing.

With half of a clip's tokens visible, its key and tempo can be read off the context, so the held-out
cross-entropy barely depends on those words (the demo LM at 2800 steps: moving the caption's key by a tritone
raised stage-0 CE by 0.41 nats, changing its tempo by 50 bpm by 0.000; docs/TRAINING.md 5.3). The contrast
term asks that the true caption explain the clip's tokens better than the same caption with its key or
tempo changed, by a margin: mean over rows of relu(margin - (CE(counterfactual) - CE(true))), on the same
masked batch. Captions without a key or tempo phrase are left out of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from .datagen import KEYS

KEY_PHRASE = re.compile(r"\b([A-G](?:#|b)?) (major|minor)\b")
TEMPO_PHRASE = re.compile(r"\b(\d{2,3}) bpm\b")


def _draw(generator: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def _key_phrase(caption: str) -> re.Match | None:
    m = KEY_PHRASE.search(caption)
    return m if m and m.group(1) in KEYS else None


def with_key_moved(caption: str, semitones: int) -> str | None:
    """`caption` with its key's tonic moved by `semitones` (mode kept); None when it names no key."""
    m = _key_phrase(caption)
    if m is None:
        return None
    return f"{caption[:m.start()]}{KEYS[(KEYS.index(m.group(1)) + semitones) % 12]} {m.group(2)}{caption[m.end():]}"


def with_tempo(caption: str, change: Callable[[int], float]) -> str | None:
    """`caption` with its "N bpm" replaced by round(change(N)); None when it names no tempo."""
    m = TEMPO_PHRASE.search(caption)
    if m is None:
        return None
    return f"{caption[:m.start()]}{round(change(int(m.group(1))))} bpm{caption[m.end():]}"


def counterfactual(caption: str | None, generator: torch.Generator) -> str | None:
    """`caption` with its key moved by 1-11 semitones (mode kept) or its tempo scaled by 1.3-1.6 or its
    inverse (never near half or double time), chosen at random; None when it names neither."""
    if not caption:
        return None
    choices = [kind for kind, m in (("key", _key_phrase(caption)), ("tempo", TEMPO_PHRASE.search(caption))) if m]
    if not choices:
        return None
    if choices[_draw(generator, len(choices))] == "key":
        return with_key_moved(caption, 1 + _draw(generator, 11))
    factor = 1.3 + 0.3 * float(torch.rand(1, generator=generator))
    return with_tempo(caption, lambda bpm: bpm * factor if _draw(generator, 2) else bpm / factor)


def contrast_hinge(ce_true: torch.Tensor, ce_counter: torch.Tensor, rows: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-row cross-entropies [B] of the true and the counterfactual captions, `rows` [B] bool (those with
    a counterfactual) -> the mean hinge over them (0 when none)."""
    if not bool(rows.any()):
        return ce_true.sum() * 0.0
    return torch.relu(margin - (ce_counter - ce_true))[rows].mean()
