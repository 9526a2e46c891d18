"""int8's error after classifier-free guidance, float vs int8 of the same weights, one run.

    python -m benchmarks.int8_error [--model demo|small] [--coef 10] [--keep-float linear2,...]
        [--keep-blocks 0,-1] [--json OUT]

`demo`: the shipped demo bundle (trained weights, MiniLM text of real prompts); `small`: random weights of
the magnet-small-10secs shape with random text states. For every stage, the codes are a decoding state:
stages below are random codes, the stage itself half masked, stages above fully masked. The error is
`int8.guided_logit_error`: max |CFG logits int8 - float| / the float CFG logit range, at guidance `coef`.
"""

from __future__ import annotations

import argparse
import copy

import torch

from magnet_rt.int8 import KEEP_BLOCKS, KEEP_FLOAT, guided_logit_error, quantize_int8
from magnet_rt.lm import RELEASED_SHAPES, MagnetLM

from .report import emit

PROMPTS = ["warm rhodes chords with soft drums", "fast techno drums with synth bass"]


def decoding_state(lm: MagnetLM, B: int, T: int, stage: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, lm.card, (B, lm.n_q, T), generator=g)
    codes[:, stage + 1:] = lm.card
    codes[:, stage][torch.rand(B, T, generator=g) < 0.5] = lm.card
    return codes


def model(name: str) -> tuple[MagnetLM, torch.Tensor]:
    if name == "demo":
        from magnet_rt.bundle import build_text_encoder, load_lm, read_bundle_config
        from magnet_rt.registry import demo_dir

        lm = load_lm(demo_dir()).eval()
        te = build_text_encoder(read_bundle_config(demo_dir()).get("text_encoder", {}), demo_dir(), device="cpu")
        text = te.encode(PROMPTS)
        return lm, lm.project_text(text.hidden, text.mask)
    lm = MagnetLM(RELEASED_SHAPES["facebook/magnet-small-10secs"]).init_weights(0).eval()
    g = torch.Generator().manual_seed(1)
    return lm, lm.project_text(torch.randn(2, 12, lm.cfg.text_dim, generator=g), torch.ones(2, 12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["demo", "small"], default="demo")
    ap.add_argument("--coef", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--keep-float", default=",".join(sorted(KEEP_FLOAT)),
                    help="block children kept in float, comma-separated ('' quantizes all)")
    ap.add_argument("--keep-blocks", default=",".join(map(str, sorted(KEEP_BLOCKS))),
                    help="block indices kept wholly in float (negative: from the end), comma-separated")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    lm, cond = model(args.model)
    keep = frozenset(k for k in args.keep_float.split(",") if k)
    blocks = frozenset(int(b) for b in args.keep_blocks.split(",") if b)
    q = quantize_int8(copy.deepcopy(lm), keep, blocks)
    errors = [guided_logit_error(lm, q, decoding_state(lm, cond.shape[0], args.frames, s), cond, s, args.coef)
              for s in range(lm.n_q)]
    emit({"model": args.model, "coef": args.coef, "keep_float": sorted(keep), "keep_blocks": sorted(blocks),
          "frames": args.frames,
          "error_per_stage": [round(e, 5) for e in errors], "max_error": round(max(errors), 5)}, args.json)


if __name__ == "__main__":
    main()
