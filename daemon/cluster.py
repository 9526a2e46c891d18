"""Engine replicas on Ray Serve (`magnet-rt serve --replicas N`, the `cluster` extra; docs/SCALE.md).

The daemon's front (server, scheduler, workers, PROTOCOL.md) stays as it is; only the pipeline changes. The
model loader returns a `ReplicaPipeline`: it keeps a CPU copy of the model for what the front does itself
(admission facts, encoding inpaint/continue sources, preview decoding) and forwards `run_batch` to a Ray Serve
deployment whose replicas each hold a warm pipeline on their own device. A batch streams back from the
replica as events: which replica took it, each decoding step (codes for previews), then the results.

- Cancel: when every job of a batch is cancelled the Ray response is cancelled, which sets the replica's
  cancel flag (its decode loop stops at the next step). A cancelled job of a shared batch is posted on the
  front's `CancelBoard` (a small Ray actor); the replica reads the board at each step and the engine drops
  that job's rows from the batch at its next step (its result is None, as the engine's contract says), while
  the other jobs go on.
- Faults: a replica that dies mid-batch raises `RayActorError` here; the batch is run again on another
  replica. Every job has a seed (the daemon picks one when the request has none), so the rerun gives the
  same codes; step events already forwarded are not forwarded twice. After `max_attempts` deaths on one
  batch it fails with `internal` (a batch that kills every replica it reaches is not retried forever). Serve
  takes a dead replica out of routing and starts a new one; a replica whose engine fails
  `unhealthy_after` batches in a row reports unhealthy and Serve replaces it.

Nothing here is imported by the single daemon: `daemon.server` imports this module only for `--replicas`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from magnet_rt.decoding import StepEvent
from magnet_rt.errors import DecodeCancelled
from magnet_rt.registry import load_pipeline
from protocol import ErrorCode, ProtocolError, ReplicaInfo

from .models import warm_up

log = logging.getLogger(__name__)

# what a replica's process needs from the front's environment (model cache, offline hub, CPU threads)
FORWARDED_ENV = ("MAGNET_RT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS")
# Before Ray is imported: a local Ray talks over 127.0.0.1 only (Ray's single-machine mode); unset when joining.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
BOARD_READ_S = 0.05  # how often a replica reads the cancel board while it decodes (one actor call each)


@dataclass
class ClusterConfig:
    replicas: int = 2
    address: str | None = None  # None: start a local Ray here (loopback only); else join that cluster
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0  # 1: one GPU per replica (Ray sets CUDA_VISIBLE_DEVICES for it)
    device: str = "auto"  # the replicas' device, as `serve --device`
    precision: str = "auto"
    step_graphs: str = "auto"
    threads: int = 1  # torch threads in each replica
    app: str = "magnet-rt"  # Serve application names: <app>-<model>; one name per front on a shared cluster
    max_attempts: int = 3  # replica deaths one batch survives before it fails
    unhealthy_after: int = 3  # engine failures in a row before a replica reports unhealthy


# ---- the replica (runs in a Ray actor) ----------------------------------------------------------------------
class CancelBoard:
    """A Ray actor, one per front: the jobs of running batches that their clients cancelled."""

    def __init__(self):
        self.cancelled: dict[str, set[int]] = {}

    def cancel(self, batch: str, jobs: list[int]) -> None:
        self.cancelled.setdefault(batch, set()).update(jobs)

    def read(self, batch: str) -> list[int]:
        return sorted(self.cancelled.get(batch, ()))

    def forget(self, batch: str) -> None:
        self.cancelled.pop(batch, None)


class EngineReplica:
    """One warm pipeline. `run_batch` is an async generator of ("replica", id, pid), ("step", job, event) and
    ("dropped", [job...]) (cancelled jobs it stopped), then ("results", [JobResult | None]) or ("error", exc)."""

    def __init__(self, name: str, cfg: ClusterConfig):
        from ray import serve

        torch.set_num_threads(max(1, cfg.threads))
        self.pipe = load_pipeline(name, device=cfg.device, precision=cfg.precision, step_graphs=cfg.step_graphs)
        warm_up(self.pipe)
        self.id = serve.get_replica_context().replica_id.unique_id
        self.unhealthy_after = cfg.unhealthy_after
        self.failures = 0  # engine failures in a row

    async def run_batch(self, jobs, board=None, batch: str = ""):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        dropped: set[int] = set()  # jobs cancelled on the board: the engine drops their rows at its next step
        next_read = 0.0

        def put(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def on_step(ji: int, ev: StepEvent) -> None:
            codes = ev.codes.cpu() if ev.codes is not None else None
            put(("step", ji, dataclasses.replace(ev, codes=codes)))

        def work() -> None:
            try:
                put(("results", self.pipe.run_batch(jobs, on_step=on_step,
                                                    is_cancelled=lambda ji: stop.is_set() or ji in dropped)))
            except Exception as exc:  # noqa: BLE001 - sent to the front, which answers with its typed error
                put(("error", exc))

        yield ("replica", self.id, os.getpid())
        threading.Thread(target=work, name="magnet-replica-batch", daemon=True).start()
        try:
            while True:
                item = await events.get()
                if item[0] != "step":
                    healthy = item[0] == "results" or isinstance(item[1], DecodeCancelled)
                    self.failures = 0 if healthy else self.failures + 1
                    yield item
                    return
                yield item
                if board is not None and time.monotonic() >= next_read:  # at most every BOARD_READ_S
                    next_read = time.monotonic() + BOARD_READ_S
                    if new := set(await board.read.remote(batch)) - dropped:
                        dropped.update(new)
                        yield ("dropped", sorted(new))
        finally:  # a cancelled response (asyncio.CancelledError) lands here: the decode stops at its next step
            stop.set()

    def check_health(self) -> None:
        if self.failures >= self.unhealthy_after:
            raise RuntimeError(f"replica {self.id}: the engine failed {self.failures} batches in a row")


# ---- the front -----------------------------------------------------------------------------------------------
@dataclass
class ReplicaStats:
    pid: int = 0
    running: int = 0  # batches of this front on it now
    batches: int = 0  # batches it finished for this front
    deaths: int = 0  # batches it died under


@dataclass
class Tracker:
    """What the front knows of the replicas: read by `status` (socket thread), written by the workers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    replicas: dict[str, ReplicaStats] = field(default_factory=dict)
    retries: int = 0

    def started(self, rid: str, pid: int) -> None:
        with self.lock:
            st = self.replicas.setdefault(rid, ReplicaStats())
            st.pid, st.running = pid, st.running + 1

    def ended(self, rid: str, died: bool) -> None:
        with self.lock:
            st = self.replicas[rid]
            st.running -= 1
            if died:
                st.deaths += 1
                self.retries += 1
            else:
                st.batches += 1


class ReplicaPipeline:
    """The engine's pipeline contract (`run_batch`, `codec`, `lm`, `frame_rate`, ...) with `run_batch` run on a
    Serve replica. Every other attribute is the front's local CPU copy's."""

    def __init__(self, local, handle, app: str, cluster: Cluster, board):
        self._local, self._handle, self._app, self._cluster, self._board = local, handle, app, cluster, board
        self._tracker = Tracker()
        weakref.finalize(self, cluster.delete_app, app)  # unload: the model's replicas go too

    def __getattr__(self, name: str):
        return getattr(self._local, name)

    def run_batch(self, jobs, on_step: Callable[[int, StepEvent], None] | None = None,
                  is_cancelled: Callable[[int], bool] | None = None):
        from ray.exceptions import RayActorError

        if not jobs:
            return []
        reported = [0] * len(jobs)  # last step forwarded per job: a rerun after a death does not repeat them
        attempts = self._cluster.cfg.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(jobs, on_step, is_cancelled, reported)
            except RayActorError as exc:
                log.warning("a replica died running a batch of %d job(s) (attempt %d of %d)%s", len(jobs), attempt,
                            attempts, "; running it again on another replica" if attempt < attempts else "",
                            extra={"ctx": {"app": self._app, "attempt": attempt, "error": type(exc).__name__}})
        raise ProtocolError(ErrorCode.INTERNAL, f"engine replicas died {attempts} times running this request; "
                            "it is not retried again (see the daemon log)")

    def _attempt(self, jobs, on_step, is_cancelled, reported: list[int]):
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import RequestCancelledError

        cancelled = is_cancelled or (lambda _: False)
        batch, posted = uuid.uuid4().hex, set()  # jobs of this batch posted on the cancel board
        gen = self._handle.options(stream=True).run_batch.remote(jobs, self._board, batch)
        replica, died = None, False
        try:
            for item in gen:
                if item[0] == "replica":
                    replica = item[1]
                    self._tracker.started(replica, item[2])
                elif item[0] == "dropped":
                    log.info("replica %s stopped cancelled job(s) %s of a batch of %d", replica, item[1], len(jobs),
                             extra={"ctx": {"app": self._app, "replica": replica, "jobs": item[1]}})
                elif item[0] == "step":
                    _, ji, ev = item
                    gone = {j for j in range(len(jobs)) if cancelled(j)}
                    if len(gone) == len(jobs):
                        gen.cancel()  # the replica stops at its next step
                        return [None] * len(jobs)
                    if new := gone - posted:
                        posted |= new
                        self._board.cancel.remote(batch, sorted(new))
                    if on_step is not None and not cancelled(ji) and ev.step > reported[ji]:
                        reported[ji] = ev.step
                        on_step(ji, ev)
                elif item[0] == "results":
                    return [None if cancelled(ji) else r for ji, r in enumerate(item[1])]
                else:
                    raise item[1]
            raise ProtocolError(ErrorCode.INTERNAL, "a replica ended a batch without results")
        except RequestCancelledError:
            return [None] * len(jobs)
        except RayActorError:
            died = True
            raise
        finally:
            if posted:
                self._board.forget.remote(batch)
            if replica is not None:
                self._tracker.ended(replica, died)

    def replicas(self) -> tuple[ReplicaInfo, ...]:
        """`status_reply.replicas`: every replica Serve runs for this model, with this front's counts."""
        live = self._cluster.replica_ids(self._app)
        with self._tracker.lock:
            known = dict(self._tracker.replicas)
        out = []
        for rid in sorted(set(live) | set(known)):
            st = known.get(rid, ReplicaStats())
            out.append(ReplicaInfo(id=rid, state=live.get(rid, "dead"), pid=st.pid or None, running=st.running,
                                   batches=st.batches, deaths=st.deaths))
        return tuple(out)


class Cluster:
    """The Ray connection and one Serve application per loaded model."""

    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._started = False
        self.board = None  # the CancelBoard actor, made at start

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            if self.cfg.address is None:
                os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
            import ray
            from ray import serve

            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False,
                      runtime_env={"env_vars": env})
            if self.cfg.address is None:  # a local Ray on loopback with just the replicas' CPUs
                kw.update(num_cpus=max(1, round(self.cfg.replicas * self.cfg.cpus_per_replica + 0.4)))
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            ray.init(address=self.cfg.address, **kw)
            serve.start(proxy_location="Disabled")  # no HTTP: clients come through the daemon's socket
            self.board = ray.remote(num_cpus=0)(CancelBoard).remote()
            for sig, handler in handlers.items():  # Ray's own would abort: the daemon's shutdown stays (§6)
                if handler is not None:
                    signal.signal(sig, handler)
            self._started = True
            log.info("ray: %s, %d replica(s) per model", "local" if self.cfg.address is None else self.cfg.address,
                     self.cfg.replicas, extra={"ctx": {"replicas": self.cfg.replicas, "address": self.cfg.address}})

    def load_pipeline(self, name: str, device: str = "auto", **_) -> ReplicaPipeline:
        """The model loader of `daemon.models.ModelManager`: deploy `name` on N replicas, keep a CPU copy here."""
        from ray import serve

        self.start()
        t0 = time.perf_counter()
        cfg = self.cfg if device == "auto" else ClusterConfig(**{**self.cfg.__dict__, "device": device})
        local = load_pipeline(name, device="cpu")
        app = f"{cfg.app}-{name}".replace("/", "_")
        deployment = serve.deployment(
            EngineReplica, name="engine", num_replicas=cfg.replicas, max_ongoing_requests=1,
            ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
            health_check_period_s=2.0)
        handle = serve.run(deployment.bind(name, cfg), name=app, route_prefix=None)
        log.info("model %s on %d replica(s) in %.1f s", name, cfg.replicas, time.perf_counter() - t0,
                 extra={"ctx": {"model": name, "replicas": cfg.replicas}})
        return ReplicaPipeline(local, handle, app, self, self.board)

    def replica_ids(self, app: str) -> dict[str, str]:
        """{replica id: "alive"} of the model's deployment: its replica actors registered with Ray now."""
        import ray

        prefix = f"SERVE_REPLICA::{app}#engine#"
        try:
            names = ray.util.list_named_actors(all_namespaces=True)
        except Exception:  # noqa: BLE001 - status still answers, without live replicas
            log.debug("ray: listing actors failed", exc_info=True)
            return {}
        return {n["name"][len(prefix):]: "alive" for n in names if n["name"].startswith(prefix)}

    def delete_app(self, app: str) -> None:
        import ray
        from ray import serve

        if self._started and ray.is_initialized():
            try:
                serve.delete(app, _blocking=False)
            except Exception:  # noqa: BLE001 - at exit Serve may be gone already
                log.debug("serve.delete(%s) failed", app, exc_info=True)

    def close(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
        import ray
        from ray import serve

        if self.cfg.address is None:
            serve.shutdown()
        ray.shutdown()


# ---- `magnet-rt serve` options -------------------------------------------------------------------------------
def add_cluster_arguments(p) -> None:
    g = p.add_argument_group("replicas (Ray Serve, the `cluster` extra; docs/SCALE.md)")
    g.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="run the engine as N Ray Serve replicas, each with its own warm model (0: in this process, "
                        "the default)")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting a local one")
    g.add_argument("--ray-app", default="magnet-rt", metavar="NAME",
                   help="prefix of this daemon's Serve applications (NAME-MODEL); give each daemon sharing a Ray "
                        "cluster its own (default magnet-rt)")
    g.add_argument("--replica-cpus", type=float, default=1.0, metavar="N", help="CPUs Ray reserves per replica")
    g.add_argument("--replica-gpus", type=float, default=0.0, metavar="N",
                   help="GPUs per replica (1 on a GPU node: one replica per GPU)")


def cluster_from_args(args) -> Cluster | None:
    """The Cluster for `serve --replicas N` (N >= 1), else None."""
    if not args.replicas:
        return None
    return Cluster(ClusterConfig(replicas=args.replicas, address=args.ray_address, cpus_per_replica=args.replica_cpus,
                                 gpus_per_replica=args.replica_gpus, device=args.device, precision=args.precision,
                                 step_graphs=args.step_graphs, threads=args.threads or 1, app=args.ray_app))


def check_cluster_args(p, args) -> None:
    if args.replicas < 0:
        p.error("--replicas must be 0 (no replicas) or more")
    if args.ray_address is not None and not args.replicas:
        p.error("--ray-address needs --replicas N")
    if args.replicas and args.rescorer is not None:
        p.error("--rescorer runs in the daemon's process and cannot be combined with --replicas yet")
    if args.replica_cpus <= 0 or args.replica_gpus < 0:
        p.error("--replica-cpus must be positive and --replica-gpus 0 or more")
