"""Decoding schedules by measurement on a trained model: every preset and the paper's Fig. 7 grid
(steps on the first codebook x steps on each higher codebook), each judged against the full schedule.

    python -m benchmarks.schedules --bundle magnet_rt/assets/demo --data out/data/synth \
        --classifier out/runs/adherence [--n 48] [--valid 96] [--threads 1] [--json OUT]

For every schedule the same `--n` held-out captions are generated with the same seeds (batches of 16,
10 s). Reported per schedule: forwards (sum of steps), generation seconds and their ratio to the full
schedule [20, 10, 10, 10] (CPU: ratios only), prompt adherence (the classifier of
`magnet_rt.train.adherence`: mean accuracy over style / drums / tempo / lead family) and an FAD-style
Frechet distance between the classifier embeddings of the generated clips and of the codec's
reconstructions of the held-out clips (lower is closer to real data). `--classifier` is the folder the
adherence run wrote (classifier.safetensors and features.pt).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

from .report import emit

FULL = (20, 10, 10, 10)
GRID_FIRST = (5, 10, 20)
GRID_HIGHER = (1, 3, 10)


def schedules(presets: list[str], grid_first=GRID_FIRST, grid_higher=GRID_HIGHER) -> list[tuple[str, object]]:
    """(label, DecodeParams) for each preset and each point of the Fig. 7 grid (non-overlapping spans)."""
    from magnet_rt.presets import resolve_params

    out = [(f"preset {p}", resolve_params(p)) for p in presets]
    base = resolve_params("reference")
    seen = {tuple(p.decoding_steps) + (p.span_arrangement,) for _, p in out}
    for first in grid_first:
        for higher in grid_higher:
            params = replace(base, decoding_steps=(first, higher, higher, higher))
            if tuple(params.decoding_steps) + (params.span_arrangement,) not in seen:
                out.append((f"grid [{first},{higher},{higher},{higher}]", params))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.schedules", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="magnet_rt/assets/demo")
    p.add_argument("--data", required=True, help="the generator's folder (held-out captions and labels)")
    p.add_argument("--classifier", required=True, help="folder written by python -m magnet_rt.train.adherence")
    p.add_argument("--valid", type=int, default=96, help="held-out files (the LM trainer's --valid)")
    p.add_argument("--n", type=int, default=48, help="held-out captions generated per schedule")
    p.add_argument("--presets", default="live,balanced,studio,reference")
    p.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True, help="include the Fig. 7 grid")
    p.add_argument("--grid-first", default=",".join(map(str, GRID_FIRST)), help="first-codebook steps of the grid")
    p.add_argument("--grid-higher", default=",".join(map(str, GRID_HIGHER)), help="steps per higher codebook")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from magnet_rt.bundle import load_bundle
    from magnet_rt.train.adherence import (
        accuracy,
        frechet_distance,
        generated_features,
        held_out_features,
        labels_of,
        load_classifier,
        split_like_lm,
    )

    split = split_like_lm(Path(args.data), args.valid)
    held = split.held[: args.n]
    labels = labels_of([f.labels for f in held])
    clf = load_classifier(Path(args.classifier) / "classifier.safetensors")
    real = clf.embed(held_out_features(Path(args.classifier), Path(args.bundle)))
    pipe = load_bundle(args.bundle, device="cpu")
    todo = schedules([s for s in args.presets.split(",") if s], [int(x) for x in args.grid_first.split(",")],
                     [int(x) for x in args.grid_higher.split(",")])
    if not args.grid:
        todo = [t for t in todo if t[0].startswith("preset")]
    rows = []
    for label, params in todo:
        feats, seconds = generated_features(pipe, [f.caption for f in held], params, args.seed)
        rows.append({"schedule": label, "decoding_steps": list(params.decoding_steps),
                     "span_arrangement": params.span_arrangement, "forwards": sum(params.decoding_steps),
                     "seconds": round(seconds, 2), "adherence": accuracy(clf.predict(feats), labels),
                     "frechet": round(frechet_distance(clf.embed(feats), real), 3)})
        print(f"{label:28s} {rows[-1]['seconds']:8.1f} s  adherence {rows[-1]['adherence']['mean']:.3f}  "
              f"FD {rows[-1]['frechet']:.2f}", file=sys.stderr)
    full = next((r for r in rows if tuple(r["decoding_steps"]) == FULL and r["span_arrangement"] == "nonoverlap"),
                None)
    for r in rows:
        r["time_vs_full"] = round(r["seconds"] / full["seconds"], 3) if full else None
    emit({"bundle": args.bundle, "n": len(held), "seconds_audio": pipe.segment_duration,
          "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__},
          "rows": rows}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
