"""MAGNeT's transformer, exactly as the released checkpoints compute it.

One non-autoregressive transformer over the K=4 RVQ codebooks of EnCodec (Ziv et al., ICLR 2024,
arXiv 2401.04577; reference: audiocraft `lm.py`, `lm_magnet.py`, `transformer.py`):

    x = sum_k emb[k](codes[:, k]) + sinusoid(t)                     # [B, T, D]
      (+ beat_proj(grid) + key_proj(key) on the conditioned rows, when the config has them: `tempo.py`,
         `tonality.py`: the prompt's musical controls)
    for each layer:  x += SelfAttn(LN1(x), window(stage))           # full for stage 0, |dt| <= ctx else
                     x += CrossAttn(LN_cross(x), cond)              # cond = output_proj(T5) * mask
                     x += Linear2(GELU(Linear1(LN2(x))))
    logits[:, k] = linears[k](out_norm(x))                          # [B, K, T, card]

Shapes use one alphabet: B batch (x2 under CFG), K codebooks, T frames, D width, H heads, E head
dim, S text tokens, C card. Decoding lives in `decoding.py`.

Two attention forms (`Attention`) compute the same function:
- `Attention.DENSE`: SDPA over all T keys with a boolean window mask (the reference's computation);
- `Attention.BANDED`: only the 2*ctx+1 keys of each query's window are gathered and scored.
Which is faster depends on the device (`devices.attention_form`, measured in benchmarks/RESULTS.md).
Three entry points differ only in what they return: `forward` (every head), `stage_logits` (one head),
`hidden` (the final normed states). Loading lives in `checkpoints.py`, int8 in `int8.py`.
And an optional per-row ``cross_len`` excludes batch padding of the text beyond a row's own length, so
a request decoded in a shared batch computes exactly as it does alone (the release attends to every
padded position, so its result depends on the longest prompt in the batch: magnet-reference gotcha 6).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(enum.Enum):
    """How the +-ctx window of stages >= 1 is computed; both give the same function."""

    DENSE = "dense"  # SDPA over all keys with a boolean window mask (the release's computation)
    BANDED = "banded"  # only the 2*ctx+1 keys of each query's window


@dataclass(frozen=True)
class MagnetConfig:
    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    hidden_scale: int = 4  # FFN width = hidden_scale * dim, exact (erf) GELU
    n_q: int = 4  # codebooks
    card: int = 2048  # entries per codebook; the mask token is id `card`, embeddings have card + 1 rows
    text_dim: int = 768  # T5 width: t5-base (music) 768, t5-large (audio-magnet) 1024
    subcodes_context: int = 5  # self-attention window +-5 frames for stages >= 1 (-1: full)
    span_len: int = 3  # 60 ms spans at 50 frames/s
    segment_duration: float = 10.0  # seconds the checkpoint was trained on
    frame_rate: int = 50
    max_period: float = 10000.0  # sinusoidal positions
    norm_eps: float = 1e-5
    beat_features: int = 0  # width of the beat grid input (`tempo.BEAT_FEATURES`); 0: none, as released
    key_features: int = 0  # width of the key input (`tonality.KEY_FEATURES`); 0: none, as released

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def segment_frames(self) -> int:
        return int(round(self.segment_duration * self.frame_rate))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The released checkpoints' shapes (magnet-reference.md section 1); used by benchmarks and tests.
RELEASED_SHAPES: dict[str, MagnetConfig] = {
    "facebook/magnet-small-10secs": MagnetConfig(),
    "facebook/magnet-small-30secs": MagnetConfig(segment_duration=30.0),
    "facebook/magnet-medium-10secs": MagnetConfig(dim=1536, num_heads=24, num_layers=48),
    "facebook/magnet-medium-30secs": MagnetConfig(dim=1536, num_heads=24, num_layers=48, segment_duration=30.0),
    "facebook/audio-magnet-small": MagnetConfig(text_dim=1024),
    "facebook/audio-magnet-medium": MagnetConfig(dim=1536, num_heads=24, num_layers=48, text_dim=1024),
}


def sinusoidal_positions(T: int, dim: int, max_period: float, device=None) -> Tensor:
    """[1, T, D]: cos half first, then sin; exponent k / (half - 1); positions from 0 (as released)."""
    half = dim // 2
    pos = torch.arange(T, device=device, dtype=torch.float32).view(1, -1, 1)
    k = torch.arange(half, device=device, dtype=torch.float32).view(1, 1, -1)
    phase = pos / (torch.full([], max_period, device=device, dtype=torch.float32) ** (k / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def window_mask(T: int, context: int, device=None) -> Tensor:
    """[T, T] bool, True where |q - k| <= context (attend)."""
    t = torch.arange(T, device=device)
    return (t[:, None] - t[None, :]).abs() <= context


def banded_attention(q: Tensor, k: Tensor, v: Tensor, context: int) -> Tensor:
    """Attention of each query to the keys within +-context frames, without the out-of-window scores.

    q, k, v: [B, H, T, E] -> [B, H, T, E]. Equal to SDPA with `window_mask`, computing W = 2*ctx+1
    scores per query instead of T.
    """
    B, H, T, E = q.shape
    W = 2 * context + 1
    kp = F.pad(k, (0, 0, context, context)).unfold(2, W, 1)  # [B, H, T, E, W]
    vp = F.pad(v, (0, 0, context, context)).unfold(2, W, 1)  # [B, H, T, E, W]
    scores = torch.einsum("bhte,bhtew->bhtw", q, kp) / math.sqrt(E)  # [B, H, T, W]
    offs = torch.arange(W, device=q.device) - context
    pos = torch.arange(T, device=q.device)[:, None] + offs[None, :]  # [T, W] key index
    scores = scores.masked_fill(((pos < 0) | (pos >= T)).view(1, 1, T, W), float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhtw,bhtew->bhte", probs, vp)


class SelfAttention(nn.Module):
    """Packed q|k|v projection (rows q, k, v; each split as (H E)), no biases."""

    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * cfg.dim, cfg.dim))
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def qkv(self, x: Tensor) -> Tensor:
        """The packed q|k|v projection (`int8.quantize_int8` swaps the module for one that overrides this)."""
        return F.linear(x, self.in_proj_weight)

    def forward(self, x: Tensor, mask: Tensor | None, context: int | None, form: Attention) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, E]
        if context is not None and form is Attention.BANDED:
            y = banded_attention(q, k, v, context)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class CrossAttention(nn.Module):
    """Queries from the frames, keys/values from the projected text; no key padding mask (as released)."""

    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * cfg.dim, cfg.dim))
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def q(self, x: Tensor) -> Tensor:
        """The query projection (`int8.quantize_int8` swaps the module for one that overrides this)."""
        return F.linear(x, self.in_proj_weight[: x.shape[-1]])

    def kv(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """cond [B, S, D] -> k, v [B, H, S, E]; computed once per request by the fast path."""
        B, S, D = cond.shape
        kv = F.linear(cond, self.in_proj_weight[D:]).view(B, S, 2, self.num_heads, D // self.num_heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.num_heads, D // self.num_heads)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.to(q.dtype), v.to(q.dtype), attn_mask=bias)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        ffn = cfg.hidden_scale * cfg.dim
        self.self_attn = SelfAttention(cfg)
        self.cross_attention = CrossAttention(cfg)
        self.linear1 = nn.Linear(cfg.dim, ffn, bias=False)
        self.linear2 = nn.Linear(ffn, cfg.dim, bias=False)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.norm_cross = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, x: Tensor, cross: CrossInputs, i: int, mask: Tensor | None, context: int | None,
                form: Attention) -> Tensor:
        x = x + self.self_attn(self.norm1(x), mask, context, form)
        x = x + cross.attend(self.cross_attention, i, self.norm_cross(x))
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


@dataclass
class CrossInputs:
    """The condition side of a forward: per-layer k/v of the projected text for the first `rows` rows, and
    their projected musical controls (beat grid, key) when the model reads them.

    Rows beyond `rows` (the CFG null half) have an all-zero condition, whose cross-attention output
    is exactly 0 (zero values), so they skip it, and no controls. `bias` [rows, 1, 1, S] excludes batch
    padding beyond a row's own text length (None: every position attends, as released). `controls`
    [rows, T or 1, D] is added to those rows' input embeddings (None: none).
    """

    kv: list[tuple[Tensor, Tensor]]
    rows: int
    bias: Tensor | None = None
    controls: Tensor | None = None

    def select(self, idx: Tensor) -> CrossInputs:
        """The same inputs for the rows `idx` (when cancelled rows leave a batch)."""
        kv = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.kv]
        bias = None if self.bias is None else self.bias.index_select(0, idx)
        controls = None if self.controls is None else self.controls.index_select(0, idx)
        return CrossInputs(kv=kv, rows=len(idx), bias=bias, controls=controls)

    def add_controls(self, x: Tensor) -> Tensor:
        """x [B, T, D] (B >= rows) plus the controls on the first `rows` rows."""
        if self.controls is None:
            return x
        c = self.controls.to(x.dtype)
        if x.shape[0] > self.rows:
            c = torch.cat([c, c.new_zeros((x.shape[0] - self.rows, *c.shape[1:]))])
        return x + c

    def attend(self, attn: CrossAttention, i: int, xq: Tensor) -> Tensor:
        k, v = self.kv[i]
        if self.rows == xq.shape[0]:
            return attn(xq, k, v, self.bias)
        return torch.cat([attn(xq[: self.rows], k, v, self.bias), torch.zeros_like(xq[self.rows:])])


class MagnetLM(nn.Module):
    CONTROLS = {"beat_features": "beat_proj", "key_features": "key_proj"}  # config width -> its projection

    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        self.cfg = cfg
        self.card = cfg.card
        self.n_q = cfg.n_q
        self.output_proj = nn.Linear(cfg.text_dim, cfg.dim)  # the T5 conditioner's projection (bias)
        self.emb = nn.ModuleList([nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q)])
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.linears = nn.ModuleList([nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.n_q)])
        self.beat_proj = nn.Linear(cfg.beat_features, cfg.dim, bias=False) if cfg.beat_features else None
        self.key_proj = nn.Linear(cfg.key_features, cfg.dim, bias=False) if cfg.key_features else None
        self.compute_dtype = torch.float32  # the transformer blocks' dtype; see `set_precision`
        self._masks: dict[tuple[int, str], Tensor] = {}
        self.text_encoder_name = ""  # the checkpoint's T5 name (xp.cfg), set by the loaders

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> MagnetLM:
        """audiocraft's 'gaussian' init with 'current' depth scaling: N(0, 1/sqrt(fan_in)) for every
        matrix, divided by sqrt(2 * (layer + 1)) inside layer `layer`; norms at 1/0, biases at 0."""
        g = torch.Generator().manual_seed(seed)

        def normal_(t: Tensor, std: float) -> None:
            t.copy_(torch.randn(t.shape, generator=g) * std)

        for e in self.emb:
            normal_(e.weight, 1 / math.sqrt(self.cfg.dim))
        for lin in self.linears:
            normal_(lin.weight, 1 / math.sqrt(self.cfg.dim))
        normal_(self.output_proj.weight, 1 / math.sqrt(self.cfg.text_dim))
        self.output_proj.bias.zero_()
        for i, blk in enumerate(self.layers):
            depth = 1 / math.sqrt(2 * (i + 1))
            for name, p in blk.named_parameters():
                if p.dim() == 2:
                    normal_(p, depth / math.sqrt(p.shape[1]))
                else:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
        self.out_norm.weight.fill_(1.0)
        self.out_norm.bias.zero_()
        for proj in self.control_projections():
            proj.weight.zero_()  # a new control starts as "no effect" (see `with_control`)
        return self

    def with_control(self, field: str, features: int) -> MagnetLM:
        """A copy of this LM with a new control input (`field`: "beat_features" or "key_features") of width
        `features`, initialised to zero: it computes exactly what this LM does until training moves it."""
        if field not in self.CONTROLS:
            raise ValueError(f"no control input called {field!r}")
        if getattr(self.cfg, field):
            raise ValueError(f"this LM already has {field} = {getattr(self.cfg, field)}")
        cfg = MagnetConfig(**{**self.cfg.to_dict(), field: features})
        lm = MagnetLM(cfg).to(self.device)
        lm.load_state_dict(self.state_dict(), strict=False)
        torch.nn.init.zeros_(getattr(lm, self.CONTROLS[field]).weight)
        lm.text_encoder_name = self.text_encoder_name
        return lm

    def control_projections(self) -> list[nn.Linear]:
        """The projections of the musical controls this LM reads (beat grid, key), in `CONTROLS` order."""
        return [proj for name in self.CONTROLS.values() if (proj := getattr(self, name)) is not None]

    @property
    def has_controls(self) -> bool:
        """Whether the LM reads musical controls (beat grid, key) beside the text."""
        return bool(self.control_projections())

    # ---- precision and device -------------------------------------------------------------------
    def set_precision(self, dtype: torch.dtype) -> MagnetLM:
        """Run the transformer blocks in `dtype` (fp16 on CUDA as released, bf16 as a CPU fast path);
        embeddings, out_norm, heads and output_proj stay fp32, as in the release."""
        self.compute_dtype = dtype
        for p in self.layers.parameters():
            if p.dim() == 2:  # matrices; LayerNorms stay fp32 (autocast runs them in fp32 anyway)
                p.data = p.data.to(dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.out_norm.weight.device

    # ---- conditioning ---------------------------------------------------------------------------
    def project_text(self, text_hidden: Tensor, text_mask: Tensor) -> Tensor:
        """T5 last hidden states [B, S, Dt] -> cond [B, S, D]; padding zeroed after the projection."""
        cond = self.output_proj(text_hidden.to(self.output_proj.weight.dtype))
        return cond * text_mask.to(cond.dtype).unsqueeze(-1)

    def cross_inputs(self, cond: Tensor, cross_len: Tensor | None = None, beat: Tensor | None = None,
                     key: Tensor | None = None) -> CrossInputs:
        """Every layer's cross-attention k/v for `cond` [R, S, D]. A forward over more than R rows
        treats the rows beyond R as the all-zero null condition. `cross_len` [R]: see CrossInputs.
        `beat` [R, T, beat_features]: the rows' beat grids (`tempo.beat_grids`); `key` [R, key_features]: their
        key inputs (`tonality.key_vectors`); each ignored by a model without that input, as the prompt's
        words are all such a model reads."""
        dtype = self.compute_dtype
        kv = [blk.cross_attention.kv(cond.to(dtype)) for blk in self.layers]
        bias = None
        if cross_len is not None:
            S = cond.shape[1]
            keep = torch.arange(S, device=cond.device)[None, :] < cross_len[:, None].to(cond.device)
            bias = torch.zeros(keep.shape, dtype=dtype, device=cond.device)
            bias = bias.masked_fill(~keep, float("-inf")).view(-1, 1, 1, S)
        return CrossInputs(kv=kv, rows=cond.shape[0], bias=bias, controls=self.controls(beat, key, cond.device))

    def controls(self, beat: Tensor | None, key: Tensor | None, device: torch.device) -> Tensor | None:
        """The projected controls [R, T or 1, D] (None: the model reads neither, or none was given)."""
        out = None
        if beat is not None and self.beat_proj is not None:
            out = self.beat_proj(beat.to(device=device, dtype=self.beat_proj.weight.dtype))
        if key is not None and self.key_proj is not None:
            k = self.key_proj(key.to(device=device, dtype=self.key_proj.weight.dtype))[:, None, :]
            out = k if out is None else out + k
        return out

    # ---- forward --------------------------------------------------------------------------------
    def self_attn_mask(self, T: int, stage: int, form: Attention) -> tuple[Tensor | None, int | None]:
        """(dense mask or None, window context or None) for `stage`: full for 0, +-ctx for >= 1."""
        ctx = self.cfg.subcodes_context
        if stage == 0 or ctx < 0:
            return None, None
        if form is Attention.BANDED:
            return None, ctx
        key = (T, str(self.device))
        if key not in self._masks:
            self._masks[key] = window_mask(T, ctx, self.device)
        return self._masks[key], ctx

    def hidden(self, codes: Tensor, cross: CrossInputs, stage: int, form: Attention = Attention.DENSE, *,
               attn_mask: Tensor | None = None) -> Tensor:
        """codes [B, K, T] (mask id = card) -> the final normed states [B, T, D] (callers apply a head).

        `attn_mask` (bool, True = attend, broadcastable to [B, H, T, T]) replaces the stage's window:
        the hybrid training objective uses it for causal attention before a split point."""
        B, K, T = codes.shape
        x = sum(self.emb[k](codes[:, k]) for k in range(K))  # [B, T, D]
        x = cross.add_controls(x + sinusoidal_positions(T, self.cfg.dim, self.cfg.max_period, codes.device))
        mask, ctx = (attn_mask, None) if attn_mask is not None else self.self_attn_mask(T, stage, form)
        low = self.compute_dtype != torch.float32
        # no cast cache: the block matrices are already in compute_dtype, and a cache must not outlive a
        # CUDA graph capture (torch.cuda.graphs' rule for autocast)
        with torch.autocast(codes.device.type, dtype=self.compute_dtype, enabled=low, cache_enabled=False):
            for i, block in enumerate(self.layers):
                x = block(x, cross, i, mask, ctx, form)
        return self.out_norm(x.float())

    def stage_logits(self, codes: Tensor, cross: CrossInputs, stage: int, form: Attention = Attention.DENSE, *,
                     attn_mask: Tensor | None = None) -> Tensor:
        """-> logits [B, T, C] of codebook `stage` only."""
        return self.linears[stage](self.hidden(codes, cross, stage, form, attn_mask=attn_mask))

    def forward(self, codes: Tensor, cross: CrossInputs, stage: int, form: Attention = Attention.DENSE, *,
                attn_mask: Tensor | None = None) -> Tensor:
        """-> logits [B, K, T, C] of every codebook (what the release computes)."""
        x = self.hidden(codes, cross, stage, form, attn_mask=attn_mask)
        return torch.stack([lin(x) for lin in self.linears], dim=1)  # [B, K, T, C]

    @torch.inference_mode()
    def logits(self, codes: Tensor, text_hidden: Tensor, text_mask: Tensor, stage: int) -> Tensor:
        """One forward without CFG, as the reference computes it -> [B, K, T, C]."""
        cond = self.project_text(text_hidden.to(self.device), text_mask.to(self.device))
        return self(codes.to(self.device), self.cross_inputs(cond), stage)
