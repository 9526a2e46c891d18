"""Bytes on the wire: one msgpack map per ZeroMQ frame, with size limits; PCM sample encoding.

`unpack` never raises anything but `ProtocolError`: any frame, however hostile, becomes a `Message` or a
typed error that the daemon can send back (PROTOCOL.md, "Wire frames").
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from .errors import ErrorCode, ProtocolError
from .messages import AUDIO_FORMATS, SAMPLE_BYTES, Message

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # loopback only; ipc:// also allowed, CURVE for anything else
ENV_ENDPOINT = "MAGNET_RT_ENDPOINT"  # where the daemon binds and the clients connect when set: both ends agree
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # also the daemon's ZMQ_MAXMSGSIZE
MAX_STR_BYTES = 1024 * 1024  # per msgpack str; prompts are far shorter
MAX_ARRAY_LEN = 4096
MAX_MAP_LEN = 256
MAX_NESTING = 4  # the message map is level 1; no map or array deeper than level 4 (PROTOCOL.md §3)
OVERSIZE_FACTOR = 2  # the daemon reads frames up to this many times its limit to answer them with too_large
S16_SCALE = 32767.0
# Why msgpack refused a frame, for the exceptions whose own text is empty or says little (most specific first).
_UNPACK_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (msgpack.exceptions.FormatError, "it holds a byte that starts no msgpack value (0xc1, or not msgpack at all)"),
    (msgpack.exceptions.StackError, "it nests too deep for the decoder"),
    (msgpack.exceptions.ExtraData, "it holds more than one msgpack value"),
)


def pack(msg: Message, max_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Validate and encode one message; refuse to produce a frame the peer would reject."""
    data = msgpack.packb(msg.to_dict(), use_bin_type=True)
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {len(data)} bytes exceeds {max_size} bytes",
                            request_id=getattr(msg, "id", None), details={"size": len(data), "max": max_size})
    return data


def unpack_map(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Decode one frame to a plain msgpack value, with msgpack's own length limits set."""
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes exceeds {max_size} bytes",
                            details={"size": len(data), "max": max_size})
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, max_bin_len=max_size,
            max_str_len=MAX_STR_BYTES, max_array_len=MAX_ARRAY_LEN, max_map_len=MAX_MAP_LEN, max_ext_len=0)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError, StackError (too deep), truncation, limits, bad UTF-8: all ValueError
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"frame is not one valid msgpack value: {_unpack_reason(exc)}"[:300]) from None
    check_nesting(value)
    return value


def _unpack_reason(exc: BaseException) -> str:
    """A non-empty reason for a refused frame (some msgpack exceptions carry no text)."""
    known = next((why for cls, why in _UNPACK_REASONS if isinstance(exc, cls)), None)
    return known or str(exc) or type(exc).__name__


def check_nesting(value: Any, limit: int = MAX_NESTING) -> None:
    """Refuse a value with a map or array deeper than `limit` levels (the value itself is level 1)."""
    level, depth = [value], 0
    while level:  # one pass per level: at most limit + 1 passes
        containers = [x for x in level if isinstance(x, dict | list)]
        if not containers:
            return
        depth += 1
        if depth > limit:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"the message nests deeper than {limit} levels of maps "
                                "and arrays")
        level = [y for c in containers for y in (c.values() if isinstance(c, dict) else c)]


def unpack(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate one frame. Raises only ProtocolError; its `request_id` is set when readable."""
    return Message.from_dict(unpack_map(data, max_size))


# --- PCM -------------------------------------------------------------------------------------------------------
def pcm_encode(samples: np.ndarray, fmt: str = "f32") -> bytes:
    """float samples [C, N] or [N] -> interleaved little-endian PCM, clipped to [-1, 1] (`s16`: also rounded)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or fmt not in AUDIO_FORMATS:
        raise ValueError(f"expected samples [C, N] or [N] and format in {AUDIO_FORMATS}, got {x.shape}, {fmt!r}")
    if not np.isfinite(x).all():
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "samples must be finite")
    frames = np.clip(x.T, -1.0, 1.0)  # [N, C]: interleaved on the wire; PROTOCOL.md §5: in [-1, 1]
    if fmt == "s16":
        return np.rint(frames * S16_SCALE).astype("<i2").tobytes()
    return frames.astype("<f4").tobytes()


def pcm_decode(data: bytes, fmt: str, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM -> float32 [C, N]. Raises ProtocolError(invalid_audio)."""
    if fmt not in AUDIO_FORMATS or not 1 <= channels <= 2:
        raise ProtocolError(ErrorCode.INVALID_AUDIO, f"unsupported format {fmt!r} or channel count {channels}")
    width = SAMPLE_BYTES[fmt] * channels
    if not data or len(data) % width:
        raise ProtocolError(ErrorCode.INVALID_AUDIO,
                            f"audio of {len(data)} bytes is not a whole, non-zero number of {width}-byte frames")
    if fmt == "s16":
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(S16_SCALE)
    else:
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(x).all():
            raise ProtocolError(ErrorCode.INVALID_AUDIO, "audio holds NaN or infinite samples")
        peak = max(float(x.max()), -float(x.min()))  # no temporary copy of the samples
        if peak > 1.0:
            raise ProtocolError(ErrorCode.INVALID_AUDIO, f"audio holds f32 samples outside [-1, 1] (peak "
                                f"{peak:.3g}); clip or scale it before sending")
    return np.ascontiguousarray(x.reshape(-1, channels).T)
