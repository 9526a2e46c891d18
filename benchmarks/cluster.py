"""Throughput and latency of `serve --replicas N` (Ray Serve, daemon/cluster.py) against the single daemon,
under the same closed-loop load, in one run.

    python -m benchmarks.cluster --model tiny-random --clients 4 --requests 4 --rounds 3 [--json OUT]

Three daemons at once, each a subprocess on 127.0.0.1 (the two with replicas each on its own local Ray, on
loopback): the single daemon, `--replicas 1` and `--replicas 2`. In each of `--rounds` rounds, each daemon in
turn gets the same load: `--clients` DEALER clients, each sending `--requests` generates back to back (a new one
when the last ended), then `--requests` requests from one client alone. Reported per daemon: takes/s under
load, request -> `done` p50/p95 under load and at one client, and ratios: 2 replicas against 1 (scale-out),
the Ray path at one client against the single daemon (overhead).
On a machine with fewer free cores than replicas the replicas share cores: the scale-out ratio then says what
the machine allows, not what N GPUs do.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np
import zmq

from daemon.testing import Client, DaemonProcess
from protocol import Generate, Stream

from .report import daemon_request_args, emit

DEADLINE_S = 900.0


def one_request(c: Client, rid: str, args, seed: int) -> float:
    msg = Generate(id=rid, prompt=args.prompt, duration_s=args.duration, preset=args.preset, seed=seed,
                   stream=Stream(progress=False, audio=True))
    t0 = time.perf_counter()
    msgs = c.request(msg, timeout=DEADLINE_S)
    if msgs[-1].TYPE != "done":
        raise RuntimeError(f"{rid}: the daemon answered {msgs[-1]}")
    return time.perf_counter() - t0


def load(endpoint: str, args, clients: int, tag: str) -> dict:
    """`clients` closed-loop clients, `args.requests` each; takes/s and latency percentiles."""
    zctx = zmq.Context.instance()
    lat: list[float] = []
    errors: list[BaseException] = []

    def run(k: int) -> None:
        c = Client(zctx, endpoint)
        try:
            for i in range(args.requests):
                lat.append(one_request(c, f"{tag}-{k}-{i}", args, seed=1000 * k + i))
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    wall = time.perf_counter() - t0
    if errors or len(lat) != clients * args.requests:
        raise RuntimeError(f"{tag}: {len(lat)} of {clients * args.requests} requests ended with done: {errors[:1]}")
    return {"latencies": lat, "wall_s": wall}


def start(args, replicas: int) -> DaemonProcess:
    extra = ["--replicas", str(replicas), "--replica-cpus", str(args.replica_cpus)] if replicas else []
    d = DaemonProcess("--model", args.model, "--device", args.device, "--threads", "1", *extra,
                      env={"OMP_NUM_THREADS": "1"})
    d.start(timeout=600)
    return d


def summary(parts: list[dict]) -> dict:
    lat = [x for p in parts for x in p["latencies"]]
    wall = sum(p["wall_s"] for p in parts)
    return {"takes": len(lat), "wall_s": wall, "takes_per_s": len(lat) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95))}


def measure(args) -> dict:
    """All three daemons up at once; rounds interleave them, so a changing machine load hits each alike."""
    names = {"single": 0, "replicas_1": 1, "replicas_2": 2}
    daemons: dict[str, DaemonProcess] = {}
    busy: dict[str, list] = {n: [] for n in names}
    alone: dict[str, list] = {n: [] for n in names}
    try:
        for name, n in names.items():
            daemons[name] = start(args, n)
            load(daemons[name].endpoint, args, 1, f"warm-{name}")  # first batches on every path
        for r in range(args.rounds):
            for name, d in daemons.items():
                busy[name].append(load(d.endpoint, args, args.clients, f"load{r}-{name}"))
                alone[name].append(load(d.endpoint, args, 1, f"one{r}-{name}"))
    finally:
        for d in daemons.values():
            d.stop(timeout=180)
    return {name: {"under_load": summary(busy[name]), "one_client": summary(alone[name])} for name in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    daemon_request_args(ap, duration_s=2.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3, help="per client and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replica-cpus", type=float, default=0.5)
    args = ap.parse_args(argv)

    runs = measure(args)
    one, two, single = runs["replicas_1"], runs["replicas_2"], runs["single"]
    result = {
        "model": args.model, "device": args.device, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "preset": args.preset, "duration_s": args.duration, "clients": args.clients,
        "requests_per_client": args.requests, "rounds": args.rounds, **runs,
        "ratios": {
            "takes_per_s_2_vs_1_replica": two["under_load"]["takes_per_s"] / one["under_load"]["takes_per_s"],
            "p50_under_load_2_vs_1_replica": two["under_load"]["p50_s"] / one["under_load"]["p50_s"],
            "p95_under_load_2_vs_1_replica": two["under_load"]["p95_s"] / one["under_load"]["p95_s"],
            "one_client_p50_ray_1_replica_vs_single": one["one_client"]["p50_s"] / single["one_client"]["p50_s"],
            "takes_per_s_1_replica_vs_single": one["under_load"]["takes_per_s"] / single["under_load"]["takes_per_s"],
        },
        "command": "python -m benchmarks.cluster " + " ".join(argv or []),
    }
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
