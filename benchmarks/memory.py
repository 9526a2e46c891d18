"""Resident memory of each released shape as served on CUDA, computed from the shapes (no weights, no GPU).

    python -m benchmarks.memory [--batch 1,16] [--json OUT]

Exact parameter bytes at the serving precision (`magnet_rt.devices`: LM blocks fp16 as released; embeddings,
norms, heads and the text projection fp32; the T5 encoder fp32; EnCodec fp32), built on the meta device.
Activations are an upper estimate of the largest tensors alive at once: in one CFG step of the static path
(2B rows x frames) the FFN hidden state, the residual stream, the stage head's logits, their softmax and the
sorted copy with its indices; in EnCodec's decoder the full-rate 64-channel layers. The two never coexist,
so the total counts the larger. The measured figure is `peak_memory_bytes` of `benchmarks.latency --device cuda`.
"""

from __future__ import annotations

import argparse

import torch
from transformers import EncodecModel, T5Config, T5EncoderModel

from magnet_rt.encodec_checkpoints import random_encodec_config
from magnet_rt.lm import RELEASED_SHAPES, MagnetLM

from .report import emit

T5 = {768: "t5-base", 1024: "t5-large"}  # text_dim -> the release's encoder
T5_SHAPES = {"t5-base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12),
             "t5-large": dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16)}
GIB = 2 ** 30


def lm_bytes(lm: MagnetLM) -> int:
    """Block matrices in fp16 (`MagnetLM.set_precision`), everything else fp32."""
    half = {id(p) for p in lm.layers.parameters() if p.dim() == 2}
    return sum(p.numel() * (2 if id(p) in half else 4) for p in lm.parameters())


def step_activation_bytes(lm: MagnetLM, batch: int) -> int:
    cfg, rows = lm.cfg, 2 * batch * lm.cfg.segment_frames
    ffn = rows * cfg.hidden_scale * cfg.dim * 2  # fp16 hidden state of one layer's FFN
    residual = 3 * rows * cfg.dim * 4  # fp32 stream, its norm and a block output
    sampler = batch * cfg.segment_frames * cfg.card * (4 * 4 + 8)  # logits x2 (CFG), probs, sorted, indices
    return ffn + residual + sampler


def codec_activation_bytes(lm: MagnetLM, batch: int, filters: int = 64, sample_rate: int = 32000) -> int:
    """EnCodec's decoder at full rate: `filters` fp32 channels per sample, input, output and residual."""
    return 3 * batch * int(lm.cfg.segment_duration * sample_rate) * filters * 4


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * 4 for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    with torch.device("meta"):
        codec = param_bytes(EncodecModel(random_encodec_config(n_filters=64, dimension=128, lstm_layers=2)))
        t5 = {name: param_bytes(T5EncoderModel(T5Config(vocab_size=32128, **shape)))
              for name, shape in T5_SHAPES.items()}
        rows = []
        for name, cfg in RELEASED_SHAPES.items():
            lm = MagnetLM(cfg)
            resident = lm_bytes(lm) + t5[T5[cfg.text_dim]] + codec
            for b in (int(x) for x in args.batch.split(",")):
                act = max(step_activation_bytes(lm, b), codec_activation_bytes(lm, b))  # not at once
                rows.append({"model": name, "batch": b, "lm_params": sum(p.numel() for p in lm.parameters()),
                             "lm_gib": lm_bytes(lm) / GIB, "t5_gib": t5[T5[cfg.text_dim]] / GIB,
                             "codec_gib": codec / GIB, "step_activations_gib": step_activation_bytes(lm, b) / GIB,
                             "codec_decode_activations_gib": codec_activation_bytes(lm, b) / GIB,
                             "total_gib": (resident + act) / GIB})
    emit({"computed_from_shapes": True, "rows": rows}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
