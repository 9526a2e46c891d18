"""A stand-in daemon without a model, for client tests and for writing new clients (Max, Pd, ...).

    with FakeDaemon() as d:            # ROUTER on tcp://127.0.0.1:<random port>, in a thread
        MagnetClient(d.endpoint).generate_audio("x", duration_s=1.0)

It speaks PROTOCOL.md through the `protocol` package and renders sines (seed and output pick the pitch); an
inline `inpaint`/`continue` source at the daemon's rate and channel count is kept outside the new region, as
the real daemon does. Knobs make it misbehave on purpose: `drop` ignores the next N messages of a type,
`fail` answers a type with an error, `mute` ignores everything, `hang_after_accept` accepts generating requests
and then says nothing more, `queue_delay_s`/`step_delay_s` slow the work down while pings stay answered.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Self

import numpy as np
import zmq

import protocol as P


class FakeDaemon:
    def __init__(self, *, bind: str = "tcp://127.0.0.1:*", sample_rate: int = 32000, segment_s: float = 10.0,
                 models: tuple[str, ...] = ("tiny-random",), presets: tuple[str, ...] = ("balanced", "live"),
                 steps: tuple[int, ...] = (4, 2, 2, 2), step_delay_s: float = 0.0, queue_delay_s: float = 0.0,
                 curve_secret_key: bytes | None = None) -> None:
        self.bind, self.sample_rate, self.segment_s = bind, sample_rate, segment_s
        self.model_names, self.presets, self.steps = models, presets, steps
        self.step_delay_s, self.queue_delay_s = step_delay_s, queue_delay_s
        self.curve_secret_key = curve_secret_key
        self.drop: dict[str, int] = {}  # message type -> how many more to ignore
        self.fail: dict[str, tuple[str, str, dict]] = {}  # message type -> (code, message, details)
        self.mute = False
        self.hang_after_accept = False
        self.received: list[P.Message] = []
        self.peers: list[bytes] = []  # the routing id each message came from (a new one per reconnect)
        self.endpoint = ""
        self._jobs: dict[tuple[bytes, str], dict] = {}
        self._cancelled: list[tuple[bytes, str, str]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-daemon", daemon=True)
        self._start = time.time()

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeDaemon:
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("fake daemon did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def types(self) -> list[str]:
        """Types of the messages received so far, in order."""
        return [m.TYPE for m in list(self.received)]

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve_secret_key:
            sock.curve_server = True
            sock.curve_secretkey = self.curve_secret_key
        sock.bind(self.bind)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(5, zmq.POLLIN):
                    while True:
                        try:
                            peer, frame = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(sock, peer, frame)
                self._advance(sock)
        finally:
            sock.close(linger=0)

    # --- requests --------------------------------------------------------------------------------------------
    def _send(self, sock: zmq.Socket, peer: bytes, msg: P.Event) -> None:
        sock.send_multipart([peer, P.pack(msg)])

    def _handle(self, sock: zmq.Socket, peer: bytes, frame: bytes) -> None:
        try:
            msg = P.unpack(frame)
        except P.ProtocolError as exc:
            return self._send(sock, peer, P.Error.from_exception(exc))
        self.received.append(msg)
        self.peers.append(peer)
        if self.mute or self.drop.get(msg.TYPE, 0) > 0:
            self.drop[msg.TYPE] = max(0, self.drop.get(msg.TYPE, 0) - 1)
            return
        if msg.TYPE in self.fail:
            code, text, details = self.fail[msg.TYPE]
            return self._send(sock, peer, P.Error(id=msg.id, code=code, message=text, details=details))
        reply = getattr(self, f"_on_{msg.TYPE}")(peer, msg)
        if reply is not None:
            self._send(sock, peer, reply)

    def _on_hello(self, peer: bytes, msg: P.Hello) -> P.Welcome:
        limits = P.Limits(max_message_bytes=P.DEFAULT_MAX_MESSAGE_BYTES, max_duration_s=30.0, max_prompts=16,
                          max_variations=8, max_outputs=16, max_queue=32)
        return P.Welcome(id=msg.id, daemon_version="0.0.0-fake", protocol_version=P.PROTOCOL_VERSION,
                         models=self.model_names, default_model=self.model_names[0], presets=self.presets,
                         limits=limits, sample_rate=self.sample_rate, frame_rate=50)

    def _on_ping(self, peer: bytes, msg: P.Ping) -> P.Pong:
        return P.Pong(id=msg.id, token=msg.token, time=time.time())

    def _on_status(self, peer: bytes, msg: P.Status) -> P.StatusReply:
        queue = tuple(P.QueueEntry(id=rid, type=job["msg"].TYPE, state="running", position=0,
                                   elapsed_s=time.monotonic() - job["t0"], own=p == peer)
                      for (p, rid), job in self._jobs.items())
        return P.StatusReply(id=msg.id, device="cpu (fake)", queue=queue, running=len(queue),
                             uptime_s=time.time() - self._start)

    def _on_models(self, peer: bytes, msg: P.Models) -> P.ModelsReply:
        infos = tuple(P.ModelInfo(name=n, loaded=True, segment_s=self.segment_s, sample_rate=self.sample_rate)
                      for n in self.model_names)
        return P.ModelsReply(id=msg.id, models=infos, default_model=self.model_names[0])

    def _on_load(self, peer: bytes, msg: P.Load) -> P.Event:
        if msg.model not in self.model_names:
            return P.Error(id=msg.id, code="unknown_model", message=f"no model {msg.model!r}",
                           details={"model": msg.model})
        return P.LoadReply(id=msg.id, model=msg.model, load_s=0.0)

    def _on_unload(self, peer: bytes, msg: P.Unload) -> P.UnloadReply:
        return P.UnloadReply(id=msg.id, model=msg.model)

    def _on_cancel(self, peer: bytes, msg: P.Cancel) -> P.Event:
        job = self._jobs.pop((peer, msg.target), None)
        if job is None:
            return P.Error(id=msg.id, code="not_found", message=f"no request {msg.target!r} to cancel",
                           details={"target": msg.target})
        self._cancelled.append((peer, msg.target, msg.id))
        return P.CancelReply(id=msg.id, target=msg.target, state="running")

    def _on_generate(self, peer: bytes, msg: P.Render) -> P.Event | None:
        if msg.preset not in self.presets:
            return P.Error(id=msg.id, code="unknown_preset", message=f"no preset {msg.preset!r}",
                           details={"preset": msg.preset})
        if (peer, msg.id) in self._jobs:
            return P.Error(id=None, code="duplicate_id", message="id in use", details={"id": msg.id})
        self._jobs[(peer, msg.id)] = {"msg": msg, "t0": time.monotonic(), "events": self._render(msg),
                                      "next_at": 0.0}
        return None

    _on_inpaint = _on_continue = _on_generate

    # --- rendering -------------------------------------------------------------------------------------------
    def _advance(self, sock: zmq.Socket) -> None:
        while self._cancelled:  # a cancelled job ends with `cancelled`, after the cancel's reply
            peer, rid, by = self._cancelled.pop(0)
            self._send(sock, peer, P.Cancelled(id=rid, by=by))
        now = time.monotonic()
        for key, job in list(self._jobs.items()):
            if now < job["next_at"]:
                continue
            try:
                msg, delay = next(job["events"])
            except StopIteration:
                self._jobs.pop(key, None)
                continue
            if msg is not None:
                self._send(sock, key[0], msg)
            job["next_at"] = now + delay
            if msg is not None and P.is_terminal(msg):
                self._jobs.pop(key, None)

    def _source(self, msg: P.Render) -> np.ndarray:
        src = msg.source
        if src.audio is not None:
            x = P.pcm_decode(src.audio.data, src.audio.format, src.audio.channels)
            if src.audio.sample_rate == self.sample_rate:
                return x
            n = round(src.audio.duration_s * self.sample_rate)
            return np.zeros((x.shape[0], n), np.float32)
        import soundfile

        x, sr = soundfile.read(src.path, dtype="float32", always_2d=True)
        return x.T if sr == self.sample_rate else np.zeros((x.shape[1], round(len(x) / sr * self.sample_rate)),
                                                            np.float32)

    def _sine(self, n: int, channels: int, seed: int, start: int = 0) -> np.ndarray:
        freq = 110.0 * (1 + seed % 12)
        t = (np.arange(start, start + n) / self.sample_rate).astype(np.float64)
        return np.repeat((0.5 * np.sin(2 * math.pi * freq * t))[None, :], channels, 0).astype(np.float32)

    def _outputs(self, msg: P.Render, seeds: list[int]) -> list[np.ndarray]:
        sr = self.sample_rate
        if msg.TYPE == "generate":
            n = round((msg.duration_s or self.segment_s) * 50) * sr // 50
            return [self._sine(n, 1, s) for s in seeds]
        src = self._source(msg)
        outs = []
        for s in seeds:
            if msg.TYPE == "inpaint":
                start_s, end_s = msg.region_s(sr)
                a, b = round(start_s * sr), round(end_s * sr)
                y = src.copy()
                y[:, a:b] = self._sine(y[:, a:b].shape[1], y.shape[0], s, a)
            else:
                added = round((msg.duration_s or self.segment_s) * sr)  # seconds appended to the clip
                y = np.concatenate([src, self._sine(added, src.shape[0], s, src.shape[1])], 1)
            outs.append(y)
        return outs

    def _render(self, msg: P.Render) -> Iterator[tuple[P.Event, float]]:
        outputs = msg.outputs
        seed = msg.seed if msg.seed is not None else 12345
        seeds = [seed + i for i in range(outputs)]
        yield P.Accepted(id=msg.id, queue_position=0, outputs=outputs, seed=seed), self.queue_delay_s
        if self.hang_after_accept:
            while True:
                yield None, 3600.0  # never reached in practice: the test ends first
        steps = tuple(msg.params.decoding_steps or self.steps)
        total, done_steps, t0 = sum(steps), 0, time.monotonic()
        for stage, n in enumerate(steps):
            for k in range(1, n + 1):
                done_steps += 1
                if msg.stream.progress:
                    yield P.Progress(id=msg.id, step=done_steps, total=total, stage=stage, stage_step=k,
                                     stage_steps=n, elapsed_s=time.monotonic() - t0), self.step_delay_s
        outs = self._outputs(msg, seeds)
        chunk = max(1, round(msg.chunk_s * self.sample_rate))
        if msg.stream.audio:
            for i, y in enumerate(outs):
                starts = list(range(0, y.shape[1], chunk))
                for seq, a in enumerate(starts):
                    yield P.AudioChunk(id=msg.id, data=P.pcm_encode(y[:, a:a + chunk], msg.format),
                                       format=msg.format, sample_rate=self.sample_rate, channels=y.shape[0],
                                       variation=i, seq=seq, last=seq == len(starts) - 1,
                                       start_s=a / self.sample_rate), 0.0
        n = outs[0].shape[1]
        yield P.Done(id=msg.id, seed=seed, seeds=tuple(seeds), frames=n * 50 // self.sample_rate,
                     duration_s=n / self.sample_rate, sample_rate=self.sample_rate,
                     timings={"queue": 0.0, "decode": time.monotonic() - t0, "total": time.monotonic() - t0},
                     batch_size=1, model=msg.model or self.model_names[0]), 0.0
