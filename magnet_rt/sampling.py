"""Token sampling: pure functions over probabilities, each drawing from the caller's generator.

Semantics follow audiocraft `utils.py:105-141` and `lm_magnet.py:393-414`:
- confidences come from the temperature-scaled CFG softmax;
- top-p keeps the tokens whose mass *before* them is <= p and renormalises a sorted copy (the
  confidences keep the full distribution);
- top-k renormalises the distribution itself, so with top-k the confidences are the truncated ones
  (the release modifies `probs` in place; magnet-reference gotcha 11).
Draws use the exponential race argmax(p / E), E ~ Exp(1) drawn per request group: the same
distribution as `multinomial`, with no host synchronisation (gpt-fast `generate.py:40-42`).
"""

from __future__ import annotations

import torch
from torch import Tensor

TEMPERATURE_FLOOR = 0.01  # `max(t, 1e-2)` in the release


def step_temperature(temperature: float, anneal: bool, steps_left: int, steps: int) -> float:
    """Linear annealing to 0 over a stage; the floor applies when dividing (`probs_at`)."""
    return temperature * (steps_left / steps) if anneal else temperature


def probs_at(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits.float() / max(temperature, TEMPERATURE_FLOOR), dim=-1)


def exponential_noise(shape: tuple[int, ...], generators: list[tuple[int, torch.Generator | None]],
                      device) -> Tensor:
    """Exp(1) noise [B, ...]: rows drawn group by group, each from its own generator, so a request's
    draws do not depend on what else shares the batch. `generators`: (rows, generator) in row order."""
    return torch.cat([torch.empty((rows, *shape[1:]), device=device).exponential_(1.0, generator=g)
                      for rows, g in generators])


def exponential_race(probs: Tensor, noise: Tensor) -> Tensor:
    """One draw per row of `probs` [..., C] -> indices [...]: argmax(p / E) ~ Categorical(p)."""
    return torch.argmax(probs / noise, dim=-1)


def sample_top_p(probs: Tensor, p: float, noise: Tensor) -> Tensor:
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    keep = (torch.cumsum(probs_sort, dim=-1) - probs_sort) <= p
    probs_sort = probs_sort * keep
    probs_sort = probs_sort / probs_sort.sum(dim=-1, keepdim=True)
    choice = exponential_race(probs_sort, noise)
    return torch.gather(probs_idx, -1, choice.unsqueeze(-1)).squeeze(-1)


def truncate_top_k(probs: Tensor, k: int) -> Tensor:
    """The top-k renormalised distribution (ties at the k-th value are kept, as released)."""
    kth = torch.topk(probs, k, dim=-1).values[..., -1:]
    probs = probs * (probs >= kth)
    return probs / probs.sum(dim=-1, keepdim=True)


def choose_tokens(logits: Tensor, probs: Tensor, *, use_sampling: bool, top_p: float, top_k: int,
                  noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """logits/probs [..., C] -> (tokens [...], confidence of each chosen token [...]).

    Greedy takes the argmax of the CFG logits. top_p < 1 -> nucleus; else top_k > 0 -> top-k;
    else the full distribution (top_p = 1 keeps every token, which is the same draw).
    """
    if not use_sampling:
        tokens = torch.argmax(logits, dim=-1)
    elif top_p < 1.0:
        tokens = sample_top_p(probs, top_p, noise)
    elif top_k > 0:
        probs = truncate_top_k(probs, top_k)
        tokens = exponential_race(probs, noise)
    else:
        tokens = exponential_race(probs, noise)
    confidence = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence


def span_scores(confidence: Tensor, span_len: int, scoring: str) -> Tensor:
    """Per-span re-mask scores for `nonoverlap` [B, T] -> [B, ceil(T / span_len)]; higher = re-mask first.

    'max': 1 - (max confidence in the span); 'prod': sum of -log confidence. A last, shorter span
    (T not a multiple of span_len) is scored on its own tokens only: padding with confidence 0
    leaves 'max' unchanged and padding with 1 adds 0 to 'prod'.
    """
    B, T = confidence.shape
    pad = (-T) % span_len
    if scoring == "max":
        c = torch.nn.functional.pad(confidence, (0, pad), value=0.0).view(B, -1, span_len)
        return 1 - c.max(dim=-1).values
    c = torch.nn.functional.pad(confidence, (0, pad), value=1.0).view(B, -1, span_len)
    return (-torch.log(c)).sum(dim=-1)
