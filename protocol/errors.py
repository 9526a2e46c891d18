"""Error codes of the magnet-rt wire protocol, and the exception that carries one.

The list of codes is closed: the daemon sends no other code in this protocol version (PROTOCOL.md,
"Error catalogue"). `ERROR_HELP` holds, per code, one sentence for a person and the next step; clients
print it, and PROTOCOL.md's error table repeats it word for word (a test checks this).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    TOO_LARGE = "too_large"
    INVALID_AUDIO = "invalid_audio"
    INVALID_REGION = "invalid_region"
    UNKNOWN_PRESET = "unknown_preset"
    UNKNOWN_MODEL = "unknown_model"
    DUPLICATE_ID = "duplicate_id"
    NOT_FOUND = "not_found"
    BUSY = "busy"
    CANCELLED = "cancelled"
    FORBIDDEN_PATH = "forbidden_path"
    MODEL_NOT_LOADED = "model_not_loaded"
    INTERNAL = "internal"
    SHUTTING_DOWN = "shutting_down"
    RESCORER_UNAVAILABLE = "rescorer_unavailable"


class ErrorHelp(NamedTuple):
    meaning: str  # what went wrong, in one sentence a musician can read
    action: str  # what the client (or its user) should do next


E = ErrorCode
ERROR_HELP: Mapping[ErrorCode, ErrorHelp] = MappingProxyType({
    E.BAD_REQUEST: ErrorHelp(
        "The message was not a single msgpack map.",
        "Fix the client: send exactly one frame holding one msgpack map."),
    E.UNSUPPORTED_VERSION: ErrorHelp(
        "The message was written for a protocol version this daemon does not speak.",
        "Upgrade the client or the daemon; `details.supported` lists the versions the daemon accepts."),
    E.UNKNOWN_TYPE: ErrorHelp(
        "The daemon does not know this message type.",
        "Check the spelling of `type`, or upgrade the daemon."),
    E.INVALID_FIELD: ErrorHelp(
        "A field is missing, has the wrong type or is out of range.",
        "Correct the field named in `details.field` and send the request again."),
    E.TOO_LARGE: ErrorHelp(
        "The message is larger than the size limit.",
        "Send shorter audio, or send a `path` to a file instead of inline audio."),
    E.INVALID_AUDIO: ErrorHelp(
        "The source audio is empty, not finite, unreadable, or has an unsupported sample rate or channel "
        "count.",
        "Send 1 or 2 channels of finite PCM at 8000-192000 Hz, or a readable audio file."),
    E.INVALID_REGION: ErrorHelp(
        "The time region lies outside the clip or is shorter than one 60 ms span.",
        "Choose start_s and end_s inside the clip, at least 0.06 s apart."),
    E.UNKNOWN_PRESET: ErrorHelp(
        "The daemon has no preset of this name.",
        "Pick one of the presets listed in `welcome`."),
    E.UNKNOWN_MODEL: ErrorHelp(
        "The daemon has no model of this name, or cannot load it (not in its local cache while offline, or "
        "unreadable).",
        "Pick one of the models listed in `welcome` or `models_reply`."),
    E.DUPLICATE_ID: ErrorHelp(
        "Another request of this client with the same id is still running.",
        "Use a fresh request id; the earlier request is not affected."),
    E.NOT_FOUND: ErrorHelp(
        "No request of this client with that id is queued or running.",
        "Nothing to cancel: the request has already ended, or the id is wrong."),
    E.BUSY: ErrorHelp(
        "The daemon's queue is full.",
        "Wait for a running request to finish and try again."),
    E.CANCELLED: ErrorHelp(
        "The request was cancelled before it finished.",
        "Nothing to do; send the request again if you still want it."),
    E.FORBIDDEN_PATH: ErrorHelp(
        "The file path is not inside a folder the daemon may read.",
        "Move the file into an allowed folder, or send the audio inline."),
    E.MODEL_NOT_LOADED: ErrorHelp(
        "The model is not loaded and this daemon does not load models on demand.",
        "Send `load` for the model first."),
    E.INTERNAL: ErrorHelp(
        "The daemon failed unexpectedly.",
        "Try again; if it keeps failing, report the daemon log."),
    E.SHUTTING_DOWN: ErrorHelp(
        "The daemon is shutting down and takes no more work.",
        "Restart the daemon and send the request again."),
    E.RESCORER_UNAVAILABLE: ErrorHelp(
        "The request needs the rescoring model (`rescore` or `hybrid_s`), and this daemon has none loaded.",
        "Start the daemon with `--rescorer MODEL`, or send the request without them."),
})
del E


def explain(code: ErrorCode | str) -> str:
    """One line for a person: what went wrong, then what to do."""
    help_ = ERROR_HELP[ErrorCode(code)]
    return f"{help_.meaning} {help_.action}"


class ProtocolError(Exception):
    """A failure that maps to one `error` message on the wire."""

    def __init__(self, code: ErrorCode | str, message: str, *, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (f"ProtocolError({self.code.value!r}, {self.message!r}, request_id={self.request_id!r}, "
                f"details={self.details!r})")
