"""The one table from engine exceptions to protocol error codes (PROTOCOL.md §8)."""

from __future__ import annotations

import logging
from typing import Any

from magnet_rt.errors import CheckpointError, InvalidAudio, InvalidParams, InvalidRegion
from magnet_rt.presets import UnknownPreset
from protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

# exception class -> (code, the `details` key that code carries). The first match wins, so subclasses
# come first (UnknownPreset is an InvalidParams). Anything else is `internal`.
ENGINE_ERRORS: tuple[tuple[type[BaseException], ErrorCode, str], ...] = (
    (UnknownPreset, ErrorCode.UNKNOWN_PRESET, "preset"),
    (InvalidParams, ErrorCode.INVALID_FIELD, "field"),
    (InvalidAudio, ErrorCode.INVALID_AUDIO, "field"),
    (InvalidRegion, ErrorCode.INVALID_REGION, "field"),
    (CheckpointError, ErrorCode.UNKNOWN_MODEL, "model"),
)


def to_protocol_error(exc: BaseException, request_id: str | None = None, **details: Any) -> ProtocolError:
    """Any exception -> the ProtocolError to send. `details` offers values per key (field=, preset=,
    model=); only the key of the chosen code is kept. Unexpected exceptions become `internal` and are
    logged here with their traceback; the client gets one sentence."""
    if isinstance(exc, ProtocolError):
        exc.request_id = exc.request_id or request_id
        return exc
    for cls, code, key in ENGINE_ERRORS:
        if isinstance(exc, cls):
            value = details.get(key)
            return ProtocolError(code, str(exc)[:1000] or code.value, request_id=request_id,
                                 details={key: value} if value is not None else {})
    log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc,
              extra={"ctx": {"id": request_id} if request_id else {}})
    return ProtocolError(ErrorCode.INTERNAL, f"internal error ({type(exc).__name__}); see the daemon log",
                         request_id=request_id)
