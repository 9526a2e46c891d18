"""Hybrid-MAGNeT inference (Ziv et al., Sec. 3.4): the first seconds autoregressively, the rest in parallel.

MusicGen (`rescoring.MusicgenRescorer`'s model, the same EnCodec 32 kHz tokens) generates the first
`hybrid_s` seconds with its delay pattern and a KV cache, one delayed column per step; MAGNeT then decodes
the whole request with those frames pinned on every codebook (a `Job` with `fixed`/`init_codes`, so the
scheduler batches it like any other job). The paper trains one model for both phases (see
`train/hybrid.py`); with the released checkpoints the AR phase comes from a separate MusicGen.

Completing n frames needs n + K - 1 AR steps (the delay). Sampling follows MusicGen's defaults (top-k 250,
temperature 1, classifier-free guidance 3 when conditioned), drawn from each row's own generator, seeded
like the MAGNeT rows (`Job.row_seeds`): variation v of seed s is seed s + v alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import audio as audio_ops
from .errors import DecodeCancelled, InvalidParams
from .jobs import Job, JobResult, Pipeline, Prepared
from .params import DecodeParams, pick_seed
from .rescoring import MusicgenRescorer

__all__ = ["HybridPrepared", "generate_hybrid", "musicgen_generate", "prepare_hybrid"]


@torch.inference_mode()
def musicgen_generate(musicgen: MusicgenRescorer, frames: int, generators: list[torch.Generator | None], *,
                      text_hidden: Tensor | None = None, text_mask: Tensor | None = None, greedy: bool = False,
                      temperature: float = 1.0, top_k: int = 250, guidance_scale: float = 3.0,
                      cancelled=None) -> Tensor:
    """Autoregressive MusicGen codes [B, K, frames] (B = len(generators)), delay pattern undone.

    Conditioned on `text_hidden`/`text_mask` [B, S, Dt] (T5 states, projected by the model's
    `enc_to_dec_proj`) with classifier-free guidance against the null condition when guidance_scale != 1;
    unconditional without text. `greedy` takes the argmax (then the generators are unused)."""
    if frames < 1:
        raise InvalidParams(f"frames must be >= 1, got {frames}")
    if temperature <= 0 or top_k < 0:
        raise InvalidParams("temperature must be > 0 and top_k >= 0")
    model, K, C, pad = musicgen.model, musicgen.n_q, musicgen.card, musicgen.pad_id
    B, dev = len(generators), musicgen.device
    cross, cfg = {}, False
    if text_hidden is not None:
        h, m = musicgen.encoder_states(text_hidden, text_mask)
        cfg = guidance_scale != 1.0
        if cfg:  # [cond; null]: zero states with a full mask cross-attend to exactly 0 (no biases)
            h, m = torch.cat([h, torch.zeros_like(h)]), torch.cat([m, torch.ones_like(m)])
        cross = {"encoder_hidden_states": h, "encoder_attention_mask": m}
    rows = 2 * B if cfg else B
    steps = frames + K - 1
    delayed = torch.full((B, K, steps + 1), pad, dtype=torch.long, device=dev)  # column 0: pad/BOS
    cache = None
    k_idx = torch.arange(K, device=dev)
    for s in range(steps):
        if cancelled is not None and cancelled():
            raise DecodeCancelled("generation cancelled")
        col = delayed[:, :, s:s + 1]
        col = torch.cat([col, col]) if cfg else col
        out = model.model(input_ids=col.reshape(rows * K, 1), past_key_values=cache, use_cache=True, **cross)
        cache = out.past_key_values
        hs = out.last_hidden_state[:, -1]  # [rows, H]
        logits = torch.stack([head(hs) for head in model.lm_heads], dim=1).float()  # [rows, K, C]
        if cfg:
            cond, null = logits.split(B)
            logits = null + (cond - null) * guidance_scale
        tokens = _pick(logits, generators, greedy, temperature, top_k)  # [B, K]
        t = s - k_idx  # frame each codebook produces at this step
        valid = (t >= 0) & (t < frames)
        delayed[:, :, s + 1] = torch.where(valid[None], tokens, torch.full_like(tokens, pad))
    codes = torch.stack([delayed[:, k, 1 + k:1 + k + frames] for k in range(K)], dim=1)
    assert int(codes.max()) < C
    return codes


def _pick(logits: Tensor, generators, greedy: bool, temperature: float, top_k: int) -> Tensor:
    """[B, K, C] -> [B, K]: argmax, or top-k sampling at `temperature` from each row's generator."""
    if greedy:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.stack([torch.multinomial(probs[b], 1, generator=g).squeeze(-1)
                        for b, g in enumerate(generators)])


@dataclass
class HybridPrepared(Prepared):
    """`job` is variation 0's job (a plain `Prepared` for one variation). Each variation has its own AR
    prefix, hence its own job (`jobs`, same frames and params: they share one `run_batch`); merge their
    results with `finish_all`."""

    jobs: list[Job] = field(default_factory=list)
    ar_frames: int = 0
    ar_seconds: float = 0.0  # wall time of the AR phase

    def finish_all(self, results: list[JobResult | None]) -> JobResult:
        if any(r is None for r in results):
            raise DecodeCancelled("generation cancelled")
        if len(results) == 1:
            return self.finish(results[0])
        first = results[0]
        merged = JobResult(torch.cat([r.codes for r in results]), np.concatenate([r.audio for r in results]),
                           first.sample_rate, [s for r in results for s in r.seeds], dict(first.timings),
                           first.batch_size)
        return self.finish(merged)


def prepare_hybrid(pipe: Pipeline, musicgen: MusicgenRescorer, prompt: str | None, duration_s: float | None,
                   hybrid_s: float, params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                   *, greedy: bool = False, temperature: float = 1.0, top_k: int = 250, guidance_scale: float = 3.0,
                   condition: bool = True, cancelled=None) -> HybridPrepared:
    """Run the AR phase now (MusicGen, `hybrid_s` seconds) and return the MAGNeT job(s) that complete the
    request with those frames pinned. `condition=False` runs MusicGen unconditionally (e.g. when its text
    encoder differs from the pipeline's)."""
    musicgen.check_compatible(pipe.lm.n_q, pipe.lm.card)
    frames = pipe.frames_for(duration_s)
    n = round(float(hybrid_s) * pipe.frame_rate) if math.isfinite(float(hybrid_s)) else -1
    if not 1 <= n < frames:
        raise InvalidParams(f"hybrid_s must cover at least one frame and less than the duration "
                            f"({frames / pipe.frame_rate:g} s), got {hybrid_s}")
    if isinstance(variations, bool) or not isinstance(variations, int) or variations < 1:
        raise InvalidParams(f"variations must be an integer >= 1, got {variations!r}")
    params, seed = params or pipe.decoding.default_params, pick_seed(seed)
    jobs = [Job([prompt], frames, params, seed + v) for v in range(variations)]
    t0 = time.perf_counter()
    gens = []
    for j in jobs:
        g = torch.Generator(device=musicgen.device)
        g.manual_seed(j.row_seeds()[0])
        gens.append(g)
    hidden = mask = None
    if condition:
        text = pipe.text_encoder.encode([prompt] * variations)
        hidden, mask = text.hidden, text.mask
    ar = musicgen_generate(musicgen, n, gens, text_hidden=hidden, text_mask=mask, greedy=greedy,
                           temperature=temperature, top_k=top_k, guidance_scale=guidance_scale,
                           cancelled=cancelled).cpu()  # [V, K, n]
    t_ar = time.perf_counter() - t0
    K = pipe.lm.n_q
    for v, j in enumerate(jobs):
        j.fixed = torch.zeros(K, frames, dtype=torch.bool)
        j.fixed[:, :n] = True
        j.init_codes = torch.full((K, frames), pipe.lm.card, dtype=torch.long)
        j.init_codes[:, :n] = ar[v]

    def finish(res: JobResult) -> JobResult:
        res.timings["hybrid_ar"] = t_ar
        res.timings["total"] = res.timings.get("total", 0.0) + t_ar
        return res

    return HybridPrepared(jobs[0], finish, jobs=jobs, ar_frames=n, ar_seconds=t_ar)


def generate_hybrid(pipe: Pipeline, musicgen: MusicgenRescorer, prompt: str | None, duration_s: float | None,
                    hybrid_s: float, params: DecodeParams | None = None, seed: int | None = None, variations: int = 1,
                    progress=None, cancelled=None, loudness: float | None = audio_ops.DEFAULT_LOUDNESS_LUFS,
                    **kwargs) -> JobResult:
    """`prepare_hybrid` + one `run_batch` over the variations' jobs + `finish_all`; each take finished like
    `MagnetPipeline.generate`'s (`audio.finish_take`; `loudness` None keeps the model's level)."""
    prep = prepare_hybrid(pipe, musicgen, prompt, duration_s, hybrid_s, params, seed, variations,
                          cancelled=cancelled, **kwargs)
    on_step = (lambda ji, ev: progress(ev) if ji == 0 else None) if progress else None
    res = prep.finish_all(pipe.run_batch(prep.jobs, on_step=on_step,
                                         is_cancelled=(lambda _: cancelled()) if cancelled else None))
    res.audio = audio_ops.finish_takes(res.audio, res.sample_rate, loudness)
    return res
