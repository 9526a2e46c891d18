"""The OSC bridge (protocol/OSC.md): Max, Pd, TouchOSC and liblo tools drive the daemon over UDP.

A thin translator. python-osc's UDP server parses each datagram against `REQUESTS` (on its own threads) and
queues it; one thread owns a ZeroMQ DEALER to the daemon and speaks PROTOCOL.md through the `protocol` package:
it maps OSC ids to request ids, asks for `f32` audio, reassembles the chunks of each output, trims them to
musical time, writes WAVs into the output folder (daemon/files.py) and answers `/magnet/done`. Replies go to
the sender's IP at the fixed reply port. `/magnet/loop` is two requests: a generate, then an inpaint of the
rotated clip around its wrap (magnet_rt/loop.py). Long-form and endless jobs (PROTOCOL.md §6) also get a WAV per
window as soon as its audio is in (`/magnet/chunk`); an endless job runs until `/magnet/cancel`, and
`/magnet/prompt` changes its prompt from the next window on.

    python -m daemon.osc --connect tcp://127.0.0.1:5555 --osc 127.0.0.1:9000 --osc-reply-port 9001
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from importlib import metadata
from pathlib import PureWindowsPath
from typing import Any

import numpy as np
import zmq
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.osc_server import ThreadingOSCUDPServer
from pythonosc.parsing import osc_types

import protocol as P
from magnet_rt.audio import bars_to_samples, seconds_to_samples
from magnet_rt.loop import plan_samples

from .files import OutputDir, PathPolicy

log = logging.getLogger("daemon.osc")

DEFAULT_OSC, DEFAULT_REPLY_PORT = "127.0.0.1:9000", 9001
FRAME_RATE = 50  # PROTOCOL.md §5: frames exist only inside the daemon; requests are rounded up to them
MAX_SEED = 2**31 - 1 - P.MAX_VARIATIONS  # seed + variation stays an OSC int32
REPLY_TIMEOUT_S, HEARTBEAT_S, CLEANUP_S = 10.0, 5.0, 60.0
BEATS_PER_BAR = 4
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
MAX_DATAGRAM = 65535  # read every UDP datagram whole (socketserver reads 8192 bytes: longer ones were cut, dropped)


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
    """python-osc's Dispatcher, except that a datagram it cannot parse (which it drops without a word) and a
    message with an argument type no request uses are reported to `on_bad(client, address, osc_id, code, why)`."""

    def __init__(self, on_bad: Callable[[tuple, str, str, str, str], None]) -> None:
        super().__init__()
        self.on_bad = on_bad

    def call_handlers_for_packet(self, data: bytes, client_address: tuple) -> list:
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
        return super().call_handlers_for_packet(data, client_address)


class CheckedServer(ThreadingOSCUDPServer):
    """Reads datagrams whole and hands every one to the dispatcher (python-osc's server drops a datagram that
    does not start with / or #bundle before any handler sees it)."""

    max_packet_size = MAX_DATAGRAM

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True


@dataclass
class Job:
    ip: str
    osc_id: str
    address: str
    values: dict[str, Any]
    rid: str = ""
    seed: int = 0
    outputs: int = 1
    phase: int = 0  # /magnet/loop: 0 generate, 1 seal the wrap
    deadline: float | None = None  # until the daemon's first reply
    rate: int = 0
    chunks: dict[int, list[np.ndarray]] = field(default_factory=dict)
    windowed: bool = False  # long-form / endless: the daemon announces windows
    window: tuple[int, float, float] | None = None  # (index, start_s, duration_s) of the window being received
    window_parts: list[np.ndarray] = field(default_factory=list)
    sent_s: float | None = None  # /magnet/continue: the seconds asked of the daemon (whole frames, trimmed later)
    to: tuple[str, int] = ("127.0.0.1", DEFAULT_REPLY_PORT)  # where its replies go (OSC.md §1)

    @property
    def phases(self) -> int:
        return 2 if self.address == "/magnet/loop" else 1

    def seconds(self) -> Fraction | None:
        v = self.values
        if "bars" in v:
            return Fraction(v["bars"]) * BEATS_PER_BAR * 60 / Fraction(str(v["bpm"]))
        return Fraction(str(v["duration_s"])) if "duration_s" in v else None

    def samples(self, rate: int) -> int | None:
        """Exact output length in samples (musical time), or None: as the daemon delivers it."""
        v = self.values
        if "bars" in v:
            return bars_to_samples(v["bars"], v["bpm"], rate, BEATS_PER_BAR)
        return seconds_to_samples(v["duration_s"], rate) if "duration_s" in v else None


class OscBridge:
    def __init__(self, endpoint: str, listen: str = DEFAULT_OSC, reply_port: int = DEFAULT_REPLY_PORT,
                 output: OutputDir | None = None, client_host: str = "127.0.0.1", clean_outputs: bool = False,
                 curve_server_key: bytes | None = None):
        host, _, port = listen.rpartition(":")
        self.endpoint, self.reply_port, self.client_host = endpoint, int(reply_port), client_host
        self.output = output or OutputDir()
        self.own_files = PathPolicy([self.output.ensure()])  # results we wrote may be inpainted again
        self.clean_outputs, self.curve_server_key = clean_outputs, curve_server_key
        self.inbox: queue.Queue = queue.Queue()
        self.jobs: dict[str, Job] = {}  # protocol request id -> job
        self.by_osc: dict[tuple[tuple[str, int], str], Job] = {}  # (reply to, OSC id) -> job
        self.pending: dict[str, tuple[tuple[str, int], str, float, str]] = {}  # id -> (reply to, address, sent, osc id)
        self.segment_s: float | None = None  # the daemon's longest take that is not long-form (welcome)
        self.counter = 0
        self.stop = threading.Event()
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dispatcher = CheckedDispatcher(self._on_bad_datagram)
        dispatcher.set_default_handler(self._on_osc, needs_reply_address=True)
        self.server = CheckedServer((host or "127.0.0.1", int(port)), dispatcher)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("OSC bridge listens on %s: anyone who reaches that port can use the daemon", listen)
        self.threads = [threading.Thread(target=self.server.serve_forever, name="osc-udp", daemon=True),
                        threading.Thread(target=self._run, name="osc-dealer", daemon=True)]

    def start(self) -> OscBridge:
        for t in self.threads:
            t.start()
        self.send((self.client_host, self.reply_port), "/magnet/startup", _version(), self.port)
        return self

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        for t in self.threads:
            t.join(5.0)
        self.tx.close()

    # ---- OSC side (server threads) ----------------------------------------------------------------------------
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

    def _on_osc(self, client: tuple, address: str, *args: Any) -> None:
        osc_id = args[0] if args and isinstance(args[0], str) else ""
        try:
            self.inbox.put((self._to(client, osc_id), address, parse(address, args)))
        except OscError as exc:
            self.error(self._to(client, osc_id), osc_id, exc.code, exc.message, address)

    # ---- daemon side (the one thread that owns the DEALER) ----------------------------------------------------------
    def _run(self) -> None:
        ctx = zmq.Context.instance()
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        if self.curve_server_key:
            self.dealer.curve_publickey, self.dealer.curve_secretkey = zmq.curve_keypair()
            self.dealer.curve_serverkey = self.curve_server_key
        self.dealer.connect(self.endpoint)
        self._send(P.Hello(id=self._rid("h"), client="magnet-rt-osc"))  # its welcome says how long a segment is
        next_beat = next_clean = 0.0
        try:
            while not self.stop.is_set():
                while True:
                    try:
                        self._start(*self.inbox.get_nowait())
                    except queue.Empty:
                        break
                while self.dealer.poll(20, zmq.POLLIN):
                    try:
                        self._on_reply(P.unpack(self.dealer.recv()))
                    except Exception:  # noqa: BLE001 - one bad reply must not stop the bridge
                        log.exception("cannot handle a daemon reply")
                now = time.monotonic()
                if self.jobs and now >= next_beat:  # the daemon drops silent clients (--client-timeout)
                    next_beat = now + HEARTBEAT_S
                    self._send(P.Ping(id=self._rid("hb")))
                if self.clean_outputs and now >= next_clean:
                    next_clean = now + CLEANUP_S
                    self.output.cleanup()
                self._expire(now)
        finally:
            self.dealer.close()

    def _rid(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _send(self, msg: P.Message) -> None:
        self.dealer.send(P.pack(msg))

    def _start(self, to: tuple[str, int], address: str, v: dict[str, Any]) -> None:
        osc_id = v.get("id", "")
        try:
            if address in ("/magnet/ping", "/magnet/status"):
                rid = self._rid("p" if address == "/magnet/ping" else "s")
                self.pending[rid] = (to, address, time.monotonic(), osc_id)
                self._send(P.Ping(id=rid) if address == "/magnet/ping" else P.Status(id=rid))
            elif address == "/magnet/cancel":
                for job in self._targets(to, osc_id):
                    self._send(P.Cancel(id=self._rid("c"), target=job.rid))
            elif address == "/magnet/prompt":
                job = self._targets(to, osc_id, many=False)[0]
                rid = self._rid("sp")
                self.pending[rid] = (to, address, time.monotonic(), osc_id)
                self._send(P.SetPrompt(id=rid, target=job.rid, prompt=v["prompt"]))
            else:
                if (to, osc_id) in self.by_osc:
                    raise OscError("duplicate_id", f"job {osc_id!r} is still running; use a fresh id")
                job = Job(to[0], osc_id, address, v, outputs=v.get("count", 1), to=to)
                job.seed = v["seed"] if v["seed"] >= 0 else random.randrange(2**24)  # exact in Pd's floats
                self._submit(job, self._request(job))
                self.by_osc[(to, osc_id)] = job
        except OscError as exc:
            self.error(to, osc_id, exc.code, exc.message, address)
        except P.ProtocolError as exc:
            self.error(to, osc_id, exc.code.value, exc.message, address)

    def _targets(self, to: tuple[str, int], osc_id: str, many: bool = True) -> list[Job]:
        """The open job `osc_id` whose replies go to `to`; with `many`, for `*` (or `*@<port>`) every open job
        whose replies go there (OSC.md §3 `/magnet/cancel`)."""
        if many and osc_id.startswith("*"):
            jobs = [j for (dest, _), j in self.by_osc.items() if dest == to]
        else:
            jobs = [self.by_osc[(to, osc_id)]] if (to, osc_id) in self.by_osc else []
        if not jobs:
            raise OscError("not_found", f"no running job {osc_id!r} from this host")
        return jobs

    def _request(self, job: Job) -> P.Render:
        v, common = job.values, {"preset": job.values["preset"], "seed": job.seed}
        seconds = job.seconds()
        duration = math.ceil(seconds * FRAME_RATE) / FRAME_RATE if seconds is not None else None  # trimmed later
        if job.address in ("/magnet/generate", "/magnet/variations", "/magnet/loop", "/magnet/hybrid"):
            return P.Generate(id="x", prompt=v["prompt"], duration_s=duration, variations=job.outputs,
                              hybrid_s=v.get("hybrid_s"), **self._loudness(v, duration), **common)
        if job.address == "/magnet/endless":
            return P.Generate(id="x", prompt=v["prompt"], endless=True, **common)
        source = self._source(v["wav_path"])
        if job.address == "/magnet/inpaint":
            return P.Inpaint(id="x", source=source, start_s=v["start_s"], end_s=v["end_s"], prompt=v["prompt"],
                             **common)
        if job.address == "/magnet/inpaint_bars":  # edges on whole samples at the clip's rate (the daemon)
            return P.Inpaint(id="x", source=source, start_bar=v["start_bar"], end_bar=v["end_bar"], bpm=v["bpm"],
                             beats_per_bar=BEATS_PER_BAR, downbeat_s=v.get("downbeat_s", 0.0), prompt=v["prompt"],
                             **common)
        job.sent_s = duration
        return P.Continue(id="x", source=source, prompt=v["prompt"], duration_s=duration, **common)

    def _loudness(self, v: dict[str, Any], duration: float | None) -> dict[str, Any]:
        """The options `loudness` and `normalize` as generate fields. A long-form take streams window by window
        and is never normalised, so its `loudness` is left out (OSC.md §2)."""
        out: dict[str, Any] = {"normalize": bool(v["normalize"])} if "normalize" in v else {}
        long_form = duration is not None and self.segment_s is not None and duration > self.segment_s + 1e-9
        if "loudness" in v and not long_form:
            out["loudness"] = v["loudness"]
        return out

    def _source(self, path: str) -> P.Source:
        """A WAV this bridge wrote is sent inline (the daemon need not allow our folder); any other path goes
        to the daemon, which reads it only from its --allow-dir folders."""
        try:
            audio, rate = self.own_files.read_audio(path, P.MAX_SOURCE_S)
        except P.ProtocolError as exc:
            if exc.code == P.ErrorCode.FORBIDDEN_PATH:
                return P.Source(path=path)
            raise
        return _inline(audio, rate)

    def _submit(self, job: Job, msg: P.Render) -> None:
        self.jobs.pop(job.rid, None)
        job.rid, job.deadline, job.chunks = self._rid("j"), time.monotonic() + REPLY_TIMEOUT_S, {}
        self._send(replace(msg, id=job.rid))
        self.jobs[job.rid] = job

    def _end(self, job: Job) -> None:
        self.jobs.pop(job.rid, None)
        self.by_osc.pop((job.to, job.osc_id), None)

    def _on_reply(self, msg: P.Message) -> None:
        if msg.id in self.pending:
            to, address, sent, osc_id = self.pending.pop(msg.id)
            if isinstance(msg, P.SetPromptReply):
                self.send(to, "/magnet/prompt", osc_id, msg.window)
            elif isinstance(msg, P.Pong):
                self.send(to, "/magnet/pong", (time.monotonic() - sent) * 1000.0)
            elif isinstance(msg, P.StatusReply):
                queued = sum(e.state == "queued" for e in msg.queue)
                self.send(to, "/magnet/status", msg.model or "", msg.device, msg.running, queued, len(self.by_osc))
            elif isinstance(msg, P.Error):
                self.error(to, osc_id, msg.code.value, msg.message, address)
            return
        if isinstance(msg, P.Welcome):
            self.segment_s = msg.limits.max_duration_s
            return
        job = self.jobs.get(msg.id)
        if job is None:
            return  # heartbeats, cancel replies, and replies to jobs already ended
        job.deadline = None
        if isinstance(msg, P.Accepted) and job.phase == 0:
            self.send(job.to, "/magnet/accepted", job.osc_id, msg.queue_position)
        elif isinstance(msg, P.Progress):
            self.send(job.to, "/magnet/progress", job.osc_id, (job.phase + msg.step / msg.total) / job.phases)
        elif isinstance(msg, P.Window):
            self._flush_window(job)
            job.windowed, job.window, job.window_parts = True, (msg.window, msg.start_s, msg.duration_s), []
        elif isinstance(msg, P.AudioChunk):
            job.rate = msg.sample_rate
            x = P.pcm_decode(msg.data, msg.format, msg.channels)
            if job.address != "/magnet/endless":  # an endless job never ends with the whole take
                job.chunks.setdefault(msg.variation, []).append(x)
            self._window_audio(job, msg, x)
        elif isinstance(msg, P.Done):
            try:
                self._done(job, msg)
            except Exception as exc:  # noqa: BLE001 - reported to the OSC client
                self._end(job)
                err = exc if isinstance(exc, P.ProtocolError) else P.ProtocolError(P.ErrorCode.INTERNAL, str(exc))
                self.error(job.to, job.osc_id, err.code.value, err.message, job.address)
        elif isinstance(msg, P.Cancelled):
            self._end(job)
            self._flush_window(job)
            self.send(job.to, "/magnet/cancelled", job.osc_id)
        elif isinstance(msg, P.Error):
            self._end(job)
            self.error(job.to, job.osc_id, msg.code.value, msg.message, job.address)

    def _window_audio(self, job: Job, msg: P.AudioChunk, x: np.ndarray) -> None:
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

    def _flush_window(self, job: Job) -> None:
        if job.window is None or not job.window_parts:
            job.window = None
            return
        index, start, _ = job.window
        audio = np.concatenate(job.window_parts, axis=-1)
        job.window, job.window_parts = None, []
        path = self.output.write_wav(audio, job.rate, name_hint=f"{job.osc_id}-w{index}")
        self.send(job.to, "/magnet/chunk", job.osc_id, osc_path(path), index, float(start))

    def _done(self, job: Job, msg: P.Done) -> None:
        outs = [np.concatenate(job.chunks[v], axis=-1) for v in range(job.outputs)]
        n = job.samples(job.rate)
        if n is not None and job.sent_s is not None:  # continue: the clip, then exactly the time asked for
            n += outs[0].shape[-1] - seconds_to_samples(job.sent_s, job.rate)
        if n is not None and any(a.shape[-1] < n for a in outs):
            raise P.ProtocolError(P.ErrorCode.INTERNAL, f"the daemon sent {outs[0].shape[-1]} samples, {n} needed")
        outs = [a[:, :n] if n is not None else a for a in outs]
        if job.phases == 2:
            plan = plan_samples(outs[0].shape[-1], job.rate, FRAME_RATE)
            if job.phase == 0:  # seal the wrap: inpaint the rotated clip around its middle
                job.phase = 1
                start, end = plan.region()
                self._submit(job, P.Inpaint(id="x", source=_inline(plan.rotate(outs[0]), job.rate), start_s=start,
                                            end_s=end, prompt=job.values["prompt"], preset=job.values["preset"],
                                            seed=job.seed))
                return
            outs = [plan.unrotate(outs[0])]
        self._end(job)
        for v, a in enumerate(outs):
            path = self.output.write_wav(a, job.rate, name_hint=f"{job.osc_id}-{v}")
            self.send(job.to, "/magnet/done", job.osc_id, osc_path(path), a.shape[-1] / job.rate, a.shape[-1], job.rate,
                      job.seed + v, v, job.outputs)

    def _expire(self, now: float) -> None:
        late = f"the daemon at {self.endpoint} did not answer within {REPLY_TIMEOUT_S:g} s"
        for job in [j for j in self.jobs.values() if j.deadline is not None and now > j.deadline]:
            self._end(job)
            self.error(job.to, job.osc_id, "unreachable", late, job.address)
        for rid, (to, address, sent, osc_id) in list(self.pending.items()):
            if now - sent > REPLY_TIMEOUT_S:
                del self.pending[rid]
                self.error(to, osc_id, "unreachable", late, address)


def _inline(audio: np.ndarray, rate: int) -> P.Source:
    return P.Source(audio=P.AudioData(data=P.pcm_encode(audio, "f32"), sample_rate=rate, channels=audio.shape[0]))


def _version() -> str:
    try:
        return metadata.version("magnet-rt")
    except metadata.PackageNotFoundError:
        return "0.0.0"


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
    """Start the bridge for `magnet-rt serve --osc`: `endpoint` is the daemon's bound endpoint, `files` its
    output folder (the daemon cleans it)."""
    key = None
    if getattr(args, "curve_secret", None):
        from .keys import load_server_secret
        key = load_server_secret(args.curve_secret)[0]
    endpoint = re.sub(r"://(0\.0\.0\.0|\*):", "://127.0.0.1:", endpoint)
    return OscBridge(endpoint, args.osc, args.osc_reply_port, files, args.osc_client, curve_server_key=key).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daemon.osc", description="OSC bridge to a running magnet-rt daemon.")
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
    print(f"magnet-rt osc bridge on {bridge.server.server_address[0]}:{bridge.port}, replies to port "
          f"{bridge.reply_port}, daemon {args.connect}, outputs in {output.root}", flush=True)
    done.wait()
    bridge.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
