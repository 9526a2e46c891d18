"""Structured logging: one line per event, human by default, one JSON object per line with `--log-format json`.

Context travels in `extra={"ctx": {...}}` (request `id`, `client`, timings ...); both formats print it, so
every line about a request carries its id:

    log.info("accepted", extra=ctx(rid, client, position=2))
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("human", "json")


def ctx(request_id: str | None = None, client: bytes | None = None, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the request id, the client's routing id (hex) and any other fields."""
    out: dict[str, Any] = {}
    if request_id is not None:
        out["id"] = request_id
    if client is not None:
        out["client"] = client.hex()
    out.update(fields)
    return {"ctx": out}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), **getattr(record, "ctx", {})}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        fields = " ".join(f"{k}={_short(v)}" for k, v in getattr(record, "ctx", {}).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}" + (f"  {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def setup_logging(fmt: str = "human", level: str = "info") -> None:
    """Send every log record of the process to stderr in `fmt`; replaces handlers set before."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "filelock", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    try:  # progress bars on stderr would break one-object-per-line logs
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
