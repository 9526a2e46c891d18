"""Messages of the magnet-rt wire protocol: one frozen dataclass per message type.

PROTOCOL.md is the authority; this module implements it and a test keeps the two in step. Each field carries
its check in `field(metadata=...)`; `Struct._check` runs the checks for both directions, so `to_dict()` (what
we send) and `from_dict()` (what we receive) apply the same rules: unknown keys are ignored, nil means "absent",
a missing required field or a wrong type raises `ProtocolError(invalid_field)` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn, Self

from .errors import ErrorCode, ProtocolError

PROTOCOL_VERSION = 1  # the only place the version is written; PROTOCOL.md quotes it (a test checks)
SUPPORTED_VERSIONS = (1,)
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64  # preset, client and capability names
MAX_MODEL_CHARS = 512  # model names: a registry name, a hub id or a folder path
MAX_PROMPT_CHARS = 2000
MAX_PROMPTS = 16
MAX_VARIATIONS = 8
MAX_OUTPUTS = 16  # prompts x variations in one request
MAX_DURATION_S = 30.0  # one window: inpaint, continue, chunk_s, hybrid_s
MAX_LONG_DURATION_S = 600.0  # generate: beyond the model's segment it is long-form (window by window)
MAX_SOURCE_S = 600.0  # inpaint / continue: the longest source, and the longest continuation
PROMPT_BPM_RANGE = (20.0, 400.0)  # a tempo a prompt names ("N bpm"), which a model with a beat grid plays
# how a prompt names its tempo (PROTOCOL.md, `generate`); magnet_rt.tempo.TEMPO_PHRASE reads the same (tested)
PROMPT_TEMPO_PHRASE = re.compile(r"\b(\d+(?:\.\d+)?) ?bpm\b", re.IGNORECASE)


def prompt_with_tempo(prompt: str | None, bpm: float | None) -> str | None:
    """`prompt` with ", <bpm> bpm" appended, as DAW bridges append the host tempo: only when a tempo is given,
    inside PROMPT_BPM_RANGE, and the prompt is not empty (unconditioned stays unconditioned) and names no tempo
    (PROMPT_TEMPO_PHRASE). A model with a beat grid plays a prompt's tempo (PROTOCOL.md, `generate`)."""
    if not prompt or not prompt.strip() or bpm is None or PROMPT_TEMPO_PHRASE.search(prompt):
        return prompt
    if not PROMPT_BPM_RANGE[0] <= bpm <= PROMPT_BPM_RANGE[1]:
        return prompt
    return f"{prompt}, {bpm:g} bpm"


def bar_seconds(bpm: float, beats_per_bar: int = 4) -> Fraction:
    """One bar's exact length in seconds, the bpm as written (120.1 is 1201/10): beats_per_bar * 60 / bpm."""
    return Fraction(beats_per_bar * 60) / Fraction(str(bpm))


MAX_SEED = 2**63 - 1  # any seed the daemon reports
MAX_REQUEST_SEED = 2**63 - 1025  # a request's base seed: the engine adds the output's and the window's index
PICKED_SEED_BITS = 52  # seeds the daemon picks (and seed + k) stay exact in a double, e.g. in JavaScript
MIN_REGION_S = 0.06  # one MAGNeT span: 3 frames at 50 frames/s
AUDIO_FORMATS = ("f32", "s16")
SAMPLE_BYTES: Mapping[str, int] = MappingProxyType({"f32": 4, "s16": 2})

Check = Callable[[str, Any], Any]  # (field path, wire value) -> normalised value, or raise ProtocolError
struct = dataclass(frozen=True, kw_only=True)


# --- field checks ------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"bin of {len(value)} bytes"
    if isinstance(value, Mapping | list | tuple):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(path: str, why: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> NoReturn:
    raise ProtocolError(code, f"{path}: {why}", details={"field": path})


def _int(lo: int = 0, hi: int = MAX_SEED, code: ErrorCode = ErrorCode.INVALID_FIELD) -> Check:
    def check(path: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):  # bool is not an int here
            _fail(path, f"must be an integer, got {_show(v)}")
        v = int(v)
        if not lo <= v <= hi:
            _fail(path, f"must be in [{lo}, {hi}], got {v}", code)
        return v
    return check


def _float(lo: float = -math.inf, hi: float = math.inf, *, above: bool = False) -> Check:
    """A finite number in [lo, hi] ((lo, hi] when `above`); integers are accepted and made floats."""
    def check(path: str, v: Any) -> float:
        if not isinstance(v, int | float) or isinstance(v, bool):
            _fail(path, f"must be a number, got {_show(v)}")
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            _fail(path, f"must be finite, got {_show(v)}")
        if x < lo or x > hi or (above and x == lo):
            _fail(path, f"must be in {'(' if above else '['}{lo:g}, {hi:g}], got {x:g}")
        return x
    return check


def _str(lo: int = 0, hi: int = MAX_NAME_CHARS) -> Check:
    def check(path: str, v: Any) -> str:
        if not isinstance(v, str):
            _fail(path, f"must be a string, got {_show(v)}")
        v = str(v)  # a StrEnum member becomes its plain value
        if not lo <= len(v) <= hi:
            _fail(path, f"must have {lo} to {hi} characters, got {len(v)}")
        return v
    return check


def _choice(*options: str) -> Check:
    def check(path: str, v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            _fail(path, f"must be one of {', '.join(options)}; got {_show(v)}")
        return str(v)
    return check


def _bool(path: str, v: Any) -> bool:
    if type(v) is not bool:
        _fail(path, f"must be true or false, got {_show(v)}")
    return v


def _bin(path: str, v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray | memoryview):
        _fail(path, f"must be bin (raw bytes), got {_show(v)}")
    return bytes(v)


def _list(item: Check, lo: int, hi: int) -> Check:
    def check(path: str, v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list | tuple):
            _fail(path, f"must be an array, got {_show(v)}")
        if not lo <= len(v) <= hi:
            _fail(path, f"must have {lo} to {hi} items, got {len(v)}")
        return tuple(item(f"{path}[{i}]", x) for i, x in enumerate(v))
    return check


def _map(value: Check | None = None, hi: int = 64) -> Check:
    """A map with string keys; `value` checks each value (None: any msgpack value)."""
    def check(path: str, v: Any) -> dict[str, Any]:
        if not isinstance(v, Mapping):
            _fail(path, f"must be a map, got {_show(v)}")
        if len(v) > hi:
            _fail(path, f"must have at most {hi} entries, got {len(v)}")
        if not all(type(k) is str for k in v):
            _fail(path, "keys must be strings")
        return {k: value(f"{path}.{k}", x) if value else x for k, x in v.items()}
    return check


def _detail(path: str, v: Any, depth: int = 0) -> Any:
    """An error detail: a finite scalar, or a list/map of them, nested at most 2 deep (`details` is level 2 of
    the message and PROTOCOL.md §3 allows 4 levels)."""
    if isinstance(v, list | tuple) and depth < 2:
        return [_detail(f"{path}[{i}]", x, depth + 1) for i, x in enumerate(v)]
    if isinstance(v, Mapping) and depth < 2:
        return {k: _detail(f"{path}.{k}", x, depth + 1) for k, x in _map()(path, v).items()}
    if type(v) is float and not math.isfinite(v):
        _fail(path, f"must be finite, got {_show(v)}")
    if type(v) in (bool, int, float, str, bytes) or v is None:
        return v
    _fail(path, f"must be nil, bool, a number, str, bin, or a list/map of them; got {_show(v)}")


def _scalar(path: str, v: Any) -> Any:
    """A small msgpack scalar: nil, bool, int, finite float, str or bin of at most 64 characters/bytes."""
    if type(v) in (bool, int) or v is None:
        return v
    if type(v) is float and math.isfinite(v):
        return v
    if isinstance(v, str | bytes) and len(v) <= 64:
        return v
    _fail(path, f"must be nil, bool, int, finite float, or str/bin of at most 64; got {_show(v)}")


def _code(path: str, v: Any) -> ErrorCode:
    """An error code; one this version does not know is read as `internal` (PROTOCOL.md, error catalogue)."""
    text = _str(1, MAX_NAME_CHARS)(path, v)
    return ErrorCode(text) if text in ErrorCode._value2member_map_ else ErrorCode.INTERNAL


def _struct(cls: type[Struct]) -> Check:
    return lambda path, v: cls._check(v, path)


def _f(check: Check, default: Any = MISSING, factory: Any = MISSING) -> Any:
    return field(default=default, default_factory=factory, metadata={"check": check})


def _pcm_frames(path: str, data: bytes, fmt: str, channels: int, code: ErrorCode) -> int:
    width = SAMPLE_BYTES[fmt] * channels
    if not data or len(data) % width:
        _fail(path, f"must hold a whole, non-zero number of {width}-byte frames, got {len(data)} bytes", code)
    return len(data) // width


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_default(f: Any, value: Any) -> bool:
    if value is None:
        return True
    if f.default is not MISSING:
        return value == f.default
    return f.default_factory is not MISSING and value == f.default_factory()


def _wire(v: Any) -> Any:
    """Plain msgpack-ready values: structs become maps without nil or default fields; tuples become arrays."""
    if isinstance(v, Struct):
        return {f.name: _wire(x) for f in fields(v) if not _is_default(f, x := getattr(v, f.name))}
    if isinstance(v, list | tuple):
        return [_wire(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _wire(x) for k, x in v.items()}
    if isinstance(v, StrEnum):
        return v.value
    return v


_ID = _str(1, MAX_ID_CHARS)
_NAME = _str(1, MAX_NAME_CHARS)
_MODEL = _str(1, MAX_MODEL_CHARS)
_PROMPT = _str(0, MAX_PROMPT_CHARS)
_FORMAT = _choice(*AUDIO_FORMATS)
_SECONDS = _float(0.0)
_COUNT = _int(0)
_SEED = _int(0, MAX_SEED)
_RATE = _int(8000, 192000)


# --- base classes ------------------------------------------------------------------------------------------
@struct
class Struct:
    """A msgpack map with named fields, each checked by the `Check` in its metadata."""

    def _check_whole(self, path: str) -> None:
        """Rules that span several fields; subclasses override."""

    @classmethod
    def _check(cls, value: Any, path: str = "") -> Self:
        if isinstance(value, cls):
            data: Mapping[str, Any] = {f.name: getattr(value, f.name) for f in fields(cls)}
        elif isinstance(value, Mapping):
            data = value
        else:
            _fail(path or cls.__name__, f"must be a map, got {_show(value)}")
        kwargs = {}
        for f in fields(cls):
            raw = data.get(f.name)
            if raw is None:  # nil and absent are the same; the default applies
                if f.default is MISSING and f.default_factory is MISSING:
                    _fail(_join(path, f.name), "is required")
                continue
            kwargs[f.name] = f.metadata["check"](_join(path, f.name), raw)
        obj = cls(**kwargs)
        obj._check_whole(path)
        return obj

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls._check(data)

    def to_dict(self) -> dict[str, Any]:
        return _wire(self._check(self))


@struct
class Message(Struct):
    """Envelope: `v`, `type` and the client-chosen request `id`, echoed on every reply and event."""

    TYPE: ClassVar[str] = ""
    id: str = _f(_ID)

    def to_dict(self) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "type": self.TYPE, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Check the envelope, pick the class from `type`, check the fields. `Message.from_dict` reads any."""
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"a message must be a msgpack map, got {_show(data)}")
        rid = data.get("id")
        rid = rid if type(rid) is str and 1 <= len(rid) <= MAX_ID_CHARS else None
        try:
            version = _int(0)("v", data["v"]) if "v" in data else _fail("v", "is required")
            if version not in SUPPORTED_VERSIONS:
                raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version} is not supported",
                                    details={"supported": list(SUPPORTED_VERSIONS)})
            name = _NAME("type", data["type"]) if "type" in data else _fail("type", "is required")
            msg_cls = MESSAGE_TYPES.get(name)
            if msg_cls is None:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {name!r}",
                                    details={"type": name})
            if cls is not Message and msg_cls is not cls:
                _fail("type", f"must be {cls.TYPE!r}, got {name!r}")
            return msg_cls._check(data)
        except ProtocolError as exc:
            exc.request_id = exc.request_id or rid
            raise


@struct
class Request(Message):
    """Client -> daemon."""


@struct
class Event(Message):
    """Daemon -> client: a reply or an event of the request named by `id`."""


# --- nested structures -------------------------------------------------------------------------------------
@struct
class Stream(Struct):
    progress: bool = _f(_bool, True)
    preview: bool = _f(_bool, False)
    audio: bool = _f(_bool, True)


@struct
class DecodeParams(Struct):
    """Overrides of the preset's decoding parameters; nil = the preset's value. Semantics: the engine."""

    decoding_steps: tuple[int, ...] | None = _f(_list(_int(1, 200), 4, 4), None)
    span_arrangement: str | None = _f(_choice("nonoverlap", "stride1"), None)
    span_scoring: str | None = _f(_choice("max", "prod"), None)
    use_sampling: bool | None = _f(_bool, None)
    temperature: float | None = _f(_SECONDS, None)
    anneal_temperature: bool | None = _f(_bool, None)
    top_p: float | None = _f(_float(0.0, 1.0, above=True), None)
    top_k: int | None = _f(_COUNT, None)
    max_cfg_coef: float | None = _f(_SECONDS, None)
    min_cfg_coef: float | None = _f(_SECONDS, None)
    higher_cfg_coef: float | None = _f(_SECONDS, None)


@struct
class AudioData(Struct):
    """Inline PCM, interleaved, little-endian."""

    data: bytes = _f(_bin)
    sample_rate: int = _f(_int(8000, 192000, ErrorCode.INVALID_AUDIO))
    channels: int = _f(_int(1, 2, ErrorCode.INVALID_AUDIO))
    format: str = _f(_FORMAT, "f32")

    @property
    def duration_s(self) -> float:
        return len(self.data) / (SAMPLE_BYTES[self.format] * self.channels) / self.sample_rate

    def _check_whole(self, path: str) -> None:
        _pcm_frames(_join(path, "data"), self.data, self.format, self.channels, ErrorCode.INVALID_AUDIO)


@struct
class Source(Struct):
    """Exactly one of `audio` (inline) and `path` (a file the daemon reads)."""

    audio: AudioData | None = _f(_struct(AudioData), None)
    path: str | None = _f(_str(1, 4096), None)

    def _check_whole(self, path: str) -> None:
        if (self.audio is None) == (self.path is None):
            _fail(path or "source", "must hold exactly one of audio and path")


@struct
class Limits(Struct):
    max_message_bytes: int = _f(_int(1))
    max_duration_s: float = _f(_float(0.0, above=True))
    max_prompts: int = _f(_int(1))
    max_variations: int = _f(_int(1))
    max_outputs: int = _f(_int(1))
    max_queue: int = _f(_COUNT)
    max_long_duration_s: float | None = _f(_float(0.0, above=True), None)


@struct
class QueueEntry(Struct):
    id: str = _f(_ID)
    type: str = _f(_NAME)
    state: str = _f(_choice("queued", "running"))
    position: int = _f(_COUNT)
    elapsed_s: float = _f(_SECONDS)
    own: bool = _f(_bool)
    mode: str | None = _f(_choice("long", "endless"), None)
    window: int | None = _f(_COUNT, None)


@struct
class ReplicaInfo(Struct):
    """An engine replica of a daemon started with `--replicas` (Ray Serve, docs/SCALE.md)."""

    id: str = _f(_ID)
    state: str = _f(_choice("alive", "dead"))
    pid: int | None = _f(_COUNT, None)
    running: int = _f(_COUNT)
    batches: int = _f(_COUNT)
    deaths: int = _f(_COUNT)


@struct
class ModelInfo(Struct):
    name: str = _f(_MODEL)
    loaded: bool = _f(_bool)
    segment_s: float = _f(_float(0.0, above=True))
    sample_rate: int = _f(_RATE)
    expires_in_s: float | None = _f(_SECONDS, None)


# --- client -> daemon ----------------------------------------------------------------------------------------
@struct
class Hello(Request):
    TYPE = "hello"
    client: str = _f(_NAME)
    capabilities: tuple[str, ...] = _f(_list(_NAME, 0, 32), ())


@struct
class Render(Request):
    """Options shared by generate, inpaint and continue."""

    preset: str = _f(_NAME, "balanced")
    params: DecodeParams = _f(_struct(DecodeParams), DecodeParams())
    seed: int | None = _f(_int(0, MAX_REQUEST_SEED), None)
    variations: int = _f(_int(1, MAX_VARIATIONS), 1)
    stream: Stream = _f(_struct(Stream), Stream())
    format: str = _f(_FORMAT, "f32")
    chunk_s: float = _f(_float(0.1, MAX_DURATION_S), 1.0)
    model: str | None = _f(_MODEL, None)
    rescore: float | None = _f(_float(0.0, 1.0), None)

    @property
    def outputs(self) -> int:
        return self.variations


@struct
class Generate(Render):
    TYPE = "generate"
    prompt: str | None = _f(_PROMPT, None)
    prompts: tuple[str, ...] | None = _f(_list(_PROMPT, 1, MAX_PROMPTS), None)
    duration_s: float | None = _f(_float(0.0, MAX_LONG_DURATION_S, above=True), None)
    loudness: float | None = _f(_float(-70.0, 0.0), None)
    normalize: bool = _f(_bool, True)
    hybrid_s: float | None = _f(_float(0.0, MAX_DURATION_S, above=True), None)
    overlap_s: float | None = _f(_float(0.0, MAX_DURATION_S, above=True), None)
    endless: bool = _f(_bool, False)

    @property
    def all_prompts(self) -> tuple[str, ...]:
        return self.prompts if self.prompts is not None else (self.prompt or "",)

    @property
    def outputs(self) -> int:
        return len(self.all_prompts) * self.variations

    def _check_whole(self, path: str) -> None:
        if (self.prompt is None) == (self.prompts is None):
            _fail("prompt", "give exactly one of prompt and prompts")
        if self.outputs > MAX_OUTPUTS:
            _fail("variations", f"len(prompts) * variations must be at most {MAX_OUTPUTS}, got {self.outputs}")
        if self.hybrid_s is not None:
            if self.endless:
                _fail("hybrid_s", "an endless request cannot be hybrid")
            if self.duration_s is not None and self.hybrid_s >= self.duration_s:
                _fail("hybrid_s", f"must be shorter than duration_s ({self.duration_s:g} s), got {self.hybrid_s:g}")


@struct
class Inpaint(Render):
    """The region is [start_s, end_s), or [start_bar, end_bar) bars at `bpm` counted from `downbeat_s`."""

    TYPE = "inpaint"
    source: Source = _f(_struct(Source))
    start_s: float | None = _f(_SECONDS, None)
    end_s: float | None = _f(_SECONDS, None)
    prompt: str = _f(_PROMPT)
    start_bar: float | None = _f(_SECONDS, None)
    end_bar: float | None = _f(_SECONDS, None)
    bpm: float | None = _f(_float(0.0, 999.0, above=True), None)
    beats_per_bar: int = _f(_int(1, 32), 4)
    downbeat_s: float = _f(_SECONDS, 0.0)

    def region_s(self, sample_rate: int) -> tuple[float, float]:
        """The region in seconds. In bars each edge is a whole sample at `sample_rate`, rounded half up from
        the exact value (decimal bpm as written): downbeat + bars * beats_per_bar * 60 / bpm."""
        if self.start_bar is None:
            return self.start_s, self.end_s
        bar = bar_seconds(self.bpm, self.beats_per_bar) * sample_rate
        down = Fraction(str(self.downbeat_s)) * sample_rate
        edge = [math.floor(down + Fraction(str(b)) * bar + Fraction(1, 2)) for b in (self.start_bar, self.end_bar)]
        return edge[0] / sample_rate, edge[1] / sample_rate

    def _check_whole(self, path: str) -> None:
        seconds, bars = (self.start_s, self.end_s), (self.start_bar, self.end_bar, self.bpm)
        if any(v is not None for v in bars):
            if any(v is not None for v in seconds):
                _fail("start_s", "give the region in seconds (start_s, end_s) or in bars (start_bar, end_bar, bpm)")
            if any(v is None for v in bars):
                _fail(next(n for n, v in zip(("start_bar", "end_bar", "bpm"), bars, strict=True) if v is None),
                      "is required with a region in bars (start_bar, end_bar, bpm)")
            if self.end_bar <= self.start_bar:
                _fail("end_bar", f"the region must end after it starts (bars {self.start_bar:g} to "
                      f"{self.end_bar:g})", ErrorCode.INVALID_REGION)
            return
        if any(v is None for v in seconds):
            _fail("start_s" if self.start_s is None else "end_s", "is required (or give start_bar, end_bar, bpm)")
        if self.end_s < self.start_s:
            _fail("end_s", f"the region ends ({self.end_s:g} s) before it starts ({self.start_s:g} s)",
                  ErrorCode.INVALID_REGION)
        if self.end_s - self.start_s < MIN_REGION_S - 1e-9:
            _fail("end_s", f"the region must be at least {MIN_REGION_S} s long", ErrorCode.INVALID_REGION)
        if self.source.audio is not None and self.end_s > self.source.audio.duration_s + 1e-9:
            _fail("end_s", f"lies beyond the end of the clip ({self.source.audio.duration_s:g} s)",
                  ErrorCode.INVALID_REGION)


@struct
class Continue(Render):
    TYPE = "continue"
    source: Source = _f(_struct(Source))
    prompt: str = _f(_PROMPT)
    duration_s: float | None = _f(_float(0.0, MAX_SOURCE_S, above=True), None)  # seconds appended

    def _check_whole(self, path: str) -> None:
        if self.duration_s is not None and self.duration_s < MIN_REGION_S - 1e-9:
            _fail("duration_s", f"a continuation adds at least {MIN_REGION_S} s, got {self.duration_s:g}",
                  ErrorCode.INVALID_REGION)


@struct
class Cancel(Request):
    TYPE = "cancel"
    target: str = _f(_ID)


@struct
class SetPrompt(Request):
    TYPE = "set_prompt"
    target: str = _f(_ID)
    prompt: str = _f(_PROMPT)


@struct
class Status(Request):
    TYPE = "status"


@struct
class Models(Request):
    TYPE = "models"


@struct
class Load(Request):
    TYPE = "load"
    model: str = _f(_MODEL)
    keep_alive_s: float | None = _f(_float(), None)


@struct
class Unload(Request):
    TYPE = "unload"
    model: str = _f(_MODEL)


@struct
class Ping(Request):
    TYPE = "ping"
    token: Any = _f(_scalar, None)


# --- daemon -> client ----------------------------------------------------------------------------------------
@struct
class Welcome(Event):
    TYPE = "welcome"
    daemon_version: str = _f(_NAME)
    protocol_version: int = _f(_int(1))
    models: tuple[str, ...] = _f(_list(_MODEL, 0, 64))
    default_model: str | None = _f(_MODEL, None)
    presets: tuple[str, ...] = _f(_list(_NAME, 0, 64))
    limits: Limits = _f(_struct(Limits))
    sample_rate: int = _f(_RATE)
    frame_rate: int = _f(_int(1, 1000))
    rescorer: str | None = _f(_MODEL, None)


@struct
class Accepted(Event):
    TYPE = "accepted"
    queue_position: int = _f(_COUNT)
    outputs: int = _f(_int(1))
    seed: int = _f(_SEED)


@struct
class Progress(Event):
    TYPE = "progress"
    step: int = _f(_int(1))
    total: int = _f(_int(1))
    stage: int = _f(_int(0, 3))
    stage_step: int = _f(_int(1))
    stage_steps: int = _f(_int(1))
    elapsed_s: float = _f(_SECONDS)
    window: int | None = _f(_COUNT, None)

    def _check_whole(self, path: str) -> None:
        if self.step > self.total:
            _fail("step", f"must not exceed total ({self.total}), got {self.step}")
        if self.stage_step > self.stage_steps:
            _fail("stage_step", f"must not exceed stage_steps ({self.stage_steps}), got {self.stage_step}")


@struct
class AudioChunk(Event):
    TYPE = "audio"
    data: bytes = _f(_bin)
    format: str = _f(_FORMAT)
    sample_rate: int = _f(_RATE)
    channels: int = _f(_int(1, 2))
    variation: int = _f(_COUNT)
    seq: int = _f(_COUNT)
    last: bool = _f(_bool)
    start_s: float = _f(_SECONDS)

    def _check_whole(self, path: str) -> None:
        _pcm_frames("data", self.data, self.format, self.channels, ErrorCode.INVALID_FIELD)


@struct
class Preview(AudioChunk):
    TYPE = "preview"
    codebooks: int = _f(_int(1, 32))


@struct
class Done(Event):
    TYPE = "done"
    seed: int = _f(_SEED)
    seeds: tuple[int, ...] = _f(_list(_SEED, 1, 1024))
    frames: int = _f(_COUNT)
    duration_s: float = _f(_SECONDS)
    sample_rate: int = _f(_RATE)
    timings: dict[str, float] = _f(_map(_SECONDS), factory=dict)
    batch_size: int = _f(_int(1))
    model: str = _f(_MODEL)
    time_to_first_audio_s: float | None = _f(_SECONDS, None)
    windows: int | None = _f(_int(1), None)


@struct
class Window(Event):
    TYPE = "window"
    window: int = _f(_COUNT)
    prompt: str | None = _f(_PROMPT, None)
    seed: int = _f(_SEED)
    start_s: float = _f(_SECONDS)
    duration_s: float = _f(_SECONDS)
    elapsed_s: float = _f(_SECONDS)


@struct
class Cancelled(Event):
    TYPE = "cancelled"
    by: str | None = _f(_ID, None)


@struct
class Error(Event):
    TYPE = "error"
    id: str | None = _f(_ID, None)
    code: ErrorCode = _f(_code)
    message: str = _f(_str(0, 1000))
    details: dict[str, Any] = _f(_map(_detail), factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """`id` is always present, nil when unknown (PROTOCOL.md §4), so every decoder sees the key."""
        d = super().to_dict()
        return {"v": d.pop("v"), "type": d.pop("type"), "id": d.pop("id", None), **d}

    @classmethod
    def from_exception(cls, exc: ProtocolError, request_id: str | None = None) -> Error:
        return cls(id=request_id or exc.request_id, code=exc.code, message=exc.message, details=exc.details)

    def to_exception(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, request_id=self.id, details=self.details)


@struct
class Pong(Event):
    TYPE = "pong"
    token: Any = _f(_scalar, None)
    time: float = _f(_SECONDS)


@struct
class StatusReply(Event):
    TYPE = "status_reply"
    model: str | None = _f(_MODEL, None)
    device: str = _f(_str(1, 128))
    memory: dict[str, int] = _f(_map(_COUNT), factory=dict)
    queue: tuple[QueueEntry, ...] = _f(_list(_struct(QueueEntry), 0, 4096), ())
    running: int = _f(_COUNT)
    recent_timings: dict[str, float] = _f(_map(_SECONDS), factory=dict)
    uptime_s: float = _f(_SECONDS)
    last_step_at: float | None = _f(_SECONDS, None)
    replicas: tuple[ReplicaInfo, ...] = _f(_list(_struct(ReplicaInfo), 0, 4096), ())


@struct
class ModelsReply(Event):
    TYPE = "models_reply"
    models: tuple[ModelInfo, ...] = _f(_list(_struct(ModelInfo), 0, 64))
    default_model: str | None = _f(_MODEL, None)


@struct
class LoadReply(Event):
    TYPE = "load_reply"
    model: str = _f(_MODEL)
    load_s: float = _f(_SECONDS)


@struct
class UnloadReply(Event):
    TYPE = "unload_reply"
    model: str = _f(_MODEL)


@struct
class CancelReply(Event):
    TYPE = "cancel_reply"
    target: str = _f(_ID)
    state: str = _f(_choice("queued", "running"))


@struct
class SetPromptReply(Event):
    TYPE = "set_prompt_reply"
    target: str = _f(_ID)
    window: int = _f(_COUNT)


# --- registry ------------------------------------------------------------------------------------------------
MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType({cls.TYPE: cls for cls in (
    Hello, Generate, Inpaint, Continue, Cancel, SetPrompt, Status, Models, Load, Unload, Ping,
    Welcome, Accepted, Progress, Preview, AudioChunk, Window, Done, Cancelled, Error, Pong,
    StatusReply, ModelsReply, LoadReply, UnloadReply, CancelReply, SetPromptReply,
)})

# The one terminal message a request ends with when it succeeds; `error` ends any request.
REPLY_TYPES: Mapping[str, str] = MappingProxyType({
    "hello": "welcome", "generate": "done", "inpaint": "done", "continue": "done", "cancel": "cancel_reply",
    "set_prompt": "set_prompt_reply",
    "status": "status_reply", "models": "models_reply", "load": "load_reply", "unload": "unload_reply",
    "ping": "pong",
})
TERMINAL_TYPES = frozenset({*REPLY_TYPES.values(), "cancelled", "error"})


def is_terminal(msg: Message | str) -> bool:
    """True for the last message a request gets (its reply, `done`, `cancelled` or `error`)."""
    return (msg if isinstance(msg, str) else msg.TYPE) in TERMINAL_TYPES
