"""The OSC bridge (protocol/OSC.md): Max, Pd, TouchOSC and liblo tools drive the daemon over UDP.

A thin translator on top of `AsyncMagnetClient` (clients/aio.py), which owns the connection: its heartbeats,
chunk order, timeouts and cancelling. One asyncio loop on one thread reads every OSC datagram, checks it
against `REQUESTS` and hands it to the handler the address names (`OscBridge.handlers`, one table, mapped
into python-osc's Dispatcher). A job is one client stream (two for `/magnet/loop`: a generate, then an
inpaint of the rotated clip around its wrap); its events go through a second table (`OscBridge.events`).
Durations are rounded up to whole frames at the frame rate of the daemon's `welcome` and trimmed back to
musical time; each take is written as a WAV into the output folder and answered with `/magnet/done`.
Long-form and endless jobs (PROTOCOL.md §6) also get a WAV per window as soon as its audio is in
(`/magnet/chunk`); an endless job runs until `/magnet/cancel`, and `/magnet/prompt` changes its prompt from the
next window on. Replies go to the sender's IP at the reply port, or at the port the job id names (OSC.md §1).

    python -m clients.osc --connect tcp://127.0.0.1:5555 --osc 127.0.0.1:9000 --osc-reply-port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import os
import random
import re
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import PureWindowsPath
from typing import Any

import numpy as np
import soundfile as sf
from pythonosc.dispatcher import Dispatcher, Handler
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.parsing import osc_types

import protocol as P

from .aio import AsyncMagnetClient, AsyncRequestStream
from .client import AudioAssembler, load_server_key, make_source, source_from_file
from .errors import ClientError, DaemonUnavailable, RequestFailed
from .output_dir import OutputDir

log = logging.getLogger("clients.osc")

DEFAULT_OSC, DEFAULT_REPLY_PORT = "127.0.0.1:9000", 9001
MAX_SEED = 2**31 - 1 - P.MAX_VARIATIONS  # seed + variation stays an OSC int32
REPLY_TIMEOUT_S, CLEANUP_S, START_S = 10.0, 60.0, 10.0
BEATS_PER_BAR = 4
SEAL_WINDOW_S = 0.75  # /magnet/loop: seconds regenerated around the wrap (magnet_rt/loop.py's DEFAULT_WINDOW_S)
_TIME = "[<duration_s:f> | <bars:i> <bpm:f>]"
REQUESTS = {  # address -> arguments; OSC.md's tables are checked against these (tests/test_osc_spec.py)
    "/magnet/generate": f"<id:s> <prompt:s> <preset:s> <seed:i> {_TIME}",
    "/magnet/variations": f"<id:s> <prompt:s> <preset:s> <seed:i> <count:i> {_TIME}",
    "/magnet/loop": "<id:s> <prompt:s> <bars:i> <bpm:f> <preset:s> <seed:i>",
    "/magnet/inpaint": "<id:s> <wav_path:s> <start_s:f> <end_s:f> <prompt:s> <preset:s> <seed:i>",
    "/magnet/inpaint_bars": "<id:s> <wav_path:s> <start_bar:f> <end_bar:f> <bpm:f> <prompt:s> <preset:s> <seed:i> "
                            "[<downbeat_s:f>]",
    "/magnet/continue": f"<id:s> <wav_path:s> <prompt:s> <preset:s> <seed:i> {_TIME}",
    "/magnet/hybrid": f"<id:s> <prompt:s> <preset:s> <seed:i> <hybrid_s:f> {_TIME}",
    "/magnet/endless": "<id:s> <prompt:s> <preset:s> <seed:i>",
    "/magnet/prompt": "<id:s> <prompt:s>",
    "/magnet/cancel": "<id:s>",
    "/magnet/status": "[<id:s>]",
    "/magnet/ping": "[<id:s>]",
}
REPLIES = {
    "/magnet/accepted": "<id:s> <queue_position:i>",
    "/magnet/progress": "<id:s> <fraction:f>",
    "/magnet/done": "<id:s> <wav_path:s> <duration_s:f> <samples:i> <sample_rate:i> <seed:i> <variation:i> <outputs:i>",
    "/magnet/chunk": "<id:s> <wav_path:s> <window:i> <start_s:f>",
    "/magnet/prompt": "<id:s> <window:i>",
    "/magnet/cancelled": "<id:s>",
    "/magnet/error": "<id:s> <code:s> <message:s> <address:s>",
    "/magnet/pong": "<round_trip_ms:f>",
    "/magnet/status": "<model:s> <device:s> <running:i> <queued:i> <jobs:i>",
    "/magnet/startup": "<version:s> <port:i>",
}
BRIDGE_CODES = ("unknown_address", "unreachable")  # besides PROTOCOL.md §8's codes
ARG_TYPES = "sifdh"  # OSC types a request's arguments may have: string, int32, float32, and float64 / int64
TYPE_NAMES = {"c": "char", "b": "blob", "T": "true", "F": "false", "N": "nil", "I": "impulse", "t": "time tag",
              "m": "MIDI", "r": "RGBA colour", "[": "array", "]": "array"}
OPTIONS = {"loudness": ("f", -70.0, 0.0), "normalize": ("i", 0, 1)}  # name -> kind, range (OSC.md §2)
OPTION_ADDRESSES = ("/magnet/generate", "/magnet/variations", "/magnet/loop", "/magnet/hybrid")
UNCONDITIONED = "@unconditioned"  # the prompt that asks for a take without text on purpose ("" is refused)
_ROUTE = re.compile(r"@(\d{1,5})$")  # an id ending in @<port>: replies to that port (@0: the request's source port)


def forms(signature: str) -> list[list[tuple[str, str]]]:
    """'<a:s> [<b:f> | <c:i> <d:f>]' -> [[a], [a, b], [a, c, d]]: the argument lists an address accepts."""
    head, _, tail = signature.partition("[")
    arg = re.compile(r"<(\w+):([sif])>")
    base = arg.findall(head)
    return [base] + [base + arg.findall(alt) for alt in tail.rstrip("]").split("|") if tail]


class OscError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _decimal(x: float) -> float:
    """An OSC float32 read as the decimal the sender typed (120.1, not 120.09999847)."""
    f32 = np.float32(x)
    return float(str(f32)) if float(f32) == x else x


def parse(address: str, args: tuple) -> dict[str, Any]:
    """Check an OSC message against REQUESTS; returns {name: value}. Ints may come as integral floats (Pd).
    Trailing `name value` options (OPTIONS) follow the arguments of OPTION_ADDRESSES."""
    if address not in REQUESTS:
        raise OscError("unknown_address", f"unknown address {address}; see protocol/OSC.md")
    options = forms(REQUESTS[address])
    args, extra = _split_options(address, args, len(options[0]))
    form = next((f for f in options if len(f) == len(args)), None)
    if form is None:
        counts = " or ".join(str(len(f)) for f in options)
        raise OscError("invalid_field", f"{address} takes {counts} arguments, got {len(args)}")
    out = {name: _value(address, k, name, kind, v)
           for k, ((name, kind), v) in enumerate(zip(form, args, strict=True), 1)}
    for k, (name, v) in enumerate(extra):
        kind, lo, hi = OPTIONS[name]
        out[name] = _value(address, len(args) + 2 * k + 2, name, kind, v)
        if not lo <= out[name] <= hi:
            raise OscError("invalid_field", f"{address}: {name} must be in [{lo:g}, {hi:g}], got {out[name]:g}")
    if not 1 <= len(out.get("id", "x")) <= P.MAX_ID_CHARS:
        raise OscError("invalid_field", f"{address}: id must have 1 to {P.MAX_ID_CHARS} characters")
    if (m := _ROUTE.search(out.get("id", ""))) and int(m.group(1)) > 65535:
        raise OscError("invalid_field", f"{address}: the reply port in id {out['id']!r} must be in [0, 65535]")
    for name, lo, hi in (("seed", -1, MAX_SEED), ("bars", 1, 64), ("count", 1, P.MAX_VARIATIONS)):
        if name in out and not lo <= out[name] <= hi:
            raise OscError("invalid_field", f"{address}: {name} must be in [{lo}, {hi}], got {out[name]}")
    if "bpm" in out and not 0 < out["bpm"] <= 999:
        raise OscError("invalid_field", f"{address}: bpm must be in (0, 999], got {out['bpm']:g}")
    if "prompt" in out:
        out["prompt"] = _prompt(address, out["prompt"])
    return out


def _split_options(address: str, args: tuple, required: int) -> tuple[tuple, list[tuple[str, Any]]]:
    """(arguments, [(option, value)]): options start at the first known option name after the required
    arguments, as `name value` pairs."""
    if address not in OPTION_ADDRESSES:
        return args, []
    at = next((k for k in range(required, len(args)) if isinstance(args[k], str) and args[k] in OPTIONS), len(args))
    tail = args[at:]
    if len(tail) % 2:
        raise OscError("invalid_field", f"{address}: option {tail[-1]!r} needs a value (options: "
                                        f"{', '.join(f'{n} <value>' for n in OPTIONS)})")
    pairs = [(tail[k], tail[k + 1]) for k in range(0, len(tail), 2)]
    for name, _ in pairs:
        if name not in OPTIONS:
            raise OscError("invalid_field", f"{address}: unknown option {name!r}; options are {', '.join(OPTIONS)}")
    return args[:at], pairs


def _value(address: str, k: int, name: str, kind: str, v: Any) -> Any:
    number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "s" and isinstance(v, str):
        return v
    if kind == "i" and number and float(v).is_integer():
        return int(v)
    if kind == "f" and number:
        return _decimal(float(v))
    want = {"s": "a string", "i": "an integer", "f": "a number"}[kind]
    raise OscError("invalid_field", f"{address}: argument {k} ({name}) must be {want}, got {v!r}"[:300])


def _prompt(address: str, prompt: str) -> str:
    """An empty (or blank) prompt is refused; UNCONDITIONED asks for a take without text on purpose."""
    if prompt == UNCONDITIONED:
        return ""
    if not prompt.strip():
        raise OscError("invalid_field", f"{address}: the prompt is empty; describe the music, or send "
                                        f"{UNCONDITIONED} as the prompt for a take without text on purpose")
    return prompt


def reply_port(osc_id: str, source_port: int, default: int) -> int:
    """Where replies about `osc_id` go (OSC.md §1): the port its `@<port>` suffix names, the request's source
    port for `@0`, else the bridge's reply port."""
    m = _ROUTE.search(osc_id)
    if m is None or int(m.group(1)) > 65535:
        return default
    return int(m.group(1)) or source_port


def osc_path(path: str, windows: bool = os.name == "nt") -> str:
    """A path as Max expects it: forward slashes on Windows too (`C:/Users/...`), as is elsewhere."""
    return PureWindowsPath(path).as_posix() if windows else path


def _address_of(data: bytes) -> str:
    """The address a datagram starts with, or "" when it has none that can be read."""
    try:
        address = osc_types.get_string(data, 0)[0]
    except Exception:  # noqa: BLE001 - ParseError, UnicodeDecodeError: no readable address
        return ""
    return address if address.startswith("/") else ""


def _why_malformed(data: bytes, exc: Exception) -> str:
    if not data:
        return "the datagram is empty"
    if not data.startswith((b"/", b"#bundle")):
        return "an OSC message starts with an address beginning with / (see protocol/OSC.md)"
    if isinstance(exc, UnicodeDecodeError):
        return "the datagram holds a string that is not UTF-8"
    inner = exc.args[-1] if exc.args else exc
    return f"the datagram is not valid OSC: {inner}"[:300]


def _unsupported_type(msg: OscMessage) -> str | None:
    """Why a message's type tags do not fit a request (python-osc skips types it does not know), or None."""
    dgram = msg.dgram
    index = osc_types.get_string(dgram, 0)[1]
    tags = osc_types.get_string(dgram, index)[0][1:] if dgram[index:] else ""
    for k, tag in enumerate(tags, 1):
        if tag not in ARG_TYPES:
            return (f"{msg.address}: argument {k} has OSC type '{tag}' ({TYPE_NAMES.get(tag, 'unknown type')}); "
                    "requests take strings (s), integers (i) and floats (f)")
    return None


class CheckedDispatcher(Dispatcher):
    """python-osc's Dispatcher with exact addresses (a request names one address, no OSC patterns), except that a
    datagram it cannot parse (which it drops without a word) and a message with an argument type no request
    uses are reported to `on_bad(client, address, osc_id, code, why)`."""

    def __init__(self, on_bad: Callable[[tuple, str, str, str, str], None]) -> None:
        super().__init__()
        self.on_bad = on_bad

    def handlers_for_address(self, address_pattern: str) -> Iterator[Handler]:
        handlers = self._map.get(address_pattern)
        if handlers:
            yield from handlers
        elif self._default_handler is not None:
            yield self._default_handler

    async def async_call_handlers_for_packet(self, data: bytes, client_address: tuple) -> list:
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except Exception as exc:  # noqa: BLE001 - ParseError, UnicodeDecodeError...: answered, never dropped
            self.on_bad(client_address, _address_of(data), "", "bad_request", _why_malformed(data, exc))
            return []
        for msg in messages:
            if (why := _unsupported_type(msg)) is not None:
                osc_id = msg.params[0] if msg.params and isinstance(msg.params[0], str) else ""
                self.on_bad(client_address, msg.address, osc_id, "invalid_field", why)
                return []
        return await super().async_call_handlers_for_packet(data, client_address)


class _Datagrams(asyncio.DatagramProtocol):
    """Every datagram, read whole, to the dispatcher in a task of its own (a job runs in its request's task)."""

    def __init__(self, dispatcher: Dispatcher, spawn: Callable[[Coroutine], None]) -> None:
        self.dispatcher, self.spawn = dispatcher, spawn

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.spawn(self.dispatcher.async_call_handlers_for_packet(data, addr))


@dataclass
class OscJob:
    """One OSC job: its request, where its replies go, and what has arrived of its current stream."""

    to: tuple[str, int]  # where its replies go (OSC.md §1)
    osc_id: str
    address: str
    values: dict[str, Any]
    seed: int
    outputs: int = 1
    phase: int = 0  # /magnet/loop: 0 generate, 1 seal the wrap
    stream: AsyncRequestStream | None = None  # the request of the current phase
    after: AsyncRequestStream | None = None  # the next phase's request, once this one is done
    cancelled: bool = False
    assembler: AudioAssembler = field(default_factory=AudioAssembler)
    rate: int = 0
    shift: int = 0  # /magnet/loop: samples the clip is rotated by for its seal
    windowed: bool = False  # long-form / endless: the daemon announces windows
    window: tuple[int, float, float] | None = None  # (index, start_s, duration_s) of the window being received
    window_parts: list[np.ndarray] = field(default_factory=list)
    sent_s: float | None = None  # /magnet/continue: the seconds asked of the daemon (whole frames, trimmed later)

    @property
    def phases(self) -> int:
        return 2 if self.address == "/magnet/loop" else 1

    @property
    def prompt(self) -> str:
        """The prompt, with the job's tempo appended when it is given in bars at a bpm (`prompt_with_tempo`):
        a model with a beat grid plays the prompt's tempo (OSC.md §2)."""
        return P.prompt_with_tempo(self.values["prompt"], self.values.get("bpm"))

    def render(self) -> dict[str, Any]:
        """The fields every request of this job carries."""
        return {"preset": self.values["preset"], "seed": self.seed}

    def seconds(self) -> Fraction | None:
        v = self.values
        if "bars" in v:
            return v["bars"] * P.bar_seconds(v["bpm"], BEATS_PER_BAR)
        return Fraction(str(v["duration_s"])) if "duration_s" in v else None

    def samples(self, rate: int) -> int | None:
        """Exact output length in samples (musical time, halves rounded up), or None: as the daemon delivers it."""
        seconds = self.seconds()
        return None if seconds is None else math.floor(seconds * rate + Fraction(1, 2))


OscHandler = Callable[[tuple[str, int], str, dict[str, Any]], Awaitable[None]]
Build = Callable[[OscJob, P.Welcome], AsyncRequestStream]


class OscBridge:
    """`start()` runs the bridge on a thread of its own (one asyncio loop: the UDP endpoint, the daemon's
    client and every job); `close()` stops it and cancels the jobs still running."""

    def __init__(self, endpoint: str, listen: str = DEFAULT_OSC, reply_port: int = DEFAULT_REPLY_PORT,
                 output: OutputDir | None = None, client_host: str = "127.0.0.1", clean_outputs: bool = False,
                 server_public_key: bytes | None = None):
        host, _, port = listen.rpartition(":")
        self.listen = (host or "127.0.0.1", int(port))
        self.endpoint, self.reply_port, self.client_host = endpoint, int(reply_port), client_host
        self.output = output or OutputDir()
        self.output.ensure()
        self.clean_outputs, self.server_public_key = clean_outputs, server_public_key
        self.by_osc: dict[tuple[tuple[str, int], str], OscJob] = {}  # (reply to, OSC id) -> open job
        self.port = 0
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def job(build: Build) -> OscHandler:
            return functools.partial(self._job, build)

        self.handlers: dict[str, OscHandler] = {  # every address of REQUESTS (tests/test_osc_spec.py)
            "/magnet/generate": job(self._generate), "/magnet/variations": job(self._generate),
            "/magnet/loop": job(self._generate), "/magnet/hybrid": job(self._generate),
            "/magnet/endless": job(self._endless), "/magnet/inpaint": job(self._inpaint),
            "/magnet/inpaint_bars": job(self._inpaint_bars), "/magnet/continue": job(self._continue),
            "/magnet/prompt": self._set_prompt, "/magnet/cancel": self._cancel, "/magnet/status": self._status,
            "/magnet/ping": self._ping,
        }
        self.events: dict[type, Callable[[OscJob, Any], None]] = {
            P.Accepted: self._on_accepted, P.Progress: self._on_progress, P.Window: self._on_window,
            P.AudioChunk: self._on_audio, P.Done: self._on_done, P.Cancelled: self._on_cancelled,
        }
        self._thread = threading.Thread(target=self._serve, name="osc-bridge", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("OSC bridge listens on %s: anyone who reaches that port can use the daemon", listen)

    def start(self) -> OscBridge:
        self._thread.start()
        if not self._started.wait(START_S):
            raise RuntimeError(f"the OSC bridge did not start within {START_S:g} s")
        if self._failure is not None:
            raise self._failure
        self.send((self.client_host, self.reply_port), "/magnet/startup", P.package_version(), self.port)
        return self

    def close(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(REPLY_TIMEOUT_S + START_S)
        self.tx.close()

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:  # zmq.asyncio needs a selector
                runner.run(self._main())
        except Exception as exc:  # noqa: BLE001 - before the start: raised by start(); after: logged
            self._failure = exc
            if self._started.is_set():
                log.exception("the OSC bridge stopped")
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.client = AsyncMagnetClient(self.endpoint, REPLY_TIMEOUT_S, retries=0, client_name="magnet-rt-osc",
                                        server_public_key=self.server_public_key)
        self._hello: asyncio.Future | None = None
        dispatcher = CheckedDispatcher(self._on_bad_datagram)
        for address, handler in self.handlers.items():
            dispatcher.map(address, functools.partial(self._on_message, handler), needs_reply_address=True)
        dispatcher.set_default_handler(functools.partial(self._on_message, None), needs_reply_address=True)
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _Datagrams(dispatcher, self._spawn),
                                                                 local_addr=self.listen)
        self.port = transport.get_extra_info("sockname")[1]
        self._started.set()
        self._spawn(self._greet())
        try:
            while not self._stop.is_set():
                if self.clean_outputs:
                    self.output.cleanup()
                try:
                    await asyncio.wait_for(self._stop.wait(), CLEANUP_S)
                except TimeoutError:
                    pass
        finally:
            transport.close()
            for task in self._tasks:
                task.cancel()  # a running request is cancelled at the daemon (AsyncRequestStream)
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=REPLY_TIMEOUT_S)
            await self.client.close()

    def _spawn(self, coro: Coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _welcome(self) -> P.Welcome:
        """The daemon's welcome (frame rate, longest segment): asked for once; requests that come while it is
        asked wait for the same answer (or the same DaemonUnavailable)."""
        if self.client.welcome is None:
            if self._hello is None or self._hello.done():
                self._hello = asyncio.ensure_future(self.client.hello())
            await asyncio.shield(self._hello)
        return self.client.welcome

    async def _greet(self) -> None:
        try:
            await self._welcome()
        except ClientError as exc:  # asked again by the first job
            log.warning("%s", exc)

    # ---- OSC side ----------------------------------------------------------------------------------------------
    def send(self, to: tuple[str, int], address: str, *args: Any) -> None:
        b = OscMessageBuilder(address)
        for a in args:
            b.add_arg(a)
        try:
            self.tx.sendto(b.build().dgram, to)
        except OSError as exc:
            log.warning("cannot send %s to %s:%d: %s", address, *to, exc)

    def error(self, to: tuple[str, int], osc_id: str, code: str, message: str, address: str) -> None:
        log.info("%s %s: %s %s", address, osc_id, code, message)
        self.send(to, "/magnet/error", osc_id, code, message[:1000], address)

    def _to(self, client: tuple, osc_id: str) -> tuple[str, int]:
        return client[0], reply_port(osc_id, client[1], self.reply_port)

    def _on_bad_datagram(self, client: tuple, address: str, osc_id: str, code: str, why: str) -> None:
        log.warning("dropped a datagram from %s:%d (%s): %s", client[0], client[1], address or "no address", why)
        self.error(self._to(client, osc_id), osc_id, code, why, address)

    async def _on_message(self, handler: OscHandler | None, client: tuple, address: str, *args: Any) -> None:
        """Check a message against REQUESTS and run its handler; whatever it ends with is answered."""
        osc_id = args[0] if args and isinstance(args[0], str) else ""
        to = self._to(client, osc_id)
        try:
            values = parse(address, args)  # an address without a handler is refused here
            await handler(to, address, values)
        except Exception as exc:  # noqa: BLE001 - every request is answered; the bridge keeps serving
            self.error(to, osc_id, *_error_of(exc), address)

    # ---- requests (one handler an address) ---------------------------------------------------------------------
    async def _ping(self, to: tuple[str, int], address: str, v: dict[str, Any]) -> None:
        sent = self._loop.time()
        await self.client.ping()
        self.send(to, "/magnet/pong", (self._loop.time() - sent) * 1000.0)

    async def _status(self, to: tuple[str, int], address: str, v: dict[str, Any]) -> None:
        msg = await self.client.status()
        queued = sum(e.state == "queued" for e in msg.queue)
        self.send(to, "/magnet/status", msg.model or "", msg.device, msg.running, queued, len(self.by_osc))

    async def _cancel(self, to: tuple[str, int], address: str, v: dict[str, Any]) -> None:
        for job in self._targets(to, v["id"]):
            job.cancelled = True  # a job not yet accepted is cancelled when it is (_on_accepted)
            if job.stream is not None and job.stream.accepted is not None and job.stream.terminal is None:
                await self._cancel_request(job.stream.id)

    async def _set_prompt(self, to: tuple[str, int], address: str, v: dict[str, Any]) -> None:
        job = self._targets(to, v["id"], many=False)[0]
        if job.stream is None:
            raise OscError("not_found", f"job {job.osc_id!r} has not reached the daemon yet; send it again")
        reply = await self.client.set_prompt(job.stream.id, v["prompt"])
        self.send(to, "/magnet/prompt", job.osc_id, reply.window)

    def _targets(self, to: tuple[str, int], osc_id: str, many: bool = True) -> list[OscJob]:
        """The open job `osc_id` whose replies go to `to`; with `many`, for `*` (or `*@<port>`) every open job
        whose replies go there (OSC.md §3 `/magnet/cancel`)."""
        if many and osc_id.startswith("*"):
            jobs = [j for (dest, _), j in self.by_osc.items() if dest == to]
        else:
            jobs = [self.by_osc[(to, osc_id)]] if (to, osc_id) in self.by_osc else []
        if not jobs:
            raise OscError("not_found", f"no running job {osc_id!r} from this host")
        return jobs

    async def _cancel_request(self, request_id: str) -> None:
        """Cancel a request at the daemon; its job hears `cancelled` on its own stream."""
        try:
            await self.client.cancel(request_id)
        except RequestFailed as exc:  # not_found: it ended meanwhile
            log.info("cancel %s: %s", request_id, exc)

    async def _job(self, build: Build, to: tuple[str, int], address: str, v: dict[str, Any]) -> None:
        """A job: its phases' requests one after the other, each event to its handler (`events`)."""
        osc_id = v["id"]
        if (to, osc_id) in self.by_osc:
            raise OscError("duplicate_id", f"job {osc_id!r} is still running; use a fresh id")
        seed = v["seed"] if v["seed"] >= 0 else random.randrange(2**24)  # exact in Pd's floats
        job = self.by_osc[(to, osc_id)] = OscJob(to, osc_id, address, v, seed, outputs=v.get("count", 1))
        try:
            stream: AsyncRequestStream | None = build(job, await self._welcome())
            while stream is not None and not job.cancelled:
                job.stream, job.after, job.assembler = stream, None, AudioAssembler()
                async with stream:
                    async for event in stream:
                        if (handler := self.events.get(type(event))) is not None:
                            handler(job, event)
                stream = job.after
            if stream is not None:  # cancelled before its (next) request was sent
                self.send(to, "/magnet/cancelled", osc_id)
        finally:
            self._end(job)

    def _end(self, job: OscJob) -> None:
        if self.by_osc.get((job.to, job.osc_id)) is job:
            del self.by_osc[(job.to, job.osc_id)]

    # ---- the request each job address sends (`Build`) ------------------------------------------------------------
    def _frames(self, job: OscJob, welcome: P.Welcome) -> float | None:
        """The job's length rounded up to whole frames of the daemon (trimmed to musical time later)."""
        seconds = job.seconds()
        return None if seconds is None else math.ceil(seconds * welcome.frame_rate) / welcome.frame_rate

    def _generate(self, job: OscJob, welcome: P.Welcome) -> AsyncRequestStream:
        v, duration = job.values, self._frames(job, welcome)
        return self.client.generate(job.prompt, duration_s=duration, variations=job.outputs,
                                    hybrid_s=v.get("hybrid_s"), **job.render(),
                                    **_loudness(v, duration, welcome.limits.max_duration_s))

    def _endless(self, job: OscJob, welcome: P.Welcome) -> AsyncRequestStream:
        return self.client.generate(job.values["prompt"], endless=True, **job.render())

    def _inpaint(self, job: OscJob, welcome: P.Welcome) -> AsyncRequestStream:
        v = job.values
        return self.client.inpaint(self._source(v["wav_path"]), v["start_s"], v["end_s"], v["prompt"],
                                   **job.render())

    def _inpaint_bars(self, job: OscJob, welcome: P.Welcome) -> AsyncRequestStream:
        v = job.values  # edges on whole samples at the clip's rate (the daemon)
        return self.client.inpaint(self._source(v["wav_path"]), None, None, job.prompt, start_bar=v["start_bar"],
                                   end_bar=v["end_bar"], bpm=v["bpm"], beats_per_bar=BEATS_PER_BAR,
                                   downbeat_s=v.get("downbeat_s", 0.0), **job.render())

    def _continue(self, job: OscJob, welcome: P.Welcome) -> AsyncRequestStream:
        job.sent_s = self._frames(job, welcome)
        return self.client.continue_(self._source(job.values["wav_path"]), job.prompt,
                                     duration_s=job.sent_s, **job.render())

    def _source(self, path: str) -> P.Source:
        """A WAV this bridge wrote is sent inline (the daemon need not allow our folder); any other path goes
        to the daemon, which reads it only from its --allow-dir folders."""
        ours = self.output.holds(path)
        if ours is None:
            return P.Source(path=path)
        try:
            return source_from_file(ours)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise P.ProtocolError(P.ErrorCode.INVALID_AUDIO, f"source.path: not a readable audio file ({exc})"[:300],
                                  details={"field": "source.path"}) from None

    # ---- daemon events (one handler a type) ------------------------------------------------------------------------
    def _on_accepted(self, job: OscJob, msg: P.Accepted) -> None:
        if job.cancelled:  # /magnet/cancel came before the daemon had the request
            self._spawn(self._cancel_request(msg.id))
        if job.phase == 0:
            self.send(job.to, "/magnet/accepted", job.osc_id, msg.queue_position)

    def _on_progress(self, job: OscJob, msg: P.Progress) -> None:
        self.send(job.to, "/magnet/progress", job.osc_id, (job.phase + msg.step / msg.total) / job.phases)

    def _on_window(self, job: OscJob, msg: P.Window) -> None:
        self._flush_window(job)
        job.windowed, job.window, job.window_parts = True, (msg.window, msg.start_s, msg.duration_s), []

    def _on_audio(self, job: OscJob, msg: P.AudioChunk) -> None:
        job.rate = msg.sample_rate
        if job.address == "/magnet/endless":  # an endless job never ends with the whole take: nothing is kept
            x = P.pcm_decode(msg.data, msg.format, msg.channels)
        else:
            x = job.assembler.add(msg)
        self._window_audio(job, msg, x)

    def _on_cancelled(self, job: OscJob, msg: P.Cancelled) -> None:
        self._end(job)
        self._flush_window(job)
        self.send(job.to, "/magnet/cancelled", job.osc_id)

    def _on_done(self, job: OscJob, msg: P.Done) -> None:
        takes = self._takes(job)
        if job.phases == 2 and job.phase == 0:  # seal the wrap: inpaint the rotated clip around its middle
            job.phase, job.after = 1, self._seal(job, takes[0])
            return
        if job.phases == 2:
            takes = [np.roll(takes[0], job.shift, axis=-1)]
        self._end(job)
        for v, a in enumerate(takes):
            path = self.output.write_wav(a, job.rate, name_hint=f"{job.osc_id}-{v}")
            self.send(job.to, "/magnet/done", job.osc_id, osc_path(path), a.shape[-1] / job.rate, a.shape[-1],
                      job.rate, job.seed + v, v, job.outputs)

    def _takes(self, job: OscJob) -> list[np.ndarray]:
        """The outputs, trimmed to musical time (a continue: the clip, then exactly the time asked for)."""
        outs = [job.assembler.take(v) for v in range(job.outputs)]
        n = job.samples(job.rate)
        if n is not None and job.sent_s is not None:
            n += outs[0].shape[-1] - math.floor(job.sent_s * job.rate + 0.5)
        if n is not None and any(a.shape[-1] < n for a in outs):
            raise P.ProtocolError(P.ErrorCode.INTERNAL, f"the daemon sent {outs[0].shape[-1]} samples, {n} needed")
        return [a[:, :n] if n is not None else a for a in outs]

    def _seal(self, job: OscJob, clip: np.ndarray) -> AsyncRequestStream:
        """/magnet/loop's second request: the clip rotated by half its length, so that its wrap (last sample ->
        first) sits in the middle, inpainted over SEAL_WINDOW_S around it (as magnet_rt/loop.py's LoopPlan)."""
        n, rate = clip.shape[-1], job.rate
        job.shift = n // 2
        half = round(min(SEAL_WINDOW_S, n / rate / 2) * rate / 2)
        wrap = n - job.shift  # rotated[wrap - 1] is the clip's last sample, rotated[wrap] its first
        return self.client.inpaint(make_source(np.roll(clip, -job.shift, axis=-1), rate), (wrap - half) / rate,
                                   (wrap + half) / rate, job.prompt, **job.render())

    def _window_audio(self, job: OscJob, msg: P.AudioChunk, x: np.ndarray) -> None:
        """Long-form / endless: gather a window's audio; once it is all in, write it and send /magnet/chunk.
        Audio with no window announced (the tail sent after a cancel) is window -1."""
        if not job.windowed:
            return
        if job.window is None:
            job.window = (-1, msg.start_s, 0.0)
        index, _, duration = job.window
        job.window_parts.append(x)
        have = sum(p.shape[-1] for p in job.window_parts)
        if msg.last or (index >= 0 and have >= round(duration * msg.sample_rate)):
            self._flush_window(job)

    def _flush_window(self, job: OscJob) -> None:
        if job.window is None or not job.window_parts:
            job.window = None
            return
        index, start, _ = job.window
        audio = np.concatenate(job.window_parts, axis=-1)
        job.window, job.window_parts = None, []
        path = self.output.write_wav(audio, job.rate, name_hint=f"{job.osc_id}-w{index}")
        self.send(job.to, "/magnet/chunk", job.osc_id, osc_path(path), index, float(start))


def _loudness(v: dict[str, Any], duration: float | None, segment_s: float) -> dict[str, Any]:
    """The options `loudness` and `normalize` as generate fields. A long-form take (longer than the welcome's
    segment) streams window by window and is never normalised, so its `loudness` is left out (OSC.md §2)."""
    out: dict[str, Any] = {"normalize": bool(v["normalize"])} if "normalize" in v else {}
    long_form = duration is not None and duration > segment_s + 1e-9
    if "loudness" in v and not long_form:
        out["loudness"] = v["loudness"]
    return out


def _error_of(exc: Exception) -> tuple[str, str]:
    """(code, message) of the /magnet/error that answers a request ending with `exc`."""
    if isinstance(exc, OscError):
        return exc.code, exc.message
    if isinstance(exc, RequestFailed | P.ProtocolError):
        return exc.code.value, exc.message
    if isinstance(exc, DaemonUnavailable):
        return "unreachable", str(exc)
    if not isinstance(exc, ClientError):
        log.error("internal error", exc_info=exc)
    return P.ErrorCode.INTERNAL.value, str(exc)


# ---- wiring ------------------------------------------------------------------------------------------------------
def add_osc_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    g = parser.add_argument_group("OSC bridge (protocol/OSC.md)")
    g.add_argument("--osc", metavar="HOST:PORT", default=default,
                   help=f"listen for OSC on this UDP address, e.g. {DEFAULT_OSC} (loopback unless you mean it)")
    g.add_argument("--osc-reply-port", type=int, default=DEFAULT_REPLY_PORT, metavar="PORT",
                   help=f"replies go to the sender's IP at this port (default {DEFAULT_REPLY_PORT})")
    g.add_argument("--osc-client", default="127.0.0.1", metavar="HOST",
                   help="where /magnet/startup is sent when the bridge starts (default 127.0.0.1)")


def start_osc_bridge(args: argparse.Namespace, endpoint: str, files: OutputDir | None = None) -> OscBridge:
    """Start the bridge for `magnet-rt serve --osc` (cli.serve): `endpoint` is the daemon's bound endpoint,
    `files` its output folder, which the bridge cleans (the daemon writes no files)."""
    key = load_server_key(args.curve_secret) if getattr(args, "curve_secret", None) else None  # its public half
    endpoint = re.sub(r"://(0\.0\.0\.0|\*):", "://127.0.0.1:", endpoint)
    return OscBridge(endpoint, args.osc, args.osc_reply_port, files, args.osc_client, server_public_key=key,
                     clean_outputs=files is not None).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.osc", description="OSC bridge to a running magnet-rt daemon.")
    p.add_argument("--connect", default=P.DEFAULT_ENDPOINT, metavar="ENDPOINT", help="the daemon's endpoint")
    p.add_argument("--output-dir", default=None, metavar="DIR", help="folder for WAV results")
    p.add_argument("--output-ttl", type=float, default=3600.0, metavar="SECONDS", help="delete results older than this")
    add_osc_arguments(p, default=DEFAULT_OSC)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = OutputDir(args.output_dir, args.output_ttl)
    bridge = OscBridge(args.connect, args.osc, args.osc_reply_port, output, args.osc_client, clean_outputs=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    bridge.start()
    print(f"magnet-rt osc bridge on {bridge.listen[0]}:{bridge.port}, replies to port "
          f"{bridge.reply_port}, daemon {args.connect}, outputs in {output.root}", flush=True)
    done.wait()
    bridge.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
