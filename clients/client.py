"""The blocking Python client of the magnet-rt daemon, `MagnetClient`, and what the asyncio twin shares.

    from clients.client import MagnetClient
    with MagnetClient("tcp://127.0.0.1:5555") as c:
        print(c.ping())
        for event in c.generate("warm rhodes chords", duration_s=4, seed=1):
            print(event.TYPE)                      # accepted, progress..., audio..., done
        take = c.generate_audio("dark techno", variations=2).audio[1]   # float32 [C, N]

Transport (PROTOCOL.md §2, zguide Lazy Pirate): one DEALER socket. Idempotent calls (`hello`, `ping`, `status`,
`models`) wait `timeout_s` for their reply; on silence the socket is closed with linger 0, reopened and the
request resent, `retries` times, then `DaemonUnavailable` says how to start the daemon; when ZeroMQ reports
the connection refused (nothing listens at the endpoint) it says so within `REFUSED_WAIT_S`. Other requests are
never resent. A generating request must be `accepted` within `timeout_s`; after that, a quiet spell makes the
client ping the daemon on the same connection: a pong means "alive, still queued or decoding", silence means
`DaemonTimeout`. While a stream runs, the client also pings every `HEARTBEAT_S` seconds without sending
anything else, so a long-form or endless request that streams for minutes is not taken for a silent,
vanished client (the daemon's `--client-timeout`). Closing an unfinished stream (or Ctrl-C while iterating
it) sends `cancel` and waits, bounded, for the terminal message. Sockets are not thread-safe: use one client
per thread. `clients.aio.AsyncMagnetClient` is the asyncio twin with the same surface (it builds on this
module; this module does not import it).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

import protocol as P

from .errors import BadReply, ClientError, DaemonTimeout, DaemonUnavailable, RequestCancelled, RequestFailed

__all__ = ["AudioAssembler", "BadReply", "ClientError",
           "DaemonTimeout", "DaemonUnavailable", "MagnetClient", "RequestCancelled", "RequestFailed",
           "RequestStream", "Result", "build_result", "load_server_key", "make_source", "new_request_id",
           "source_from_file"]

log = logging.getLogger("magnet_rt.client")

DEFAULT_TIMEOUT_S = 2.5  # PROTOCOL.md §2's suggested wait for any reply
DEFAULT_RETRIES = 3
HEARTBEAT_S = 5.0  # ping at least this often during a stream (the daemon drops clients silent for 30 s)
REFUSED_WAIT_S = 1.0  # how long the blocking client waits to learn whether anything listens at the endpoint


def new_request_id() -> str:
    return uuid.uuid4().hex


def load_server_key(key: str | bytes | os.PathLike) -> bytes:
    """The daemon's CurveZMQ public key: a 40-character Z85 string, or a file holding one (a `zmq.auth`
    certificate such as `magnet-rt keys` writes, or the bare key)."""
    if isinstance(key, bytes):
        key = key.decode("ascii")
    text = os.fspath(key)
    path = Path(text).expanduser()
    if len(text) == 40 and not path.exists():
        return text.encode("ascii")
    if not path.is_file():
        raise ValueError(f"server key {text!r} is neither a 40-character Z85 key nor a readable file")
    try:
        public, _ = zmq.auth.load_certificate(path)
        if public:
            return public
    except (ValueError, OSError, IndexError, KeyError):
        pass
    bare = path.read_text(encoding="utf-8", errors="replace").strip()
    if len(bare) == 40:
        return bare.encode("ascii")
    raise ValueError(f"no CurveZMQ public key found in {path}")


def make_source(source: Any, sample_rate: int | None = None, fmt: str = "f32") -> P.Source:
    """`protocol.Source` from a Source, a path (sent as a path: the daemon reads the file), or samples
    `[C, N]`/`[N]` in [-1, 1] with their `sample_rate` (sent inline)."""
    if isinstance(source, P.Source):
        return source
    if isinstance(source, str | os.PathLike):
        return P.Source(path=str(Path(source).expanduser().resolve()))
    if sample_rate is None:
        raise ValueError("inline audio needs its sample_rate")
    x = np.asarray(source, dtype=np.float32)
    x = x[None, :] if x.ndim == 1 else x
    try:
        data = P.pcm_encode(x, fmt)
    except P.ProtocolError as exc:
        raise RequestFailed.from_protocol(exc, local=True) from None
    return P.Source(audio=P.AudioData(data=data, sample_rate=int(sample_rate), channels=int(x.shape[0]),
                                      format=fmt))


def source_from_file(path: str | os.PathLike, by_path: bool = False) -> P.Source:
    """A clip for `inpaint`/`continue`: the file's PCM inline (float32), or with `by_path` its absolute path."""
    if by_path:
        return make_source(Path(path))
    import soundfile

    x, sr = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)  # [N, C]
    return make_source(x.T, sr)


@dataclass
class Result:
    """A finished generating request: one float32 `[C, N]` array per output (index = prompt × variations +
    variation), at `sample_rate`, with the daemon's `done` report."""

    request_id: str
    audio: list[np.ndarray]
    sample_rate: int
    seeds: list[int]
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    model: str = ""
    duration_s: float = 0.0
    frames: int = 0


class AudioAssembler:
    """Decodes `audio` chunks and joins them per output, checking that `seq` runs 0, 1, 2, ... per output."""

    def __init__(self) -> None:
        self.parts: dict[int, list[np.ndarray]] = {}
        self.complete: set[int] = set()
        self.sample_rate: int | None = None

    def add(self, chunk: P.AudioChunk) -> np.ndarray:
        x = P.pcm_decode(chunk.data, chunk.format, chunk.channels)
        parts = self.parts.setdefault(chunk.variation, [])
        if chunk.seq != len(parts) or chunk.variation in self.complete:
            raise BadReply(f"audio chunk {chunk.seq} of output {chunk.variation} arrived out of order")
        parts.append(x)
        self.sample_rate = chunk.sample_rate
        if chunk.last:
            self.complete.add(chunk.variation)
        return x

    def take(self, index: int) -> np.ndarray:
        if index not in self.complete:
            raise BadReply(f"output {index} ended without its last audio chunk")
        return np.concatenate(self.parts[index], axis=1)


def build_result(request_id: str, asm: AudioAssembler, done: P.Done) -> Result:
    """A Result from the chunks an assembler gathered and the request's `done` (no audio if none streamed)."""
    outputs = [asm.take(i) for i in range(len(done.seeds))] if asm.parts else []
    return Result(request_id=request_id, audio=outputs, sample_rate=asm.sample_rate or done.sample_rate,
                  seeds=list(done.seeds), seed=done.seed, timings=dict(done.timings), batch_size=done.batch_size,
                  model=done.model, duration_s=done.duration_s, frames=done.frames)


def _is_audio(msg: Any) -> bool:
    return isinstance(msg, P.AudioChunk) and msg.TYPE == "audio"  # Preview subclasses AudioChunk


class _Undecodable:
    """A frame for one of our requests that did not validate: raised as BadReply where it is read."""

    TYPE = "?"

    def __init__(self, request_id: str | None, why: str) -> None:
        self.id, self.why = request_id, why


class _Base:
    """What both clients share: settings, CurveZMQ, message building, decoding and routing by request id."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 retries: int = DEFAULT_RETRIES, server_public_key: str | bytes | os.PathLike | None = None,
                 client_name: str = "magnet-rt-python", stream_timeout_s: float | None = None,
                 cancel_timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint or os.environ.get(P.ENV_ENDPOINT) or P.DEFAULT_ENDPOINT
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.client_name = client_name
        self.stream_timeout_s = stream_timeout_s  # None: wait as long as the daemon answers pings
        self.cancel_timeout_s = cancel_timeout_s
        self.welcome: P.Welcome | None = None
        self._server_key = load_server_key(server_public_key) if server_public_key else None
        self._keys = zmq.curve_keypair() if self._server_key else None  # ephemeral client key pair
        self._inbox: dict[str, Any] = {}  # request id -> its mailbox (several ids may share one)
        self._epoch = 0  # bumped on every reconnect; requests sent in an older epoch are lost
        self._last_send = time.monotonic()

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        if self._server_key:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = self._keys
        sock.connect(self.endpoint)

    # --- building and reading messages --------------------------------------------------------------------
    @staticmethod
    def _render(kind: type[P.Render], request_id: str | None, fields: Mapping[str, Any]) -> P.Render:
        kw = {k: v for k, v in fields.items() if v is not None}  # nil = the protocol default
        return kind(id=request_id or new_request_id(), **kw)

    def _encode(self, msg: P.Request) -> bytes:
        limit = self.welcome.limits.max_message_bytes if self.welcome else P.DEFAULT_MAX_MESSAGE_BYTES
        try:
            return P.pack(msg, limit)
        except P.ProtocolError as exc:
            raise RequestFailed.from_protocol(exc, local=True) from None

    def _generate_msg(self, prompt, prompts, duration_s, loudness, request_id, render) -> P.Generate:
        prompts = tuple(prompts) if prompts is not None else None
        return self._render(P.Generate, request_id, dict(render, prompt=prompt, prompts=prompts,
                                                         duration_s=duration_s, loudness=loudness))

    def _inpaint_msg(self, source, start_s, end_s, prompt, sample_rate, request_id, render) -> P.Inpaint:
        return self._render(P.Inpaint, request_id, dict(render, source=make_source(source, sample_rate),
                                                        start_s=start_s, end_s=end_s, prompt=prompt))

    def _continue_msg(self, source, prompt, duration_s, sample_rate, request_id, render) -> P.Continue:
        return self._render(P.Continue, request_id, dict(render, source=make_source(source, sample_rate),
                                                         prompt=prompt, duration_s=duration_s))

    def _heartbeat_due(self) -> P.Ping | None:
        """A ping to send now if this connection has sent nothing for HEARTBEAT_S (its pong is dropped)."""
        if time.monotonic() - self._last_send < HEARTBEAT_S:
            return None
        self._last_send = time.monotonic()
        return P.Ping(id=new_request_id())

    @staticmethod
    def _decode(frame: bytes) -> Any:
        try:
            return P.unpack(frame)
        except P.ProtocolError as exc:
            if exc.code == P.ErrorCode.UNKNOWN_TYPE:  # a newer daemon's event: ignore it (PROTOCOL.md §1)
                log.debug("ignoring a message of unknown type: %s", exc.message)
                return None
            log.warning("undecodable message from the daemon: %s", exc)
            return _Undecodable(exc.request_id, str(exc))

    def _route(self, msg: Any) -> None:
        if msg is None:
            return
        rid = msg.id
        if rid is None:  # an error about a message whose id the daemon could not read (PROTOCOL.md §8)
            boxes = {id(b): k for k, b in self._inbox.items()}
            rid = next(iter(boxes.values())) if len(boxes) == 1 else None
        box = self._inbox.get(rid)
        if box is None:
            log.debug("dropping %s for request %r, which is not waiting", msg.TYPE, msg.id)
            return
        self._deliver(box, msg)

    def _deliver(self, box: Any, msg: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def _reply(msg: Any) -> P.Event:
        if isinstance(msg, _Undecodable):
            raise BadReply(msg.why)
        if isinstance(msg, P.Error):
            raise RequestFailed.from_protocol(msg)
        return msg


# ==================================================================================================== blocking
class StreamState:
    """What the blocking and the asyncio stream share: the request's state and the bookkeeping around
    each received event and around cancelling. The subclasses only add the (a)waiting."""

    def __init__(self, client, msg: P.Render) -> None:
        self.client, self.request, self.id = client, msg, msg.id
        self.accepted: P.Accepted | None = None
        self.terminal: P.Event | None = None
        self._data = client._encode(msg)  # arguments are checked now; nothing is sent until iteration
        self._epoch: int | None = None
        self._closed = False
        self.on_cancel: Callable[[], None] | None = None  # called just before a cancel is sent

    def _lost(self) -> None:
        """The connection failed: a request that was sent is over; one never sent was never ours."""
        if self._epoch is not None:
            self._end()
        else:
            self._closed = True

    def _received(self, msg: Any) -> P.Event:
        if isinstance(msg, P.Accepted):
            self.accepted = msg
        if isinstance(msg, _Undecodable | P.Error) or P.is_terminal(msg):
            self.terminal = msg if not isinstance(msg, _Undecodable) else None
            self._end()
        return self.client._reply(msg)

    def _end(self) -> None:
        self._closed = True
        self.client._finish(self.id)

    def _start_cancel(self) -> P.Cancel | None:
        """Mark the stream closed; the cancel to send, or None when there is nothing left to cancel."""
        if self._closed or self.terminal is not None:
            return None
        self._closed = True
        if self._epoch is None or self._epoch != self.client._epoch:  # never sent, or its connection is gone
            self.client._finish(self.id)
            return None
        if self.on_cancel is not None:
            self.on_cancel()
        return P.Cancel(id=new_request_id(), target=self.id)

    def _cancel_reply(self, msg: Any) -> None:
        if msg.id == self.id and (isinstance(msg, P.Error) or P.is_terminal(msg)):
            self.terminal = msg


class RequestStream(StreamState):
    """Events of one generating request, ending with its terminal message (`done` or `cancelled`; an `error`
    raises `RequestFailed`). Use it in a `with` block, or call `close()`, so an unfinished request is cancelled."""

    def __iter__(self) -> RequestStream:
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> P.Event:
        c = self.client
        if self.terminal is not None or self._closed:
            raise StopIteration
        try:
            if self._epoch is None:
                self._epoch = c._send(self.request, self._data)
            msg = c._await(self.id, self._epoch, self.request.TYPE, alive=self.accepted is not None)
            if (ping := c._heartbeat_due()) is not None:
                c._send(ping)
                c._finish(ping.id)
        except KeyboardInterrupt:
            self.close()
            raise
        except ClientError:
            self._lost()
            raise
        return self._received(msg)

    def close(self) -> P.Event | None:
        """Cancel the request if it is still running and wait (bounded) for its terminal message."""
        cancel = self._start_cancel()
        if cancel is None:
            return self.terminal
        c = self.client
        c._send(cancel, share=self.id)
        deadline = time.monotonic() + c.cancel_timeout_s
        try:
            while self.terminal is None and time.monotonic() < deadline:
                msg = c._take(self.id, min(c.timeout_s, deadline - time.monotonic()))
                if msg is None:
                    c._reset()  # the daemon stopped answering: drop whatever is still queued
                    break
                self._cancel_reply(msg)
        finally:
            c._finish(self.id, cancel.id)
        return self.terminal

    cancel = close


class MagnetClient(_Base):
    """Blocking client. See the module docstring for the retry and timeout policy."""

    def __init__(self, endpoint: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 context: zmq.Context | None = None, **kw: Any) -> None:
        super().__init__(endpoint, timeout_s, **kw)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._open()

    def _open(self) -> None:
        self._sock = self._ctx.socket(zmq.DEALER)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)
        self._connected = False
        self._configure(self._sock)
        self._epoch += 1

    def _reset(self) -> None:
        """Lazy Pirate: close with linger 0 (dropping unsent requests) and reconnect."""
        self.close()
        self._open()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._sock = None

    def _refused(self) -> bool:
        """Whether the connection was refused (nothing listens at the endpoint) before it was ever made, as
        ZeroMQ reports within REFUSED_WAIT_S; False once connected, or when it cannot tell (then the Lazy
        Pirate timeouts decide)."""
        deadline = time.monotonic() + min(REFUSED_WAIT_S, self.timeout_s)
        while not self._connected and (left := deadline - time.monotonic()) > 0:
            if not self._monitor.poll(max(1, math.ceil(left * 1000))):
                break
            event = recv_monitor_message(self._monitor)["event"]
            self._connected = event == zmq.EVENT_CONNECTED
            if event == zmq.EVENT_CONNECT_RETRIED:
                return True
        return False

    def _fail_if_refused(self) -> None:
        if self._refused():
            self._reset()
            raise DaemonUnavailable(self.endpoint, "nothing is listening there (connection refused)")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------------------
    def _deliver(self, box: deque, msg: Any) -> None:
        box.append(msg)

    def _send(self, msg: P.Request, data: bytes | None = None, share: str | None = None) -> int:
        data = data if data is not None else self._encode(msg)
        if msg.id in self._inbox:
            raise RequestFailed(P.ErrorCode.DUPLICATE_ID, f"request id {msg.id!r} is still in use",
                                request_id=msg.id, local=True)
        if self._sock is None:
            raise ClientError("this client is closed")
        self._inbox[msg.id] = self._inbox[share] if share else deque()
        self._last_send = time.monotonic()
        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self._finish(msg.id)
            raise DaemonUnavailable(self.endpoint, "the connection's send queue is full") from None
        return self._epoch

    def _finish(self, *rids: str) -> None:
        for rid in rids:
            self._inbox.pop(rid, None)

    def _take(self, rid: str, timeout_s: float) -> Any:
        """The next message in `rid`'s mailbox, reading and routing whatever arrives; None after timeout_s."""
        box = self._inbox[rid]
        deadline = time.monotonic() + timeout_s
        while not box:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._sock.poll(max(1, math.ceil(left * 1000)), zmq.POLLIN):
                continue
            while True:
                try:
                    frame = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._route(self._decode(frame))
        return box.popleft()

    def _alive(self) -> bool:
        """One ping on the current connection (no retry, no reconnect): does the daemon still answer?"""
        ping = P.Ping(id=new_request_id())
        self._send(ping)
        try:
            return self._take(ping.id, self.timeout_s) is not None
        finally:
            self._finish(ping.id)

    def _await(self, rid: str, epoch: int, what: str, alive: bool) -> Any:
        """Next message of a non-idempotent request. Before any reply (`alive` False) silence means the daemon
        is unreachable; afterwards silence is checked with a ping, and only an unanswered ping ends the wait."""
        if not alive:
            self._fail_if_refused()
        quiet_since = time.monotonic()
        while True:
            if epoch != self._epoch:
                raise DaemonTimeout(self.endpoint, f"the connection was reset while {what} {rid} was running")
            msg = self._take(rid, self.timeout_s)
            if msg is not None:
                return msg
            if not alive or not self._alive():
                self._reset()
                why = f"no reply to {what} within {self.timeout_s:g} s"
                raise (DaemonTimeout(self.endpoint, f"{what} {rid} went silent and pings are unanswered")
                       if alive else DaemonUnavailable(self.endpoint, why))
            if self.stream_timeout_s is not None and time.monotonic() - quiet_since > self.stream_timeout_s:
                raise DaemonTimeout(self.endpoint, f"no event for {what} {rid} in {self.stream_timeout_s:g} s")

    def _call(self, make: Callable[[], P.Request], retry: bool) -> P.Event:
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            msg = make()
            self._send(msg)
            try:
                self._fail_if_refused()
                reply = self._take(msg.id, self.timeout_s)
            finally:
                self._finish(msg.id)
            if reply is not None:
                return self._reply(reply)
            log.info("no reply to %s within %g s (attempt %d of %d); reconnecting", msg.TYPE, self.timeout_s,
                     attempt, attempts)
            self._reset()
        raise DaemonUnavailable(self.endpoint, f"no reply to {msg.TYPE} within {self.timeout_s:g} s "
                                               f"({attempts} attempt{'s' * (attempts > 1)})")

    def _call_patient(self, msg: P.Request) -> P.Event:
        """A request whose reply may take long (load, unload): sent once, kept alive by pings."""
        epoch = self._send(msg)
        try:
            return self._reply(self._await(msg.id, epoch, msg.TYPE, alive=True))
        finally:
            self._finish(msg.id)

    # --- requests ----------------------------------------------------------------------------------------
    def hello(self, capabilities: tuple[str, ...] = ()) -> P.Welcome:
        self.welcome = self._call(lambda: P.Hello(id=new_request_id(), client=self.client_name,
                                                  capabilities=tuple(capabilities)), retry=True)
        return self.welcome

    def ping(self, token: Any = None) -> P.Pong:
        return self._call(lambda: P.Ping(id=new_request_id(), token=token), retry=True)

    def status(self) -> P.StatusReply:
        return self._call(lambda: P.Status(id=new_request_id()), retry=True)

    def models(self) -> P.ModelsReply:
        return self._call(lambda: P.Models(id=new_request_id()), retry=True)

    def load(self, model: str, keep_alive_s: float | None = None) -> P.LoadReply:
        return self._call_patient(P.Load(id=new_request_id(), model=model, keep_alive_s=keep_alive_s))

    def unload(self, model: str) -> P.UnloadReply:
        return self._call_patient(P.Unload(id=new_request_id(), model=model))

    def cancel(self, request_id: str) -> P.CancelReply:
        """Cancel a request of this connection; its stream then ends with `cancelled`. Not retried."""
        return self._call(lambda: P.Cancel(id=new_request_id(), target=request_id), retry=False)

    def set_prompt(self, request_id: str, prompt: str) -> P.SetPromptReply:
        """Change the prompt of a long-form or endless request of this connection from its next window on;
        the reply's `window` is the first window decoded with it. Not retried."""
        return self._call(lambda: P.SetPrompt(id=new_request_id(), target=request_id, prompt=prompt), retry=False)

    def generate(self, prompt: str | None = None, *, prompts: list[str] | None = None,
                 duration_s: float | None = None, loudness: float | None = None,
                 request_id: str | None = None, **render: Any) -> RequestStream:
        """Takes arrive at -14 LUFS unless `loudness` says otherwise (`normalize=False`: the model's level).
        Render options (`render`): preset, params (dict or DecodeParams), seed, variations, stream, format,
        chunk_s, model, rescore; and the modes of generate (PROTOCOL.md §6): hybrid_s, endless, overlap_s
        (a `duration_s` longer than the model's segment is long-form). Raises RequestFailed(local=True) at
        once when an argument is invalid."""
        return RequestStream(self, self._generate_msg(prompt, prompts, duration_s, loudness, request_id, render))

    def inpaint(self, source: Any, start_s: float | None, end_s: float | None, prompt: str, *,
                sample_rate: int | None = None,
                request_id: str | None = None, **render: Any) -> RequestStream:
        """`source`: samples [C, N] with `sample_rate`, a path the daemon reads, or a `protocol.Source`, of up to
        10 minutes. The region: `start_s`, `end_s`; or None, None and `start_bar=`, `end_bar=`, `bpm=` (optional
        `beats_per_bar=`, `downbeat_s=`), e.g. `c.inpaint_audio(x, None, None, "fill", start_bar=4, end_bar=6,
        bpm=90, sample_rate=sr)`."""
        return RequestStream(self, self._inpaint_msg(source, start_s, end_s, prompt, sample_rate, request_id,
                                                     render))

    def continue_(self, source: Any, prompt: str, *, duration_s: float | None = None,
                  sample_rate: int | None = None, request_id: str | None = None, **render: Any) -> RequestStream:
        """Append `duration_s` seconds (any length up to 10 minutes; nil: the model's segment) to `source`."""
        return RequestStream(self, self._continue_msg(source, prompt, duration_s, sample_rate, request_id, render))

    def collect(self, stream: RequestStream, on_event: Callable[[P.Event], None] | None = None) -> Result:
        """Run a stream to its end and return the audio; `cancelled` raises RequestCancelled."""
        asm = AudioAssembler()
        with stream:
            for msg in stream:
                if _is_audio(msg):
                    asm.add(msg)
                if on_event is not None:
                    on_event(msg)
        if not isinstance(stream.terminal, P.Done):
            raise RequestCancelled(request_id=stream.id)
        return build_result(stream.id, asm, stream.terminal)

    def generate_audio(self, prompt: str | None = None, *, on_event: Callable | None = None, **kw: Any) -> Result:
        return self.collect(self.generate(prompt, **kw), on_event)

    def inpaint_audio(self, *args: Any, on_event: Callable | None = None, **kw: Any) -> Result:
        return self.collect(self.inpaint(*args, **kw), on_event)

    def continue_audio(self, *args: Any, on_event: Callable | None = None, **kw: Any) -> Result:
        return self.collect(self.continue_(*args, **kw), on_event)

