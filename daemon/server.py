"""`magnet-rt serve`: one ROUTER socket, a poll loop on the main thread, a dispatch table of handlers.

The loop never waits on the engine: renders, loads and unloads go to the scheduler's queue and the
engine worker (daemon.worker) posts what it produces back over an inproc PUSH/PULL pair, which this
thread forwards, so only this thread touches the ROUTER. ping, status and cancel are answered while a
batch runs. Every frame gets a typed answer: a frame that is not a message gets `bad_request`, a
handler that raises gets its error, and the loop goes on.

Shutdown (SIGINT/SIGTERM): stop accepting work (new requests get `shutting_down`), answer queued requests
with `cancelled` (PROTOCOL.md §6), cancel running endless requests, let the running batch and long-form
requests finish (`done`), then close with linger and exit 0. A second signal cancels everything running at
its next step.

`--rescorer MODEL` loads a MusicGen (magnet_rt.rescoring) beside the models: it rescores requests with
`rescore` > 0 (or the `rescored` preset) and generates the autoregressive prefix of `hybrid_s` requests.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import zmq

from magnet_rt.devices import cpu_threads
from magnet_rt.graphs import STEP_GRAPHS
from magnet_rt.registry import PRECISIONS, TINY_RANDOM, default_model, load_pipeline
from protocol import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_MESSAGE_BYTES,
    ENV_ENDPOINT,
    MAX_LONG_DURATION_S,
    MAX_OUTPUTS,
    MAX_PROMPTS,
    MAX_VARIATIONS,
    PROTOCOL_VERSION,
    Accepted,
    Cancelled,
    CancelReply,
    Error,
    ErrorCode,
    Limits,
    LoadReply,
    Message,
    ModelsReply,
    Pong,
    ProtocolError,
    QueueEntry,
    SetPromptReply,
    StatusReply,
    UnloadReply,
    Welcome,
    pack,
    package_version,
    unpack,
)
from protocol.framing import OVERSIZE_FACTOR

from . import render
from .cluster import add_cluster_arguments, check_cluster_args, cluster_from_args
from .errors import to_protocol_error
from .files import PathPolicy
from .keys import is_local_endpoint, load_server_secret
from .logs import LOG_FORMATS, ctx, setup_logging
from .models import ModelManager, describe_device
from .render import BatchPlan, StreamPlan, check_prompt_tempo
from .scheduler import Scheduler, State, Ticket
from .worker import LoadModel, UnloadModel, Worker

log = logging.getLogger("daemon")

OUTBOX = "inproc://magnet-rt-outbox"
POLL_MS = 100
HOUSEKEEPING_S = 0.5
MAX_FRAMES_PER_TURN = 256  # bound one loop turn so neither socket starves the other
SEND_HWM = 100_000  # progress + audio chunks of many requests to a slow reader


class Daemon:
    def __init__(self, args: argparse.Namespace):
        if args.model is None:
            args.model = default_model()  # the shipped demo bundle
        self.args = args
        self.max_bytes = args.max_message_bytes
        self.sched = Scheduler(max_queue=args.max_queue, max_batch=args.max_batch)
        self.cluster = cluster_from_args(args)  # --replicas N: the engine on Ray Serve (daemon.cluster)
        loader = (self.cluster.load_pipeline if self.cluster is not None else
                  functools.partial(load_pipeline, precision=args.precision, step_graphs=args.step_graphs))
        self.models = ModelManager(args.model, device=args.device, keep_alive_s=args.keep_alive,
                                   rescorer=args.rescorer, loader=loader)
        self.files = PathPolicy(args.allow_dir)
        self.started = time.monotonic()
        self.signals = 0
        self.stopping = False
        self.failed = False
        self.clients: dict[bytes, str] = {}  # routing id -> name from hello
        self.gone: set[bytes] = set()
        self.handlers: dict[str, Callable[[bytes, Message], None]] = {
            "hello": self.on_hello, "ping": self.on_ping, "status": self.on_status, "models": self.on_models,
            "cancel": self.on_cancel, "set_prompt": self.on_set_prompt, "load": self.on_load,
            "unload": self.on_unload,
            "generate": self.on_render, "inpaint": self.on_render, "continue": self.on_render,
        }

    # ---- setup ------------------------------------------------------------------------------------------
    def open(self) -> str:
        """Bind, load and warm the default model, start the worker. Returns the bound endpoint."""
        self.zctx = zmq.Context()
        self.router = self.pull = None
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer raises EHOSTUNREACH
        # Frames up to OVERSIZE_FACTOR x the limit are read and answered with too_large; libzmq drops a peer
        # that sends a larger one (PROTOCOL.md §2, §3).
        self.router.setsockopt(zmq.MAXMSGSIZE, OVERSIZE_FACTOR * self.max_bytes)
        self.router.sndhwm = SEND_HWM
        self.router.linger = 0
        if "[" in self.args.bind:
            self.router.ipv6 = True
        if self.args.curve_secret:
            public, secret = load_server_secret(self.args.curve_secret)
            self.router.curve_server = True
            self.router.curve_publickey, self.router.curve_secretkey = public, secret
        self.router.bind(self.args.bind)
        endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pull = self.zctx.socket(zmq.PULL)
        self.pull.bind(OUTBOX)
        self.models.load(self.args.model)
        # one engine thread, or one per replica so that every replica has a batch in flight
        self.workers = [Worker(self.zctx, OUTBOX, self.sched, self.models, self.max_bytes,
                               endless_ahead_s=self.args.endless_ahead) for _ in range(max(1, self.args.replicas))]
        self.worker = self.workers[0]
        for w in self.workers:
            w.start()
        return endpoint

    def close(self) -> None:
        if getattr(self, "zctx", None) is None:
            return
        if getattr(self, "router", None) is not None:
            self.router.close(linger=2000)  # let the last answers leave
        if getattr(self, "pull", None) is not None:
            self.pull.close(linger=0)
        self.zctx.term()
        self.zctx = None
        if self.cluster is not None:
            self.cluster.close()

    # ---- the loop -----------------------------------------------------------------------------------------
    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        next_house = 0.0
        while True:
            events = dict(poller.poll(POLL_MS))
            if self.pull in events:
                self._forward()
            if self.router in events:
                for _ in range(MAX_FRAMES_PER_TURN):
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.dispatch(frames)
            now = time.monotonic()
            if self.signals and not self.stopping:
                self.begin_shutdown()
            if self.signals > 1:
                self.sched.cancel_running()
            alive = [w.is_alive() for w in self.workers]
            if not all(alive) and not (self.stopping and any(alive)):  # stopping: until every worker is done
                self._forward(limit=None)
                if not self.stopping:  # the engine thread died: answer everything, then exit 1
                    self.worker_died()
                return
            if now >= next_house:
                next_house = now + HOUSEKEEPING_S
                self.housekeeping()

    def _forward(self, limit: int | None = MAX_FRAMES_PER_TURN) -> None:
        n = 0
        while limit is None or n < limit:
            try:
                client, data = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.send_raw(client, data)
            n += 1

    def dispatch(self, frames: list[bytes]) -> None:
        client = frames[0]
        self.sched.touch(client)
        self.gone.discard(client)
        if len(frames) != 2:
            self.send_error(client, ProtocolError(ErrorCode.BAD_REQUEST,
                                                  f"a message is exactly one frame, got {len(frames) - 1}"))
            return
        try:
            msg = unpack(frames[1], self.max_bytes)
        except ProtocolError as exc:
            log.info("refused a frame: %s", exc, extra=ctx(exc.request_id, client, code=exc.code.value))
            self.send_error(client, exc)
            return
        handler = self.handlers.get(msg.TYPE)
        try:
            if handler is None:  # a daemon -> client type sent to the daemon
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"{msg.TYPE!r} is not a request",
                                    details={"type": msg.TYPE})
            handler(client, msg)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
            # Drop the traceback: it holds this frame, whose `err` and `frames` would make a cycle that keeps
            # the request (e.g. 60 MiB of refused inline audio) alive until the next garbage collection.
            err = to_protocol_error(exc, msg.id).with_traceback(None)
            log.info("request refused: %s", err, extra=ctx(msg.id, client, type=msg.TYPE, code=err.code.value))
            self.send_error(client, err)

    # ---- sending --------------------------------------------------------------------------------------------
    def send(self, client: bytes, msg: Message) -> None:
        self.send_raw(client, pack(msg, self.max_bytes))

    def send_error(self, client: bytes, exc: ProtocolError) -> None:
        rid = None if exc.code == ErrorCode.DUPLICATE_ID else exc.request_id  # PROTOCOL.md §8
        self.send(client, Error(id=rid, code=exc.code, message=exc.message[:1000], details=exc.details))

    def send_raw(self, client: bytes, data: bytes) -> None:
        try:
            self.router.send_multipart([client, data], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self.client_gone(client, "unreachable" if exc.errno == zmq.EHOSTUNREACH else "not reading")

    def client_gone(self, client: bytes, why: str) -> None:
        """Cancel everything of a client we cannot reach; its queued requests end here, running ones at
        their next step (their `cancelled` will not reach it either)."""
        if client in self.gone:
            return
        self.gone.add(client)
        dropped = self.sched.cancel_client(client)
        log.warning("client %s: cancelling its requests", why, extra=ctx(None, client, queued=len(dropped)))

    # ---- periodic ---------------------------------------------------------------------------------------------
    def housekeeping(self) -> None:
        for client in self.sched.stale_clients(self.args.client_timeout):
            log.warning("client silent for more than %gs while rendering: treated as gone", self.args.client_timeout,
                        extra=ctx(None, client))
            for t in self.sched.cancel_client(client):
                self.send(client, Cancelled(id=t.rid))
        for client in self.sched.forget_idle_clients(max(600.0, 2 * self.args.client_timeout)):
            self.clients.pop(client, None)
            self.gone.discard(client)

    def worker_died(self) -> None:
        log.critical("the engine worker stopped unexpectedly; shutting down")
        self.failed = True
        for t in self.sched.abandon_running():
            self.send_error(t.client, ProtocolError(ErrorCode.INTERNAL, "the engine failed; see the daemon log",
                                                    request_id=t.rid))
        self.begin_shutdown()

    def begin_shutdown(self) -> None:
        self.stopping = True
        drained = self.sched.close()
        endless = self.sched.cancel_running(lambda t: isinstance(t.payload, StreamPlan) and t.payload.endless)
        log.info("shutting down: %d queued request(s) cancelled, %d endless request(s) stopping, finishing the "
                 "running batch", len(drained), len(endless))
        for t in drained:  # accepted work always gets a terminal answer: done (running) or cancelled (queued)
            self.send(t.client, Cancelled(id=t.rid))

    # ---- handlers ---------------------------------------------------------------------------------------------
    def on_hello(self, client: bytes, msg) -> None:
        self.clients[client] = msg.client
        log.info("hello from %s", msg.client, extra=ctx(msg.id, client))
        facts = self.models.facts(self.args.model)
        limits = Limits(max_message_bytes=self.max_bytes, max_duration_s=facts.segment_s, max_prompts=MAX_PROMPTS,
                        max_variations=MAX_VARIATIONS, max_outputs=MAX_OUTPUTS, max_queue=self.sched.max_queue,
                        max_long_duration_s=MAX_LONG_DURATION_S)
        rescorer = self.models.rescorer
        self.send(client, Welcome(id=msg.id, daemon_version=package_version(), protocol_version=PROTOCOL_VERSION,
                                  models=tuple(self.models.known()), default_model=self.args.model,
                                  presets=tuple(render.offered_presets(rescorer)), limits=limits,
                                  sample_rate=facts.sample_rate, frame_rate=facts.frame_rate,
                                  rescorer=rescorer.name[:256] if rescorer is not None else None))

    def on_ping(self, client: bytes, msg) -> None:
        self.send(client, Pong(id=msg.id, token=msg.token, time=time.time()))

    def on_status(self, client: bytes, msg) -> None:
        entries, running = self.sched.snapshot()
        now = self.sched.clock()
        queue = tuple(QueueEntry(id=t.rid, type=t.kind, state="running" if t.state == State.RUNNING else "queued",
                                 position=pos, elapsed_s=max(0.0, now - t.accepted_at), own=t.client == client,
                                 **_stream_info(t))
                      for t, pos in entries if t.state != State.FINISHED)
        loaded = self.models.loaded()
        on_device = entries[0][0].model if running else (self.args.model if self.args.model in loaded else
                                                         (loaded[0] if loaded else None))
        pipe = self.models.get(on_device) if on_device else None
        device = describe_device(pipe.device) if pipe is not None else str(self.args.device)
        self.send(client, StatusReply(id=msg.id, model=on_device, device=device, memory=memory_stats(),
                                      queue=queue, running=running, recent_timings=self.sched.recent_timings(),
                                      uptime_s=time.monotonic() - self.started,
                                      last_step_at=self.sched.last_step_at,
                                      replicas=pipe.replicas() if self.cluster is not None and pipe else ()))

    def on_models(self, client: bytes, msg) -> None:
        self.send(client, ModelsReply(id=msg.id, models=tuple(self.models.info()), default_model=self.args.model))

    def on_cancel(self, client: bytes, msg) -> None:
        state, _ = self.sched.cancel(client, msg.target, by=msg.id)
        if state is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no queued or running request {msg.target!r}",
                                details={"target": msg.target})
        log.info("cancel %s (%s)", msg.target, state.value, extra=ctx(msg.id, client, target=msg.target))
        self.send(client, CancelReply(id=msg.id, target=msg.target, state=state.value))
        if state == State.QUEUED:  # a running target ends on the worker at its next step
            self.send(client, Cancelled(id=msg.target, by=msg.id))

    def on_set_prompt(self, client: bytes, msg) -> None:
        t = self.sched.find(client, msg.target)
        if t is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no queued or running request {msg.target!r}",
                                details={"target": msg.target})
        if not isinstance(t.payload, StreamPlan):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"target: {msg.target!r} is not a long-form or endless "
                                "generate", details={"field": "target"})
        check_prompt_tempo(msg.id, (msg.prompt,), "prompt")
        window = t.payload.prompt.set(msg.prompt)
        log.info("set_prompt %s from window %d", msg.target, window, extra=ctx(msg.id, client, target=msg.target))
        self.send(client, SetPromptReply(id=msg.id, target=msg.target, window=window))

    def _known_model(self, name: str) -> None:
        if not self.models.is_known(name):
            raise ProtocolError(ErrorCode.UNKNOWN_MODEL, f"unknown model {name!r}", details={"model": name})

    def on_load(self, client: bytes, msg) -> None:
        self._refuse_if_stopping()
        self._known_model(msg.model)
        if self.models.refresh(msg.model, msg.keep_alive_s):  # resident: only the keep-alive changes
            self.send(client, LoadReply(id=msg.id, model=msg.model, load_s=0.0))
            return
        self.sched.submit(Ticket(client, msg.id, "load", msg.model, payload=LoadModel(msg.keep_alive_s)))

    def on_unload(self, client: bytes, msg) -> None:
        self._refuse_if_stopping()
        self._known_model(msg.model)
        if msg.model == self.args.model:  # the daemon serves it and loads nothing on demand (PROTOCOL.md)
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"model: {msg.model} is this daemon's default model and "
                                "stays loaded (requests without `model` use it); unload other models, or restart "
                                "the daemon with another --model", details={"field": "model"})
        if self.models.get(msg.model) is None:
            self.send(client, UnloadReply(id=msg.id, model=msg.model))
            return
        self.sched.submit(Ticket(client, msg.id, "unload", msg.model, payload=UnloadModel()))

    def on_render(self, client: bytes, msg) -> None:
        self._refuse_if_stopping()
        self.sched.check_new(client, msg.id)
        name = msg.model or self.args.model
        self._known_model(name)
        pipe = self.models.get(name)
        if pipe is None:
            raise ProtocolError(ErrorCode.MODEL_NOT_LOADED, f"model {name} is not loaded; send load first",
                                details={"model": name})
        plan = render.admit(msg, pipe, self.files)
        job = plan.job if isinstance(plan, BatchPlan) else None
        ticket = Ticket(client, msg.id, msg.TYPE, name, rows=plan.outputs, payload=plan,
                        prepared=job is not None or isinstance(plan, StreamPlan),
                        key=(name, job.batch_key()) if job is not None else None)
        position = self.sched.submit(ticket)
        self.send(client, Accepted(id=msg.id, queue_position=position, outputs=plan.outputs, seed=plan.seed))
        log.info("accepted %s", msg.TYPE, extra=ctx(msg.id, client, position=position, outputs=plan.outputs,
                                                      model=name, seed=plan.seed))

    def _refuse_if_stopping(self) -> None:
        if self.stopping or self.signals:  # a signal not yet acted on by the loop counts too (PROTOCOL.md §6)
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down and takes no more work")


def _stream_info(t: Ticket) -> dict:
    """QueueEntry's `mode` and `window` for long-form and endless requests."""
    plan = t.payload
    if not isinstance(plan, StreamPlan):
        return {}
    return {"mode": plan.wire_mode, "window": plan.window}


def memory_stats() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        out["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["allocated"] = int(torch.cuda.memory_allocated())
        out["peak"] = int(torch.cuda.max_memory_allocated())
        out["reserved"] = int(torch.cuda.memory_reserved())
        out["total"] = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return out


# ---- command line -------------------------------------------------------------------------------------------
class FrontEnd(Protocol):
    """Something `serve` runs beside the daemon, in its process (the `magnet-rt` command passes the OSC
    bridge, clients.osc): its options join the daemon's, and it starts once the daemon serves."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def start(self, args: argparse.Namespace, endpoint: str) -> Closeable | None:
        """Start for the daemon bound at `endpoint`; None when `args` do not ask for it."""


class Closeable(Protocol):
    def close(self) -> None: ...


def build_parser(front_ends: Sequence[FrontEnd] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="magnet-rt serve", description="Run the magnet-rt daemon: a resident MAGNeT model behind ZeroMQ.",
        epilog="examples:\n  magnet-rt serve\n  magnet-rt serve --bind ipc:///tmp/magnet-rt.sock --allow-dir ~/loops\n"
               "  magnet-rt serve --bind tcp://0.0.0.0:5555 --curve-secret keys/server.key_secret",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", default=os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help=f"ZeroMQ endpoint (default ${ENV_ENDPOINT}, else {DEFAULT_ENDPOINT}, where the clients "
                        "look too; ipc:// too; tcp://127.0.0.1:* picks a port)")
    p.add_argument("--model", default=None, help="model to serve and keep loaded: demo (the shipped bundle, the "
                   "default), tiny-random (random weights, tests), a released hub id or a folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch CPU threads (default 0: auto, measured in benchmarks/RESULTS.md: OMP_NUM_THREADS if "
                        "set; 1 with a GPU; else the physical cores less those already busy)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: as released (fp16 blocks on CUDA, fp32 on CPU); int8: quantized block "
                        "projections, 1.3-1.5x faster per forward on a CPU, guided logits within 3 %% of their range "
                        "(measured: benchmarks/RESULTS.md) (default auto)")
    p.add_argument("--step-graphs", default="auto", choices=STEP_GRAPHS,
                   help="decode with static-shape steps captured as CUDA graphs at warm-up (auto: on CUDA, "
                        "off on a CPU where the dynamic fast path is faster); the codes are the same either way")
    p.add_argument("--rescorer", default=None, metavar="MODEL",
                   help="MusicGen for rescoring (`rescore`, preset rescored) and hybrid decoding (`hybrid_s`): "
                        "tiny-random (tests), a folder, or a hub id such as facebook/musicgen-small")
    p.add_argument("--endless-ahead", type=float, default=15.0, metavar="SECONDS",
                   help="an endless request decodes its next window only while it is less than this far ahead "
                        "of real time; 0: as fast as possible (default 15)")
    p.add_argument("--max-queue", type=int, default=32, metavar="N", help="queued requests before busy (default 32)")
    p.add_argument("--max-batch", type=int, default=16, metavar="ROWS",
                   help="most outputs decoded in one batch (default 16)")
    p.add_argument("--client-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a rendering client silent this long is treated as gone (default 30)")
    p.add_argument("--keep-alive", type=float, default=300.0, metavar="SECONDS",
                   help="how long a non-default model stays loaded after its last use; negative: forever "
                        "(default 300)")
    p.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="folder whose files requests may name as source.path (repeatable; none: no paths)")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, metavar="BYTES",
                   help=f"largest frame accepted, ZMQ_MAXMSGSIZE (default {DEFAULT_MAX_MESSAGE_BYTES})")
    p.add_argument("--curve-secret", default=None, metavar="FILE",
                   help="server.key_secret from `magnet-rt keys`: encrypt with CurveZMQ")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without CurveZMQ (anyone who reaches the port can use the GPU)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="human", help="stderr log lines (default human)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    for front in front_ends:
        front.add_arguments(p)
    add_cluster_arguments(p)
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not is_local_endpoint(args.bind) and not args.curve_secret and not args.insecure:
        p.error(f"--bind {args.bind} is reachable from other machines: give --curve-secret FILE "
                "(create keys with `magnet-rt keys DIR`), or pass --insecure if you really mean it")
    for name in ("max_queue", "max_batch", "max_message_bytes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.client_timeout <= 0:
        p.error("--client-timeout must be positive")
    if args.threads < 0:
        p.error("--threads must be 0 (auto) or more")
    check_cluster_args(p, args)


def main(argv: list[str] | None = None, front_ends: Sequence[FrontEnd] = ()) -> int:
    """`magnet-rt serve` (also `python -m daemon`): run the daemon until a signal, with `front_ends` beside it."""
    parser = build_parser(front_ends)
    args = parser.parse_args(argv)
    check_args(parser, args)
    setup_logging(args.log_format, args.log_level)
    try:
        torch.set_num_threads(cpu_threads(args.device, args.threads or None))
    except ValueError as exc:  # magnet_rt's InvalidParams: a bad --device
        parser.error(str(exc))
    log.info("torch CPU threads: %d", torch.get_num_threads(), extra={"ctx": {"threads": torch.get_num_threads()}})
    try:
        daemon = Daemon(args)
    except ValueError as exc:  # a bad --allow-dir
        parser.error(str(exc))
    handlers = {}

    def on_signal(signum, _frame) -> None:
        daemon.signals += 1
        log.info("signal %s received (%d)", signal.Signals(signum).name, daemon.signals)

    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, on_signal)
    try:
        try:
            endpoint = daemon.open()
        except Exception as exc:  # noqa: BLE001 - reported, then exit 1
            log.debug("startup failed", exc_info=True)
            print(f"Error: cannot start the daemon: {exc}", file=sys.stderr)
            daemon.close()
            return 1
        random = " (RANDOM WEIGHTS: noise, not music)" if args.model == TINY_RANDOM else ""
        log.info("serving model %s%s on %s", args.model, random, endpoint,
                 extra={"ctx": {"model": args.model, "endpoint": endpoint}})
        running = [f for front in front_ends if (f := front.start(args, endpoint)) is not None]
        device = describe_device(daemon.models.get(args.model).device)
        print(f"magnet-rt ready on {endpoint} model={args.model} device={device}", flush=True)
        try:
            daemon.serve()
        finally:
            for front in running:
                front.close()
        daemon.close()
        log.info("stopped")
        return 1 if daemon.failed else 0
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)
