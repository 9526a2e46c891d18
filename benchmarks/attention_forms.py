"""Dense vs banded window attention, the same weights, one run, side by side: which is faster per device.

    python -m benchmarks.attention_forms [--shape small] [--device cpu] [--frames 150,500] [--rows 2,4]
        [--repeats 5] [--threads 1] [--int8] [--json OUT]

One stage-1 forward (the +-5-frame window of stages >= 1) of the dynamic decode step's shape: [cond; null]
rows (`--rows`: 2 = one take under CFG) with the text k/v precomputed, states only (the head runs at the
re-masked positions afterwards, whatever the form). Random weights of the named shape; both forms compute
the same function (tests/test_parity.py). `chosen` is `devices.fastest_forms(device).attention`; the result
says, for every (frames, rows), whether the chosen form was faster than the other in this run.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys

import torch

from magnet_rt.devices import fastest_forms
from magnet_rt.int8 import quantize_int8
from magnet_rt.lm import Attention

from .latency import build, model_args, parse_model_args, time_interleaved
from .report import emit


def forward(lm, codes: torch.Tensor, cross, form: Attention):
    def go():
        with torch.inference_mode():
            lm.hidden(codes, cross, 1, form)
    return go


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(ap, "small", 5)
    ap.add_argument("--frames", default="150,500")
    ap.add_argument("--rows", default="2")
    ap.add_argument("--int8", action="store_true", help="also time both forms with int8 block projections")
    args, device = parse_model_args(ap, argv)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    models = {"fp32" if dtype == torch.float32 else "fp16": build(args.shape, device, dtype)}
    if args.int8:
        models["int8"] = quantize_int8(copy.deepcopy(next(iter(models.values()))))
    chosen = fastest_forms(device).attention
    cases = []
    for precision, lm in models.items():
        for rows in (int(r) for r in args.rows.split(",")):
            g = torch.Generator().manual_seed(rows)
            text = torch.randn(rows // 2 or 1, 12, lm.cfg.text_dim, generator=g).to(device)
            with torch.inference_mode():
                cross = lm.cross_inputs(lm.project_text(text, torch.ones(text.shape[:2], device=device)))
            for frames in (int(f) for f in args.frames.split(",")):
                codes = torch.randint(0, lm.card, (rows, lm.n_q, frames), generator=g).to(device)
                codes[:, 2:] = lm.card
                t = time_interleaved({f.value: forward(lm, codes, cross, f) for f in Attention}, args.repeats, device)
                other = Attention.BANDED if chosen is Attention.DENSE else Attention.DENSE
                cases.append({"precision": precision, "rows": rows, "frames": frames, **t,
                              "other_over_chosen": t[other.value]["p50_s"] / t[chosen.value]["p50_s"],
                              "chosen_not_slower": t[chosen.value]["p50_s"] <= t[other.value]["p50_s"]})
    emit({"shape": args.shape, "device": str(device), "threads": torch.get_num_threads(),
          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
          "chosen": chosen.value, "cases": cases, "chosen_never_slower": all(c["chosen_not_slower"] for c in cases),
          "command": " ".join(["python -m benchmarks.attention_forms", *(argv or sys.argv[1:])])}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
