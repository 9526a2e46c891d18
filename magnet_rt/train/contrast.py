"""Counterfactual captions: make the LM use the words it can ignore in teacher forcing.

With half of a clip's tokens visible, its key and tempo can be read off the context, so the held-out
cross-entropy barely depends on those words (the demo LM at 2800 steps: moving the caption's key by a tritone
raised stage-0 CE by 0.41 nats, changing its tempo by 50 bpm by 0.000; docs/TRAINING.md 5.3). The contrast
term asks that the true caption explain the clip's tokens better than the same caption with its key or
tempo changed, by a margin: mean over rows of relu(margin - (CE(counterfactual) - CE(true))), on the same
masked batch. Captions without a key or tempo phrase are left out of it. With `near_keys`, a share of the key
counterfactuals are the keys a key estimate confuses with the true one (MIREX's fifth, relative and parallel
keys), where the LM's takes miss most (docs/TRAINING.md 3.8).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..tempo import TEMPO_PHRASE
from ..tonality import KEY_PHRASE, prompt_key
from .datagen import KEYS


def _draw(generator: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def with_key_moved(caption: str, semitones: int) -> str | None:
    """`caption` with its key's tonic moved by `semitones` (mode kept, the tonic spelt as the datagen spells
    it); None when it names no key (`tonality.KEY_PHRASE`, the rule the key input reads)."""
    m = KEY_PHRASE.search(caption)
    if m is None:
        return None
    tonic, _ = prompt_key(m.group(0))
    return with_key(caption, tonic + semitones, m.group(3))


def with_key(caption: str, tonic: int, mode: str) -> str | None:
    """`caption` with its key replaced by `tonic` (0..11, spelt as the datagen spells it) and `mode`; None when
    it names no key."""
    m = KEY_PHRASE.search(caption)
    if m is None:
        return None
    return f"{caption[:m.start()]}{KEYS[tonic % 12]} {mode}{caption[m.end():]}"


def near_key(tonic: int, mode: str, which: int) -> tuple[int, str]:
    """The `which`-th (0..3) of the keys closest to (tonic, mode): a fifth up, a fifth down, the relative and
    the parallel key."""
    other = "minor" if mode == "major" else "major"
    relative = (tonic + (9 if mode == "major" else 3)) % 12
    nearest = (((tonic + 7) % 12, mode), ((tonic + 5) % 12, mode), (relative, other), (tonic, other))
    return nearest[which]


def with_tempo(caption: str, change: Callable[[float], float]) -> str | None:
    """`caption` with its "N bpm" replaced by round(change(N)); None when it names no tempo."""
    m = TEMPO_PHRASE.search(caption)
    if m is None:
        return None
    return f"{caption[:m.start()]}{round(change(float(m.group(1))))} bpm{caption[m.end():]}"


DRUMS_ON = re.compile(r"\b(?:no|without) drums\b")
DRUMS_OFF = (re.compile(r"\bwith drums\b"), re.compile(r" and drums\b"))
TEMPO_JOINT = re.compile(r"(?: at|,) \d")  # where the datagen's drum-less templates would say " and drums"


def with_drums(caption: str, drums: bool) -> str | None:
    """`caption` saying the opposite about drums in the datagen's words ("with drums" <-> "no drums", " and
    drums" <-> none), everything else kept; None when it already says `drums` or cannot be rewritten."""
    has_drums = bool(DRUMS_OFF[0].search(caption) or DRUMS_OFF[1].search(caption))
    if has_drums == drums:
        return None
    if not drums:
        out = DRUMS_OFF[0].sub("no drums", caption, count=1)
        return out if out != caption else DRUMS_OFF[1].sub("", caption, count=1)
    out = DRUMS_ON.sub("with drums", caption, count=1)
    if out != caption:
        return out
    m = TEMPO_PHRASE.search(caption)
    joint = TEMPO_JOINT.search(caption, max(0, m.start() - 5)) if m else None
    if joint is None or joint.end() - 1 != m.start():
        return None
    return f"{caption[:joint.start()]} and drums{caption[joint.start():]}"


def with_drums_turned(caption: str) -> str | None:
    """`caption` saying the opposite of what it says about drums (`with_drums`); None when it cannot."""
    return with_drums(caption, True) or with_drums(caption, False)


def counterfactual(caption: str | None, generator: torch.Generator, near_keys: float = 0.0,
                   kinds: tuple[str, ...] = ("key", "tempo")) -> str | None:
    """`caption` with its key moved by 1-11 semitones (mode kept) or its tempo scaled by 1.3-1.6 or its
    inverse (never near half or double time) or, when `kinds` has "drums", its drums turned over, one of
    those it names chosen at random; None when it names none. With probability `near_keys` a key
    counterfactual is instead one of the four nearest keys (`near_key`), drawn uniformly (no extra draw when
    `near_keys` is 0, so the draws are those of a run without it)."""
    if not caption:
        return None
    found = {"key": KEY_PHRASE.search(caption), "tempo": TEMPO_PHRASE.search(caption),
             "drums": "drums" in kinds and with_drums_turned(caption)}
    choices = [kind for kind in ("key", "tempo", "drums") if kind in kinds and found[kind]]
    if not choices:
        return None
    kind = choices[_draw(generator, len(choices))]
    if kind == "drums":
        return found["drums"]
    if kind == "key":
        if near_keys > 0 and float(torch.rand(1, generator=generator)) < near_keys:
            return with_key(caption, *near_key(*prompt_key(caption), _draw(generator, 4)))
        return with_key_moved(caption, 1 + _draw(generator, 11))
    factor = 1.3 + 0.3 * float(torch.rand(1, generator=generator))
    return with_tempo(caption, lambda bpm: bpm * factor if _draw(generator, 2) else bpm / factor)


def contrast_hinge(ce_true: torch.Tensor, ce_counter: torch.Tensor, rows: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-row cross-entropies [B] of the true and the counterfactual captions, `rows` [B] bool (those with
    a counterfactual) -> the mean hinge over them (0 when none)."""
    if not bool(rows.any()):
        return ce_true.sum() * 0.0
    return torch.relu(margin - (ce_counter - ce_true))[rows].mean()
