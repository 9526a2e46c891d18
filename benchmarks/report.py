"""Benchmark output: the result as JSON on stdout, and in a file when asked."""

from __future__ import annotations

import argparse
import json


def emit(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


def daemon_request_args(ap: argparse.ArgumentParser, duration_s: float) -> None:
    """The options of benchmarks that send generates to a daemon: model, device, preset, prompt, duration, --json."""
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="live")
    ap.add_argument("--prompt", default="warm rhodes chords over a dusty drum loop")
    ap.add_argument("--duration", type=float, default=duration_s)
    ap.add_argument("--json", dest="json_out")
