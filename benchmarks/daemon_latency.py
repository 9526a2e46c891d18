"""Request -> first audio byte and -> last audio byte through the daemon, against the in-process time of
the same generation (same model, preset, duration, seed) in one run.

    python -m benchmarks.daemon_latency --model tiny-random --preset live --duration 10 --repeats 5 [--json OUT]

The daemon runs as a subprocess on 127.0.0.1 (a free port); the client is a plain DEALER speaking the
protocol. "In-process" is `MagnetPipeline.generate` in this process with the same device. On a CPU the
ratios are what count (overhead of the socket path, chunking and msgpack); on a GPU the absolute times too.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import zmq

from daemon.testing import DaemonProcess
from protocol import Generate, Stream, pack, unpack

from .report import daemon_request_args, emit


def through_daemon(endpoint: str, args, i: int) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    rid = f"bench-{i}"
    msg = Generate(id=rid, prompt=args.prompt, duration_s=args.duration, preset=args.preset, seed=args.seed,
                   stream=Stream(progress=False, audio=True), chunk_s=args.chunk)
    t0 = time.perf_counter()
    sock.send(pack(msg))
    first = last = None
    samples = 0
    deadline = t0 + 600
    while time.perf_counter() < deadline:
        if not sock.poll(1000):
            continue
        reply = unpack(sock.recv())
        if reply.TYPE == "audio":
            now = time.perf_counter()
            first = first or now
            samples += len(reply.data) // 4
            if reply.last:
                last = now
        if reply.TYPE in ("done", "error", "cancelled"):
            if reply.TYPE != "done":
                raise RuntimeError(f"daemon answered {reply}")
            timings = dict(reply.timings)
            break
    sock.close()
    return {"first_audio_s": first - t0, "last_audio_s": last - t0, "samples": samples, "engine": timings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    daemon_request_args(ap, duration_s=10.0)
    ap.add_argument("--chunk", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from magnet_rt.presets import resolve_params
    from magnet_rt.registry import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    params = resolve_params(args.preset)
    daemon = DaemonProcess("--model", args.model, "--device", args.device, env={"PYTHONUNBUFFERED": "1"})
    daemon.start()
    try:
        pipe.generate(args.prompt, duration_s=args.duration, params=params, seed=args.seed)  # warm
        through_daemon(daemon.endpoint, args, -1)  # warm the daemon's path too
        local, remote = [], []
        for i in range(args.repeats):  # interleaved, so a changing machine load hits both alike
            t = time.perf_counter()
            pipe.generate(args.prompt, duration_s=args.duration, params=params, seed=args.seed)
            local.append(time.perf_counter() - t)
            remote.append(through_daemon(daemon.endpoint, args, i))
    finally:
        daemon.stop()
    p50 = float(np.median(local))
    first = float(np.median([r["first_audio_s"] for r in remote]))
    last = float(np.median([r["last_audio_s"] for r in remote]))
    result = {
        "model": args.model, "device": args.device, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "preset": args.preset, "duration_s": args.duration, "chunk_s": args.chunk,
        "repeats": args.repeats, "in_process_p50_s": p50, "daemon_first_audio_p50_s": first,
        "daemon_last_audio_p50_s": last, "first_audio_ratio": first / p50, "last_audio_ratio": last / p50,
        "daemon_engine_total_p50_s": float(np.median([r["engine"].get("total", np.nan) for r in remote])),
        "command": "python -m benchmarks.daemon_latency " + " ".join(argv or []),
    }
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
