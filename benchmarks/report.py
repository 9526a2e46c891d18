"""Benchmark output: the result as JSON on stdout, and in a file when asked."""

from __future__ import annotations

import json


def emit(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
