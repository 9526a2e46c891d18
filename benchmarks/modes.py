"""Latency of each generation mode, same weights, one run: plain, rescored, hybrid, long-form, endless.

    python -m benchmarks.modes [--model tiny-random] [--rescorer tiny-random] [--preset live] \
        [--duration 10] [--rescore 0.8] [--hybrid 2] [--long 25] [--overlap 3] [--repeats 3] \
        [--device cpu] [--json OUT]

- plain: `pipe.generate` of `--duration` seconds (text, MAGNeT decode, codec);
- rescored: the same with the MusicGen rescorer bound to the prompt's text and rescore_weight `--rescore`
  (one extra MusicGen forward per decoding step);
- hybrid: `hybrid.generate_hybrid`: MusicGen writes the first `--hybrid` seconds autoregressively
  (n + K - 1 steps with a KV cache), then MAGNeT decodes the rest with them pinned;
- long-form: `longform.generate_long` of `--long` seconds in segment windows with `--overlap` seconds
  pinned: total, per window, and time to first audio (the first window's chunk);
- endless: time to first audio and per-window time over 3 windows of `longform.endless`.

Iteration -1 (warm-up) is reported apart; the modes alternate within every repeat so that a machine whose
load changes over the run slows them alike. Ratios are p50 / plain's p50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from magnet_rt.hybrid import generate_hybrid
from magnet_rt.longform import endless, generate_long
from magnet_rt.presets import resolve_params
from magnet_rt.registry import load_pipeline
from magnet_rt.rescoring import load_rescorer

PROMPT = "warm analog synth pads with a slow pulse"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--rescorer", default="tiny-random")
    ap.add_argument("--preset", default="live")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rescore", type=float, default=0.8)
    ap.add_argument("--hybrid", type=float, default=2.0)
    ap.add_argument("--long", type=float, default=25.0)
    ap.add_argument("--overlap", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model, device=args.device)
    mg = load_rescorer(args.rescorer, device=args.device)
    params = resolve_params(args.preset, None, pipe.decoding)
    rescored = params.with_overrides({"rescore_weight": args.rescore})
    text = pipe.text_encoder.encode([PROMPT])
    bound = mg.bind(text.hidden, text.mask)
    seed = [0]

    def plain():
        pipe.rescorer = None
        return {"total": pipe.generate(PROMPT, args.duration, params, seed=seed[0]).timings["total"]}

    def rescore():
        pipe.rescorer = bound
        try:
            return {"total": pipe.generate(PROMPT, args.duration, rescored, seed=seed[0]).timings["total"]}
        finally:
            pipe.rescorer = None

    def hybrid():
        r = generate_hybrid(pipe, mg, PROMPT, args.duration, args.hybrid, params, seed=seed[0])
        return {"total": r.timings["total"], "ar": r.timings["hybrid_ar"]}

    def longform():
        t0 = time.perf_counter()
        r = generate_long(pipe, PROMPT, args.long, params, seed=seed[0], overlap_s=args.overlap)
        total = time.perf_counter() - t0
        per = [c.timings["decode"] for c in r.chunks]
        return {"total": total, "per_window": float(np.mean(per)), "windows": len(per),
                "time_to_first_audio": r.time_to_first_audio,
                "max_join_error": max([c.join_error for c in r.chunks[1:]], default=0.0)}

    def endless_mode():
        per, first = [], None
        for c in endless(pipe, PROMPT, params, seed=seed[0], overlap_s=args.overlap, max_windows=3):
            per.append(c.timings["decode"])
            first = first if first is not None else c.timings["since_start"]
        return {"total": float(sum(per)), "per_window": float(np.mean(per)), "time_to_first_audio": first}

    modes = {"plain": plain, "rescored": rescore, "hybrid": hybrid, "longform": longform, "endless": endless_mode}
    warm = {name: fn() for name, fn in modes.items()}
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for i in range(args.repeats):
        seed[0] = i + 1
        for name, fn in modes.items():
            runs[name].append(fn())

    def summary(rs: list[dict]) -> dict:
        return {k: float(np.percentile([r[k] for r in rs], 50)) for k in rs[0]}

    results = {name: {"p50": summary(rs), "warmup": warm[name], "runs": len(rs)} for name, rs in runs.items()}
    base = results["plain"]["p50"]["total"]
    for r in results.values():
        r["ratio_total_vs_plain"] = r["p50"]["total"] / base
        if "per_window" in r["p50"]:
            r["ratio_per_window_vs_plain"] = r["p50"]["per_window"] / base
        if "time_to_first_audio" in r["p50"]:
            r["ratio_first_audio_vs_plain"] = r["p50"]["time_to_first_audio"] / base

    out = {"command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.modes", *(argv or sys.argv[1:])]),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "device": args.device},
           "args": vars(args), "params": params.to_dict(), "results": results}
    print(f"{'mode':<10} {'p50 total s':>12} {'x plain':>8}  details (p50)")
    for name, r in results.items():
        extra = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r["p50"].items()
                          if k != "total")
        print(f"{name:<10} {r['p50']['total']:>12.3f} {r['ratio_total_vs_plain']:>8.2f}  {extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
