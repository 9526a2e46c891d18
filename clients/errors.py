"""Client-side errors, and the one table that turns any of them into a sentence, a next step and an exit code.

The library raises typed exceptions (`DaemonUnavailable`, `RequestFailed`, ...); the CLI converts them at its
boundary with `describe()`. Protocol error codes reuse `protocol.ERROR_HELP` (the text PROTOCOL.md prints),
with the next step rewritten as a `magnet-rt` command where the CLI has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol import ERROR_HELP, ErrorCode

EXIT_OK = 0
EXIT_FAILED = 1  # the daemon (or the audio device) refused or failed the request
EXIT_USAGE = 2  # bad arguments, as argparse uses
EXIT_UNREACHABLE = 3  # no daemon answered
EXIT_INTERRUPTED = 130  # Ctrl-C: the request was cancelled (128 + SIGINT, the shell convention)

START_HINT = "Start it with `make serve` or `magnet-rt serve`, or point --connect / MAGNET_RT_ENDPOINT at it."


class ClientError(Exception):
    """Base class of every error the magnet-rt client raises on purpose."""


class DaemonUnavailable(ClientError):
    """No reply from the daemon within the client's timeout and retries."""

    def __init__(self, endpoint: str, why: str, hint: str = START_HINT) -> None:
        super().__init__(f"no magnet-rt daemon answered at {endpoint}: {why}. {hint}")
        self.endpoint = endpoint
        self.why = why
        self.hint = hint


class DaemonTimeout(DaemonUnavailable):
    """A running request went silent: no event, and the daemon stopped answering pings (or the link reset)."""

    def __init__(self, endpoint: str, why: str) -> None:
        super().__init__(endpoint, why, "Check it with `magnet-rt status`, or restart it; the request is lost.")


class RequestFailed(ClientError):
    """The daemon answered a request with `error` (or the client refused to send it: `local`)."""

    def __init__(self, code: ErrorCode | str, message: str, *, request_id: str | None = None,
                 details: Mapping[str, Any] | None = None, local: bool = False) -> None:
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else ErrorCode.INTERNAL
        super().__init__(f"{self.code}: {message}")
        self.message = message
        self.request_id = request_id
        self.details = dict(details or {})
        self.local = local  # raised before anything was sent: the caller's arguments are wrong

    @classmethod
    def from_protocol(cls, exc: Any, *, local: bool = False) -> RequestFailed:
        """From a `protocol.ProtocolError` or a decoded `protocol.Error` message."""
        kind = RequestCancelled if exc.code == ErrorCode.CANCELLED else cls
        return kind(exc.code, exc.message, request_id=getattr(exc, "request_id", None) or getattr(exc, "id", None),
                    details=exc.details, local=local)


class RequestCancelled(RequestFailed):
    """The request ended with `cancelled` (raised by the collecting helpers, not by event iterators)."""

    def __init__(self, code: ErrorCode | str = ErrorCode.CANCELLED, message: str = "the request was cancelled",
                 **kw: Any) -> None:
        super().__init__(code, message, **kw)


class BadReply(ClientError):
    """The daemon sent something this client cannot read (a protocol bug or a version mismatch)."""


class AudioUnavailable(ClientError):
    """Playback is impossible here: PortAudio is missing or the output device cannot be opened."""


# CLI next steps that beat the generic protocol text (which speaks of fields and `details`).
CLI_ACTIONS: Mapping[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "This is a bug in magnet-rt: run again with MAGNET_RT_DEBUG=1 and report it.",
    ErrorCode.UNSUPPORTED_VERSION: "Upgrade magnet-rt or the daemon so that both speak the same protocol version.",
    ErrorCode.UNKNOWN_TYPE: "Upgrade the daemon: it is older than this magnet-rt.",
    ErrorCode.INVALID_FIELD: "Check the command's options (`magnet-rt COMMAND -h`) and run again.",
    ErrorCode.INVALID_AUDIO: "Use a WAV or FLAC file with 1 or 2 channels at 8000-192000 Hz, no longer than the "
                             "model takes (`magnet-rt models` lists each model's length).",
    ErrorCode.UNKNOWN_PRESET: "Pick one of the presets that `magnet-rt ping` lists (e.g. --preset live).",
    ErrorCode.UNKNOWN_MODEL: "List the daemon's models with `magnet-rt models`.",
    ErrorCode.MODEL_NOT_LOADED: "Load it first: `magnet-rt load MODEL`.",
    ErrorCode.BUSY: "Wait for running requests to finish (`magnet-rt status` shows the queue), then retry.",
    ErrorCode.FORBIDDEN_PATH: "Drop --by-path to send the audio inline, or move the file into a folder the "
                              "daemon may read.",
    ErrorCode.TOO_LARGE: "Send a shorter clip, or use --by-path so the daemon reads the file itself.",
    ErrorCode.INVALID_REGION: "Choose --start/--end inside the clip, at least 0.06 s apart (for `continue`, "
                              "--duration must exceed the clip by 0.06 s).",
    ErrorCode.NOT_FOUND: "Nothing to cancel: the request has ended, or it belongs to another connection "
                         "(ids are per connection).",
    ErrorCode.SHUTTING_DOWN: "Restart the daemon (`magnet-rt serve`) and run the command again.",
}


def _sentence(message: str, field: str, flag: str | None) -> str:
    """The daemon's message about this case, naming the command-line option instead of the protocol field
    (`params.top_p: ...` -> `--param top_p: ...`)."""
    if flag and field and message.startswith(f"{field}:"):
        top, _, rest = field.partition(".")
        name = f"{flag} {rest}" if top == "params" and rest else flag
        message = name + message[len(field):]
    return message if message.endswith((".", "!", "?")) else message + "."


def describe(exc: BaseException, flags: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(exit code, text for stderr) for any error the CLI may meet: one sentence about this case, then the next
    step. `flags` maps a protocol field to the option that sets it. Unknown exceptions are not handled here."""
    if isinstance(exc, DaemonUnavailable):
        return EXIT_UNREACHABLE, f"error: {exc}"
    if isinstance(exc, RequestFailed):
        field = str(exc.details.get("field", ""))
        flag = (flags or {}).get(field.split(".")[0].split("[")[0]) if field else None
        text = f"error: {_sentence(exc.message, field, flag)}"
        fix = f"Fix {flag} and run again." if flag else None
        if exc.local:  # refused before sending: the caller's arguments are wrong
            return EXIT_USAGE, text + (f"\n  {fix}" if fix else "")
        step = fix if fix and exc.code == ErrorCode.INVALID_FIELD else CLI_ACTIONS.get(exc.code)
        return EXIT_FAILED, f"{text}\n  {step or ERROR_HELP[exc.code].action} [{exc.code}]"
    if isinstance(exc, AudioUnavailable | BadReply | ClientError):
        return EXIT_FAILED, f"error: {exc}"
    raise TypeError(f"no CLI description for {type(exc).__name__}")
