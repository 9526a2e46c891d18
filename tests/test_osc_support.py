"""Helpers for the OSC tests (no tests here): a real daemon and a bridge as subprocesses, an OSC receiver.

Only 127.0.0.1; every wait is bounded. The daemon builds tiny-random into MAGNET_RT_CACHE (CI sets it; else a
temp dir of the session).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def need_binary(name: str, package: str) -> str:
    """The path of a tool CI installs; a clear failure (never a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it with `apt-get install -y {package}` (CI's .ci/run does)",
                    pytrace=False)
    return path


class Proc:
    """A subprocess whose stdout is read by a thread; `wait_line(regex)` waits for a line (bounded)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.log.append(line)
            self.lines.put(line)

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.p.poll() is not None and self.lines.empty():
                    break
                continue
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n{''.join(self.log)[-3000:]}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def start_daemon(tmp: Path, allow: Path) -> tuple[Proc, str]:
    env = {**os.environ, "MAGNET_RT_CACHE": os.environ.get("MAGNET_RT_CACHE") or str(tmp / "cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = Proc([sys.executable, "-m", "daemon", "--model", "tiny-random", "--device", "cpu",
                 "--bind", f"tcp://{HOST}:*", "--allow-dir", str(allow),
                 "--log-level", "warning"], env)
    endpoint = proc.wait_line(r"ready on (tcp://\S+)", 120).group(1)
    return proc, endpoint


def start_bridge(endpoint: str, reply_port: int, out: Path) -> tuple[Proc, int]:
    proc = Proc([sys.executable, "-m", "clients.osc", "--connect", endpoint, "--osc", f"{HOST}:0",
                 "--osc-reply-port", str(reply_port), "--output-dir", str(out)])
    port = int(proc.wait_line(r"osc bridge on [\d.]+:(\d+)", 60).group(1))
    return proc, port


class Receiver:
    """Collects every OSC message arriving on the reply port; `expect` waits for one (bounded)."""

    def __init__(self, port: int):
        self.messages: queue.Queue[tuple] = queue.Queue()
        self.seen: list[tuple] = []
        d = Dispatcher()
        d.set_default_handler(lambda address, *args: self.messages.put((address, *args)))
        self.server = ThreadingOSCUDPServer((HOST, port), d)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def expect(self, address: str, osc_id: str | None = None, timeout: float = 30.0) -> tuple:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.seen:
                if m[0] == address and (osc_id is None or (len(m) > 1 and m[1] == osc_id)):
                    self.seen.remove(m)
                    return m
            try:
                self.seen.append(self.messages.get(timeout=0.1))
            except queue.Empty:
                pass
        raise AssertionError(f"no {address} {osc_id or ''} within {timeout} s; got {self.seen[-10:]}")

    def all_of(self, osc_id: str) -> list[tuple]:
        """Messages seen so far for a job id (after `expect` drained the queue)."""
        while not self.messages.empty():
            self.seen.append(self.messages.get())
        return [m for m in self.seen if len(m) > 1 and m[1] == osc_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def client(port: int) -> SimpleUDPClient:
    return SimpleUDPClient(HOST, port)
