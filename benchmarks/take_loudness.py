"""Integrated loudness and sample peak of finished takes (what every generate path returns: DC removed, fades,
-14 LUFS with the look-ahead limiter, `magnet_rt.audio.finish_take`), and of the same takes gain-only (peaks
stop the gain; the finishing before the limiter), measured with pyloudnorm:

    python -m benchmarks.take_loudness --data out/data/synth --bundle demo --takes 12 --seconds 6 --seed 500

Takes come from the held-out captions `benchmarks.music_quality` uses (seed + index). One JSON line per take,
then a summary line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def measure(x: np.ndarray, sr: int) -> dict[str, float]:
    import pyloudnorm

    return {"lufs": round(float(pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64))), 2),
            "peak_dbfs": round(float(20 * np.log10(max(float(np.abs(x).max()), 1e-12))), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the demo's training folder (its held-out captions)")
    p.add_argument("--bundle", default="demo")
    p.add_argument("--takes", type=int, default=12)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    from benchmarks.music_quality import held_out
    from magnet_rt.audio import DEFAULT_LOUDNESS_LUFS, finish_take, loudness_normalize
    from magnet_rt.presets import resolve_params
    from magnet_rt.registry import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.bundle, device="cpu")
    params = resolve_params("balanced", None, pipe.decoding)
    _, captions = held_out(Path(args.data), 0, args.takes)
    rows = []
    for i, c in enumerate(captions):
        # loudness=None: DC removed and faded, at the model's level; finishing it again differs from the default
        # path only by a second fade on its first and last 5 ms
        raw = pipe.generate(c.caption, duration_s=args.seconds, params=params, seed=args.seed + i, loudness=None)
        x = raw.audio[0].mean(0)
        finished = finish_take(x, raw.sample_rate)
        gain_only = loudness_normalize(x, raw.sample_rate, DEFAULT_LOUDNESS_LUFS)
        row = {"caption": c.caption, "finished": measure(finished, raw.sample_rate),
               "gain_only": measure(gain_only, raw.sample_rate)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {kind: {"lufs_range": [min(r[kind]["lufs"] for r in rows), max(r[kind]["lufs"] for r in rows)],
                      "peak_dbfs_max": max(r[kind]["peak_dbfs"] for r in rows)} for kind in ("finished", "gain_only")}
    print(json.dumps({"bundle": args.bundle, "takes": len(rows), **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
