"""The key input: a prompt's key as an input of the LM (the demo model's; released checkpoints have none).

Musicians write the key into the prompt ("... in E minor"), as they write the tempo (`tempo.py`). A model whose
config has `key_features` > 0 reads it from there and adds, to every frame of the conditioned rows, a learned
projection of

    key_vector = [onehot(tonic) (12), scale(tonic, mode) (12)]

where `scale` marks the seven pitch classes of the key's major or natural minor scale. Relative keys share the
scale half and differ in the tonic half, so what the model learns for one key carries to its neighbours. A
prompt without a key, and the CFG null rows, get an all-zero vector: the model's "no key given" (trained by
dropping the vector at random).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["KEY_FEATURES", "KEY_PHRASE", "PITCH_CLASSES", "SCALES", "prompt_key", "key_vector", "key_vectors"]

PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "sharp": 1, "b": -1, "♭": -1, "flat": -1}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
KEY_FEATURES = 24
# "E minor", "Eb Major", "F# minor", "F sharp minor", "B-flat major": a capital letter standing alone (so "a major
# hit" names no key), then the mode in any case
KEY_PHRASE = re.compile(r"(?<![\w#♯♭])([A-G])(#|♯|b|♭|(?i:[ -]sharp|[ -]flat))?\s+((?i:major|minor))\b")


def prompt_key(prompt: str | None) -> tuple[int, str] | None:
    """The first key a prompt names as (tonic pitch class 0..11, "major" | "minor"); None when it names none."""
    m = KEY_PHRASE.search(prompt or "")
    if m is None:
        return None
    accidental = (m.group(2) or "").strip(" -").lower()  # the letter forms match lower-case only: "b", not "B"
    tonic = (PITCH_CLASSES[m.group(1)] + ACCIDENTALS[accidental]) % 12
    return tonic, m.group(3).lower()


def key_vector(key: tuple[int, str] | None) -> Tensor:
    """[KEY_FEATURES] float32: one key's input (zeros when `key` is None)."""
    v = torch.zeros(KEY_FEATURES)
    if key is None:
        return v
    tonic, mode = key
    v[tonic] = 1.0
    for step in SCALES[mode]:
        v[12 + (tonic + step) % 12] = 1.0
    return v


def key_vectors(prompts: Sequence[str | None]) -> Tensor:
    """[B, KEY_FEATURES]: each prompt's key input."""
    return torch.stack([key_vector(prompt_key(p)) for p in prompts]) if prompts else torch.zeros(0, KEY_FEATURES)
