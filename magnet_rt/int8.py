"""int8 for the CPU: one module-swap pass over the transformer blocks (opt-in, `--precision int8`).

Every projection inside a block becomes a dynamically quantized int8 linear (int8 weights with one scale
per output channel, activations quantized per call: VNNI GEMMs). The packed attention projections are
swapped with their attention module (`Int8SelfAttention`, `Int8CrossAttention`), the FFN linears
directly; nothing is added to the float modules. Embeddings, norms, heads, the text projection and the
cross-attention k/v (computed once per request) stay fp32, and so do the layers in `KEEP_FLOAT`, whose
quantization error guidance amplifies most (measured: benchmarks/RESULTS.md, `benchmarks/int8_error.py`).

The error that matters is the one after classifier-free guidance: `uncond + (cond - uncond) * coef`
multiplies the difference of two quantized forwards by up to 10. `guided_logit_error` measures it.
Changes the numerics: never used for parity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from .lm import Attention, CrossAttention, CrossInputs, MagnetLM, SelfAttention

# Kept in float, by measurement (`python -m benchmarks.int8_error --model small`, benchmarks/RESULTS.md):
# every block's FFN down-projection (its inputs, GELU outputs over the 4x wide layer, have the widest range)
# and the first and last two blocks whole. At magnet-small's shape this takes the error after guidance 10
# from 4.7 % of the logit range (all int8, 250 frames) to 2.1 % (500 frames; the down-projections alone: 3.7 %).
KEEP_FLOAT: frozenset[str] = frozenset({"linear2"})
KEEP_BLOCKS: frozenset[int] = frozenset({0, 1, -2, -1})


def int8_linear(weight: Tensor) -> nn.Module:
    """A dynamically quantized linear (no bias) with per-output-channel weight scales."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight.data.copy_(weight.detach().float())
    return quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]


class Int8SelfAttention(SelfAttention):
    """`SelfAttention` with int8 q|k|v and output projections."""

    def __init__(self, attn: SelfAttention):
        nn.Module.__init__(self)
        self.num_heads = attn.num_heads
        self.in_proj = int8_linear(attn.in_proj_weight)
        self.out_proj = int8_linear(attn.out_proj.weight)

    def qkv(self, x: Tensor) -> Tensor:
        return self.in_proj(x)


class Int8CrossAttention(CrossAttention):
    """`CrossAttention` with int8 query and output projections; k/v (once per request) stay fp32."""

    def __init__(self, attn: CrossAttention):
        nn.Module.__init__(self)
        self.num_heads = attn.num_heads
        D = attn.in_proj_weight.shape[1]
        self.in_proj_weight = attn.in_proj_weight  # k/v rows read by `kv`
        self.q_proj = int8_linear(attn.in_proj_weight[:D])
        self.out_proj = int8_linear(attn.out_proj.weight)

    def q(self, x: Tensor) -> Tensor:
        return self.q_proj(x)


_SWAPS: dict[type, Callable[[nn.Module], nn.Module]] = {
    SelfAttention: Int8SelfAttention,
    CrossAttention: Int8CrossAttention,
    nn.Linear: lambda m: int8_linear(m.weight),
}


def quantize_int8(lm: MagnetLM, keep_float: frozenset[str] = KEEP_FLOAT,
                  keep_blocks: frozenset[int] = KEEP_BLOCKS) -> MagnetLM:
    """Swap, in place, every block child of a swappable type not named in `keep_float`, in every block
    whose index (negative: from the end) is not in `keep_blocks`; returns `lm`."""
    if lm.compute_dtype != torch.float32:
        raise ValueError("int8 applies to fp32 blocks (the CPU's precision)")
    n = len(lm.layers)
    for i, block in enumerate(lm.layers):
        if i in keep_blocks or i - n in keep_blocks:
            continue
        for name, child in list(block.named_children()):
            swap = _SWAPS.get(type(child))
            if swap is not None and name not in keep_float:
                setattr(block, name, swap(child))
    return lm


def int8_modules(lm: MagnetLM) -> int:
    """How many int8 linears `lm` computes with (0: `quantize_int8` kept every block in float)."""
    return sum(1 for m in lm.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear))


@torch.inference_mode()
def guided_logit_error(reference: MagnetLM, other: MagnetLM, codes: Tensor, cond: Tensor, stage: int,
                       coef: float = 10.0, form: Attention = Attention.DENSE) -> float:
    """max |CFG logits(other) - CFG logits(reference)| / the reference's CFG logit range (max - min over
    every position and entry), for codebook `stage`: codes [B, K, T], cond [B, S, D] (projected text)."""

    def guided(lm: MagnetLM) -> Tensor:
        cross: CrossInputs = lm.cross_inputs(cond)  # rows beyond B: the null condition
        both = lm.stage_logits(torch.cat([codes, codes]), cross, stage, form)
        c, u = both.split(codes.shape[0])
        return u + (c - u) * coef

    want, got = guided(reference), guided(other)
    return float((got - want).abs().max() / (want.max() - want.min()))
