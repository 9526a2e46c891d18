"""Helpers to drive a real daemon from tests: start it as a subprocess, talk to it with DEALER sockets.

Every wait has a deadline; nothing sleeps to hide a race. The client decodes each reply with the protocol
package, so every message the daemon sends is also checked against PROTOCOL.md's field rules.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import zmq

from protocol import Message, Ping, is_terminal, pack, unpack

READY = re.compile(r"ready on (\S+)")


class DaemonProcess:
    """`python -m daemon ARGS` bound to a free loopback port; `start()` waits for its `ready` line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.args = ["--bind", "tcp://127.0.0.1:*", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr = tempfile.NamedTemporaryFile(prefix="magnet-rt-daemon-", suffix=".log", delete=False)

    def start(self, timeout: float = 180.0) -> str:
        repo = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", *self.args], cwd=repo, env=self.env,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if m := READY.search(line):
                self.endpoint = m.group(1)
                return self.endpoint
        self.kill()
        raise RuntimeError(f"daemon did not print 'ready' within {timeout} s; log:\n{self.log()[-4000:]}")

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return Path(self._stderr.name).read_text(errors="replace")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Client:
    """A DEALER speaking the protocol. Replies are buffered per request id."""

    def __init__(self, zctx: zmq.Context, endpoint: str, ping_every_s: float = 1.0):
        self.sock = zctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self.ping_every_s = ping_every_s  # heartbeat while waiting, as a real client does
        self._last_sent = time.monotonic()
        self._pending: dict[str | None, deque[Message]] = defaultdict(deque)
        self.received: list[Message] = []  # every message in arrival order (heartbeat pongs left out)
        self._n = 0

    def close(self) -> None:
        self.sock.close(linger=0)

    def send(self, msg: Message) -> None:
        self.sock.send(pack(msg))
        self._last_sent = time.monotonic()

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))
        self._last_sent = time.monotonic()

    def _recv(self, timeout: float) -> Message | None:
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return None
        return unpack(self.sock.recv())

    def next(self, rid: str | None, timeout: float = 30.0) -> Message:
        """The next message for request `rid` (None: an error with a nil id). Pings when this client has sent
        nothing for `ping_every_s`, counted from its last send, not from this call: a caller reading a stream
        of progress messages calls often and would otherwise never ping (the daemon drops clients silent for
        30 s)."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.ping_every_s and now - self._last_sent >= self.ping_every_s:
                self._n += 1
                self.send(Ping(id=f"hb-{self._n}"))
            if self._pending[rid]:
                break
            if now >= deadline:
                raise TimeoutError(f"no message for request {rid!r} within {timeout} s")
            wake = deadline if not self.ping_every_s else min(deadline, self._last_sent + self.ping_every_s)
            msg = self._recv(wake - time.monotonic())
            if msg is not None and not (msg.TYPE == "pong" and msg.id.startswith("hb-")):
                self._pending[msg.id].append(msg)
                self.received.append(msg)
        return self._pending[rid].popleft()

    def until_terminal(self, rid: str, timeout: float = 60.0) -> list[Message]:
        """Every message of request `rid` up to and including its terminal one."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while not out or not is_terminal(out[-1]):
            out.append(self.next(rid, timeout=max(0.0, deadline - time.monotonic())))
        return out

    def request(self, msg: Message, timeout: float = 60.0) -> list[Message]:
        self.send(msg)
        return self.until_terminal(msg.id, timeout)

    def call(self, msg: Message, timeout: float = 10.0) -> Message:
        """Send a request that has a single reply; return it."""
        msgs = self.request(msg, timeout)
        assert len(msgs) == 1, msgs
        return msgs[0]
