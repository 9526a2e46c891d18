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
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # also the daemon's ZMQ_MAXMSGSIZE
MAX_STR_BYTES = 1024 * 1024  # per msgpack str; prompts are far shorter
MAX_ARRAY_LEN = 4096
MAX_MAP_LEN = 256
S16_SCALE = 32767.0


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
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, max_bin_len=max_size,
            max_str_len=MAX_STR_BYTES, max_array_len=MAX_ARRAY_LEN, max_map_len=MAX_MAP_LEN, max_ext_len=0)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError, StackError (too deep), truncation, limits, bad UTF-8: all ValueError
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame is not one valid msgpack value: {exc}"[:300]) from None


def unpack(data: bytes, max_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate one frame. Raises only ProtocolError; its `request_id` is set when readable."""
    return Message.from_dict(unpack_map(data, max_size))


# --- PCM -------------------------------------------------------------------------------------------------------
def pcm_encode(samples: np.ndarray, fmt: str = "f32") -> bytes:
    """float samples [C, N] or [N] in [-1, 1] -> interleaved little-endian PCM (`s16`: clipped, rounded)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or fmt not in AUDIO_FORMATS:
        raise ValueError(f"expected samples [C, N] or [N] and format in {AUDIO_FORMATS}, got {x.shape}, {fmt!r}")
    if not np.isfinite(x).all():
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "samples must be finite")
    frames = x.T  # [N, C]: interleaved on the wire
    if fmt == "s16":
        return np.rint(np.clip(frames, -1.0, 1.0) * S16_SCALE).astype("<i2").tobytes()
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
    return np.ascontiguousarray(x.reshape(-1, channels).T)
