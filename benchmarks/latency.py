"""Latency of `generate`: the straightforward path and the fast path, same weights, one run.

    python -m benchmarks.latency --shape {tiny,small,medium} --device {cpu,cuda} --preset NAME \
        --repeats N [--batch B] [--frames T] [--codec] [--json OUT]

Random weights of the named shape (tiny = the shared fixture's structure, small = magnet-small-10secs,
medium = magnet-medium-10secs), batch B with classifier-free guidance (2B rows per forward), 10 s
(500 frames). The baseline is the reference computation (all heads, dense masked attention, null rows
through cross-attention, fp32 on CPU / fp16 blocks on CUDA as released); the fast path is
`decoding.decode` with the device's chosen step form (`decoding.choose_path`), in `--fast-dtype` (auto:
fp16 blocks on CUDA as released, fp32 on CPU:
bf16 matmuls measured slower than fp32 on our CPU build, see RESULTS.md; `--fast-dtype bf16` to try).
The fast path comes in two forms, both timed: `dynamic` (samples only the re-masked positions, with
data-dependent shapes) and `static` (`magnet_rt.graphs`: fixed shapes, no host sync, replayed as CUDA
graphs on a GPU, eager on the CPU). `fast` reports the form the pipeline serves with on that device
(`magnet_rt.graphs.use_static`), `fast_dynamic` / `fast_static` the other. Iteration -1 (warm-up, which
captures the graphs) is reported apart. With `--codec`, a random EnCodec 32 kHz of the released
architecture decodes the codes too (LM + codec, as a request is served).
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import sys
import time

import numpy as np
import torch

from magnet_rt.decoding import DecodePath, RowGroup, decode
from magnet_rt.graphs import StepGraphs, use_static
from magnet_rt.int8 import quantize_int8
from magnet_rt.lm import RELEASED_SHAPES, MagnetConfig, MagnetLM
from magnet_rt.presets import resolve_params

from .report import emit

SHAPES = {
    "tiny": MagnetConfig(dim=64, num_heads=4, num_layers=2, card=2048, text_dim=768),
    "small": RELEASED_SHAPES["facebook/magnet-small-10secs"],
    "medium": RELEASED_SHAPES["facebook/magnet-medium-10secs"],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.qint8}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def time_interleaved(fns: dict, repeats: int, device: torch.device) -> dict:
    """Warm each path up once (iteration -1, reported apart), then alternate the paths in every repeat
    so that a machine whose load changes over the run slows both alike."""
    warm = {name: timed(fn, device) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: {"p50_s": float(np.percentile(t, 50)), "p95_s": float(np.percentile(t, 95)), "min_s": min(t),
                   "mean_s": float(np.mean(t)), "warmup_s": warm[name], "runs": len(t)} for name, t in times.items()}


def build(shape: str, device: torch.device, dtype: torch.dtype) -> MagnetLM:
    lm = MagnetLM(SHAPES[shape]).init_weights(0).to(device).eval()
    return lm.set_precision(dtype) if dtype != torch.float32 else lm


def logit_error(ref: MagnetLM, other: MagnetLM, batch: int, frames: int, device) -> float:
    """Max |logit difference| of `other` against `ref` on one random input, relative to max |logit|."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, ref.card, (batch, ref.n_q, frames), generator=g).to(device)
    h = torch.randn(batch, 12, ref.cfg.text_dim, generator=g).to(device)
    m = torch.ones(batch, 12, dtype=torch.long, device=device)
    a, b = ref.logits(codes, h, m, 1), other.logits(codes, h, m, 1)
    return float((a - b).abs().max() / a.abs().max())


def model_args(ap: argparse.ArgumentParser, shape: str, repeats: int) -> None:
    """The options every model benchmark takes: the shape, the device, repeats, CPU threads."""
    ap.add_argument("--shape", choices=SHAPES, default=shape)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", dest="json_out")


def parse_model_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """Parse, set torch's CPU threads when asked, and name the device."""
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(ap, "tiny", 3)
    ap.add_argument("--preset", default="live")
    ap.add_argument("--steps", help="override decoding_steps, e.g. 20,10,10,10")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batch-sweep", help="fast path only: latency, throughput and peak memory for each batch "
                    "size, e.g. 1,2,4,8,16 (the paper's Fig. 2)")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--fast-dtype", choices=["auto", *DTYPES], default="auto",
                    help="int8: dynamically quantized block projections (CPU; int8.quantize_int8)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-other", action="store_true", help="time only the fast form served on this device")
    ap.add_argument("--codec", action="store_true", help="include EnCodec 32 kHz decoding (random weights)")
    args, device = parse_model_args(ap, argv)
    steps = {"decoding_steps": [int(s) for s in args.steps.split(",")]} if args.steps else None
    params = resolve_params(args.preset, steps)
    base_dtype = torch.float16 if device.type == "cuda" else torch.float32
    fast_dtype = DTYPES[args.fast_dtype] if args.fast_dtype != "auto" else (
        torch.float16 if device.type == "cuda" else torch.float32)

    base = build(args.shape, device, base_dtype)
    if fast_dtype == base_dtype:
        fast = base
    elif fast_dtype == torch.qint8:
        fast = quantize_int8(copy.deepcopy(base))
    else:
        fast = copy.deepcopy(base).set_precision(fast_dtype)
    text = torch.randn(args.batch, 12, base.cfg.text_dim, generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones(args.batch, 12, dtype=torch.long, device=device)
    codec = None
    if args.codec:
        from magnet_rt.codec import Codec
        from magnet_rt.encodec_checkpoints import random_encodec_config, random_encodec_model

        cfg = random_encodec_config(n_filters=64, dimension=128, lstm_layers=2)  # the released 32 kHz shape
        codec = Codec(random_encodec_model(cfg), device=device)

    graphs = {}

    def run(lm: MagnetLM, is_fast: bool, batch: int = args.batch, static: bool | None = None):
        static = use_static(device) if static is None else static
        if static and id(lm) not in graphs:
            graphs[id(lm)] = StepGraphs(lm)

        def go():
            with torch.inference_mode():
                cond = lm.project_text(text[:1].expand(batch, -1, -1), mask[:1].expand(batch, -1))
                g = torch.Generator(device=device).manual_seed(0)
                path = (DecodePath.STATIC if static else DecodePath.DYNAMIC) if is_fast else DecodePath.REFERENCE
                codes = decode(lm, cond, args.frames, params, [RowGroup(batch, g)], path=path,
                               graphs=graphs.get(id(lm)) if static else None)[0]
                if codec is not None:
                    codec.decode(codes)
        return go

    if args.batch_sweep:
        sweep = []
        for b in (int(x) for x in args.batch_sweep.split(",")):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time_interleaved({"fast": run(fast, True, b)}, args.repeats, device)["fast"]
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            rate = b * args.frames / 50 / t["p50_s"]  # seconds of audio made per second
            sweep.append({"batch": b, **t, "audio_s_per_s": rate, "peak_memory_bytes": peak})
        emit({"shape": args.shape, "device": str(device), "preset": args.preset, "fast_dtype": str(fast_dtype),
              "frames": args.frames, "sweep": sweep}, args.json_out)
        return 0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result: dict = {
        "shape": args.shape, "device": str(device), "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "preset": args.preset, "decoding_steps": list(params.decoding_steps),
        "span_arrangement": params.span_arrangement, "batch": args.batch, "frames": args.frames,
        "forwards": params.total_steps, "codec": bool(args.codec), "baseline_dtype": str(base_dtype),
        "fast_dtype": str(fast_dtype), "params": sum(p.numel() for p in base.parameters()),
        "torch": torch.__version__, "command": " ".join(["python -m benchmarks.latency", *(argv or sys.argv[1:])]),
    }
    served = "static" if use_static(device) else "dynamic"
    other = "dynamic" if served == "static" else "static"
    key = {served: "fast", other: f"fast_{other}"}  # result key of each fast form
    result["fast_form"] = served
    paths = {"fast": run(fast, True)}
    if not args.skip_other:
        paths[key[other]] = run(fast, True, static=other == "static")
    if not args.skip_baseline:
        paths["baseline"] = run(base, False)
    result.update(time_interleaved(paths, args.repeats, device))
    if not args.skip_baseline:
        result["speedup"] = result["baseline"]["p50_s"] / result["fast"]["p50_s"]
    if key[other] in result:
        result["static_vs_dynamic"] = result[key["dynamic"]]["p50_s"] / result[key["static"]]["p50_s"]
    if fast is not base:
        result["fast_logit_rel_error"] = logit_error(base, fast, args.batch, min(args.frames, 100), device)
    result["peak_memory_bytes"] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
