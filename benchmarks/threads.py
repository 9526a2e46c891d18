"""Torch CPU threads vs generation time, in-process, each setting in a fresh process (OpenMP reads its
environment once, at start-up): the measurement behind `magnet_rt.devices.cpu_threads` (issue 14, item 18).

    python -m benchmarks.threads --model demo --duration 4 --repeats 3 --settings 1,2,2p,auto

A setting is a thread count, `p` for OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of
spinning), or `auto` (what the daemon picks: `cpu_threads`). One JSON line per setting: median and all times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(model: str, duration_s: float, repeats: int, setting: str) -> dict:
    """In this process: load `model` on the CPU with the setting's threads, warm up, time `repeats` takes."""
    import torch

    from magnet_rt.devices import cpu_threads
    from magnet_rt.presets import resolve_params
    from magnet_rt.registry import load_pipeline

    threads = cpu_threads("cpu") if setting == "auto" else int(setting.rstrip("p"))
    torch.set_num_threads(threads)
    pipe = load_pipeline(model, device="cpu")
    params = resolve_params("live", None, pipe.decoding)
    pipe.generate("warm-up", 1.0, params, seed=0)
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        pipe.generate("warm rhodes chords", duration_s, params, seed=k)
        times.append(round(time.perf_counter() - t0, 3))
    return {"setting": setting, "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "median_s": statistics.median(times), "times_s": times, "load_avg_1min": os.getloadavg()[0]}


def run_setting(args: argparse.Namespace, setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if setting.endswith("p"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    child = [sys.executable, "-m", "benchmarks.threads", "--model", args.model, "--duration", str(args.duration),
             "--repeats", str(args.repeats), "--one", setting]
    out = subprocess.run(child, env=env, capture_output=True, text=True, timeout=args.timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", default="1,2,2p,auto")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per setting")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure one setting
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model, args.duration, args.repeats, args.one)), flush=True)
        return 0
    for setting in args.settings.split(","):
        print(json.dumps(run_setting(args, setting)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
