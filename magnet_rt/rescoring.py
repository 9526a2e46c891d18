"""Rescoring (Ziv et al., Sec. 3.3, Eq. 5): an external model re-ranks the tokens MAGNeT sampled.

At every decoding step `decoding.decode` asks the rescorer for the probability it gives each token of the
codebook being decoded, with this step's samples in place, and scores spans on

    p = w * p_rescorer + (1 - w) * p_magnet          (w = DecodeParams.rescore_weight)

so spans the external model dislikes are re-masked first. The model here is MusicGen (Copet et al. 2023)
through transformers' `MusicgenForCausalLM`: the decoder-only LM over the same EnCodec 32 kHz tokens
(4 codebooks x 2048, 50 frames/s), scored in ONE teacher-forced forward (no sampling loop).

MusicGen's delay pattern. MusicGen predicts codebook k of frame t at step t + k + 1 of a "delayed"
sequence M [B, K, T + K] whose first column is the pad/BOS id and where M[k, s] = codes[k, s - k - 1]
(pad where s - k - 1 is outside [0, T)). The logits at position s predict column s + 1, so
p(codes[k, t]) is read at position t + k of the head k. Causality: it depends on the tokens
codes[j, t'] with t' + j + 1 <= t + k only (and on codes[k, t] itself, the token being scored).
Tokens MAGNeT has not decoded yet (the mask id, `card`: the codebooks above the current stage) enter as
the pad id, as at the start of a MusicGen sequence.

Text conditioning. A real MusicGen attends to T5 hidden states through `enc_to_dec_proj` (t5-base for
musicgen-small/medium, the same T5 as MAGNeT's music checkpoints, so the request's MAGNeT text hidden
states can be passed as they are). `MusicgenRescorer.bind(hidden, mask)` conditions the rescorer on the
request's text; unbound it runs unconditionally (the all-zero null condition, whose cross-attention
output is exactly 0 since MusicGen's attention has no biases, i.e. skipping cross-attention). There is no
classifier-free guidance in rescoring: one conditional forward per step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError, InvalidParams
from .interfaces import Rescorer

log = logging.getLogger(__name__)

__all__ = [
    "TINY_RANDOM_MUSICGEN",
    "MusicgenRescorer",
    "Rescorer",
    "build_tiny_random_musicgen",
    "delay",
    "load_rescorer",
    "musicgen_input",
    "undelay",
]

TINY_RANDOM_MUSICGEN = "tiny-random"
TINY_RANDOM_MUSICGEN_VERSION = 1
PROJ_FILE = "enc_to_dec_proj.pt"  # our addition to a decoder folder: the text projection, when there is one


# ---- the delay pattern (pure) ------------------------------------------------------------------------------
def delay(codes: Tensor, pad_id: int) -> Tensor:
    """[B, K, T] -> [B, K, T + K - 1] with D[:, k, s] = codes[:, k, s - k] (pad outside)."""
    B, K, T = codes.shape
    out = torch.full((B, K, T + K - 1), pad_id, dtype=codes.dtype, device=codes.device)
    for k in range(K):
        out[:, k, k:k + T] = codes[:, k]
    return out


def undelay(delayed: Tensor, T: int) -> Tensor:
    """Inverse of `delay` on the first two dims: [B, K, T + K - 1, ...] -> [B, K, T, ...]."""
    K = delayed.shape[1]
    return torch.stack([delayed[:, k, k:k + T] for k in range(K)], dim=1)


def musicgen_input(codes: Tensor, pad_id: int, card: int) -> Tensor:
    """MAGNeT codes [B, K, T] (mask id `card` where not decoded yet) -> MusicGen's delayed sequence
    M [B, K, T + K]: a pad/BOS column, then `delay`. M[:, k, s] = codes[:, k, s - k - 1]."""
    x = codes.masked_fill((codes < 0) | (codes >= card), pad_id)
    d = delay(x, pad_id)
    bos = torch.full_like(d[:, :, :1], pad_id)
    return torch.cat([bos, d], dim=-1)


# ---- MusicGen ----------------------------------------------------------------------------------------------
class MusicgenRescorer:
    """p(codes[:, stage, t]) under MusicGen, teacher-forced, for every t (see the module docstring).
    An `interfaces.BindableRescorer`: `__call__` takes rows= (the batch rows still decoding)."""

    def __init__(self, model, enc_to_dec_proj: nn.Module | None = None, name: str = "musicgen",
                 temperature: float = 1.0):
        if temperature <= 0:
            raise InvalidParams(f"rescorer temperature must be > 0, got {temperature}")
        self.model = model.eval()
        self.proj = enc_to_dec_proj.eval() if enc_to_dec_proj is not None else None
        self.name, self.temperature = name, float(temperature)
        cfg = model.config
        self.n_q, self.card, self.pad_id = int(cfg.num_codebooks), int(cfg.vocab_size), int(cfg.pad_token_id)
        self.hidden_size = int(cfg.hidden_size)
        self.text_dim = self.proj.in_features if isinstance(self.proj, nn.Linear) else self.hidden_size
        self._cond: tuple[Tensor, Tensor] | None = None  # (encoder states [R, S, H], mask [R, S])
        if int(getattr(cfg, "audio_channels", 1)) != 1:
            raise CheckpointError("stereo MusicGen checkpoints interleave codebooks; only mono is supported")

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, **kwargs) -> MusicgenRescorer:
        """A MusicGen decoder: a composite `facebook/musicgen-*` checkpoint (its decoder and
        `enc_to_dec_proj` are kept, the T5 and EnCodec dropped) or a `MusicgenForCausalLM` folder (with
        an optional `enc_to_dec_proj.pt` beside it, as `save_pretrained` writes)."""
        from transformers import AutoConfig, MusicgenForCausalLM, MusicgenForConditionalGeneration

        try:
            cfg = AutoConfig.from_pretrained(name_or_dir)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load a MusicGen config from {name_or_dir!r}: {e}") from e
        proj = None
        if cfg.model_type == "musicgen":
            full = MusicgenForConditionalGeneration.from_pretrained(name_or_dir, dtype=dtype)
            model, proj = full.decoder, getattr(full, "enc_to_dec_proj", None)
            del full
        elif cfg.model_type == "musicgen_decoder":
            model = MusicgenForCausalLM.from_pretrained(name_or_dir, dtype=dtype)
            pfile = Path(name_or_dir) / PROJ_FILE
            if pfile.is_file():
                state = torch.load(pfile, map_location="cpu", weights_only=True)
                proj = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
                proj.load_state_dict(state)
        else:
            raise CheckpointError(f"{name_or_dir!r} is a {cfg.model_type!r} model, not MusicGen")
        model = model.to(device=device, dtype=dtype)
        if proj is not None:
            proj = proj.to(device=device, dtype=dtype)
        return cls(model, proj, name=str(name_or_dir), **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        out = Path(directory)
        self.model.save_pretrained(out)
        if self.proj is not None:
            torch.save(self.proj.state_dict(), out / PROJ_FILE)
        return out

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_compatible(self, n_q: int, card: int) -> None:
        if (self.n_q, self.card) != (n_q, card):
            raise InvalidParams(f"rescorer {self.name!r} has {self.n_q} x {self.card} codes, the LM {n_q} x {card}")

    # ---- conditioning --------------------------------------------------------------------------------------
    def encoder_states(self, text_hidden: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """T5 hidden [R, S, Dt] + mask [R, S] -> (encoder states [R, S, H], attention mask [R, S]).
        Padding is zeroed after the projection; an all-padding (null) row gets an all-ones mask over
        zero states, which cross-attends to exactly 0 (no biases), like the unconditional model."""
        if text_hidden.shape[-1] != self.text_dim:
            raise InvalidParams(f"rescorer {self.name!r} takes {self.text_dim}-d text states, got "
                                f"{text_hidden.shape[-1]} (a different text encoder?)")
        h = text_hidden.to(self.device, self.model.dtype)
        m = text_mask.to(self.device).long()
        if self.proj is not None:
            h = self.proj(h)
        h = h * m.unsqueeze(-1).to(h.dtype)
        null = m.sum(-1) == 0
        m = torch.where(null[:, None], torch.ones_like(m), m)
        return h, m

    def bind(self, text_hidden: Tensor | None, text_mask: Tensor | None) -> MusicgenRescorer:
        """A rescorer for one batch, conditioned row by row on the request text (None: unconditional).
        Shares the weights. `__call__` then expects codes with the same rows (or `rows=` indices)."""
        bound = MusicgenRescorer.__new__(MusicgenRescorer)
        bound.__dict__.update(self.__dict__)
        bound._cond = None if text_hidden is None else self.encoder_states(text_hidden, text_mask)
        return bound

    def _cross(self, B: int, rows: Tensor | None) -> dict:
        if self._cond is None:
            return {}
        h, m = self._cond
        if rows is not None:
            h, m = h.index_select(0, rows.to(h.device)), m.index_select(0, rows.to(m.device))
        if h.shape[0] != B:  # rows left the batch (cancellation) and nobody told us which: stay correct
            log.warning("rescorer %s: %d conditioned rows for %d code rows; scoring unconditionally",
                        self.name, h.shape[0], B)
            return {}
        return {"encoder_hidden_states": h, "encoder_attention_mask": m}

    # ---- scoring -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, codes: Tensor, stage: int, rows: Tensor | None = None) -> Tensor:
        """[B, K, T] -> logits [B, T, card] of codebook `stage`, position t predicting codes[:, stage, t]."""
        B, K, T = codes.shape
        if K != self.n_q:
            raise InvalidParams(f"rescorer {self.name!r} has {self.n_q} codebooks, codes have {K}")
        inp = musicgen_input(codes.to(self.device), self.pad_id, self.card)[:, :, :T + stage]  # positions < T+stage
        h = self.model.model(input_ids=inp.reshape(B * K, -1), use_cache=False,
                             **self._cross(B, rows)).last_hidden_state  # [B, T + stage, H]
        return self.model.lm_heads[stage](h[:, stage:stage + T])  # [B, T, card]

    def __call__(self, codes: Tensor, stage: int, rows: Tensor | None = None) -> Tensor:
        target = codes[:, stage].to(self.device)
        valid = (target >= 0) & (target < self.card)
        logits = self.logits(codes, stage, rows)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        probs = torch.softmax(logits / self.temperature, dim=-1)
        p = probs.gather(-1, target.clamp(0, self.card - 1).unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, p, torch.zeros_like(p)).to(codes.device)  # [B, T]


# ---- tiny random model and names ----------------------------------------------------------------------------
def build_tiny_random_musicgen(directory: str | Path, seed: int = 0, n_q: int = 4, card: int = 2048,
                               hidden_size: int = 64, layers: int = 2, heads: int = 4, text_dim: int | None = 32,
                               max_positions: int = 2048) -> Path:
    """Write a tiny random MusicGen decoder (deterministic in `seed`) into `directory`. With `text_dim`
    (the tiny-random MAGNeT's T5 width, 32) it carries a random `enc_to_dec_proj`, so it can be bound to
    the requests' text like a real one. It scores noise, not music: for tests and `--rescorer tiny-random`."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    cfg = MusicgenDecoderConfig(vocab_size=card, num_codebooks=n_q, hidden_size=hidden_size,
                                num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=4 * hidden_size,
                                max_position_embeddings=max_positions, dropout=0.0, pad_token_id=card,
                                bos_token_id=card)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MusicgenForCausalLM(cfg).eval()
        proj = nn.Linear(text_dim, hidden_size) if text_dim is not None and text_dim != hidden_size else None
    return MusicgenRescorer(model, proj, name=TINY_RANDOM_MUSICGEN).save_pretrained(directory)


def tiny_random_musicgen_dir() -> Path:
    from .registry import cached_build

    return cached_build(f"musicgen-{TINY_RANDOM_MUSICGEN}-v{TINY_RANDOM_MUSICGEN_VERSION}", "config.json",
                        build_tiny_random_musicgen)


def load_rescorer(name: str, device: str | torch.device = "cpu", **kwargs) -> MusicgenRescorer:
    """`tiny-random` (built into the cache on first use), a folder, or a hub id (facebook/musicgen-small)."""
    if name == TINY_RANDOM_MUSICGEN:
        r = MusicgenRescorer.from_pretrained(tiny_random_musicgen_dir(), device=device, **kwargs)
        r.name = TINY_RANDOM_MUSICGEN
        log.warning("rescorer tiny-random: RANDOM WEIGHTS (offline test model)")
        return r
    return MusicgenRescorer.from_pretrained(name, device=device, **kwargs)
