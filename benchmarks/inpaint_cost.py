"""Cost of inpainting a 2 s region in a 60 s clip vs in a 10 s clip (issue 13): it should cost one window,
not the clip's length. Same model, seed and preset; the median of `--repeats` runs of each, interleaved.

    python -m benchmarks.inpaint_cost --model demo --device cpu --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from magnet_rt.presets import resolve_params
from magnet_rt.registry import load_pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="live")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    pipe = load_pipeline(args.model, device=args.device)
    params, sr = resolve_params(args.preset), pipe.sample_rate
    rng = np.random.default_rng(0)
    clips = {s: (rng.standard_normal(s * sr) * 0.1).astype(np.float32) for s in (10, 60)}
    times: dict[int, list[float]] = {10: [], 60: []}
    pipe.inpaint(clips[10], sr, 4.0, 6.0, "warm-up", params=params, seed=0)
    for _ in range(args.repeats):
        for s, x in clips.items():
            t0 = time.perf_counter()
            pipe.inpaint(x, sr, s / 2 - 1, s / 2 + 1, "jazz with drums", params=params, seed=1)
            times[s].append(time.perf_counter() - t0)
    med = {s: statistics.median(t) for s, t in times.items()}
    print(json.dumps({"model": args.model, "device": args.device, "preset": args.preset, "repeats": args.repeats,
                      "median_s": med, "ratio_60_over_10": med[60] / med[10]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
