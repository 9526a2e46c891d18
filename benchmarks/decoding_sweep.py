"""A quick outside ear for decoding choices: key right, tempo ok and the buzz measures (the part of
`benchmarks.music_quality` that needs neither basic-pitch nor drum twins) of the held-out captions' takes, for
each decoding override given, seeds pooled.

    python -m benchmarks.decoding_sweep --data out/data/synth --bundle magnet_rt/assets/demo \
        --set '{}' --set '{"min_cfg_coef": 3}' [--seeds 1000 2000] [--takes 24]

One line per override (JSON on stdout), after one with the training range: music_quality's, the buzz
measures over every `--range-every`-th training clip (1, the default: all of them), with the five clips of
the highest autocorrelation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks import music_quality as mq


def sweep_row(pipe, captions, seeds: list[int], overrides: dict, seconds: float, preset: str, ref: dict) -> dict:
    key_ok, ranks, relations, tempo_ok, inside, outside = [], [], [], [], 0, []
    for seed in seeds:
        takes, _ = mq.generate_takes(pipe, [c.caption for c in captions], seconds, preset, seed, overrides)
        for i, (c, x) in enumerate(zip(captions, takes, strict=True)):
            m = mq.key_tempo_buzz(x, pipe.sample_rate, c)
            key_ok.append(m["key_ok"])
            ranks.append(m["key_rank"])
            relations.append(m["key_relation"])
            if m["drums"]:
                tempo_ok.append(m["tempo_ok"])
            if mq.inside({"per_item": [m]}, ref):
                inside += 1
            else:  # which take, and by which measure
                outside.append({"seed": seed + i, "caption": c.caption, "corr_20ms": m["corr_20ms"],
                                "comb_50hz": m["comb_50hz"]})
    return {"overrides": overrides, "takes": len(key_ok), "key_ok": float(np.mean(key_ok)),
            "key_rank": float(np.mean(ranks)),
            "key_relations": {r: relations.count(r) for r in mq.KEY_RELATIONS.values()},
            "tempo_ok_with_drums": float(np.mean(tempo_ok)),
            "inside_training_range": inside, "outside": outside}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decoding_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--set", action="append", default=[], metavar="JSON", help="decoding overrides (repeat)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1000, 2000])
    p.add_argument("--takes", type=int, default=24)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--preset", default="balanced")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--range-every", type=int, default=1, help="measure the training range on every N-th clip")
    args = p.parse_args(argv)
    import torch

    from magnet_rt.registry import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    _, captions = mq.held_out(data, 1, args.takes)
    ref = mq.training_buzz_range(data, args.range_every, args.seconds)
    print(json.dumps({"training_clips": ref}), flush=True)
    pipe = load_pipeline(args.bundle, device="cpu")
    for raw in args.set or ["{}"]:
        row = sweep_row(pipe, captions, args.seeds, json.loads(raw), args.seconds, args.preset, ref)
        print(json.dumps({"bundle": args.bundle, **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
