"""Tests of protocol/: round trips, validation codes, hostile frames, PCM, and PROTOCOL.md against the code."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import protocol as p
from protocol import ErrorCode
from protocol import ErrorCode as E

DOC = (Path(p.__file__).parent / "PROTOCOL.md").read_text(encoding="utf-8")
PCM = p.pcm_encode(np.array([0.0, 0.5, -0.5, 0.25], dtype=np.float32), "s16")  # 4 frames mono s16
CLIP = p.AudioData(data=p.pcm_encode(np.zeros(8000, np.float32), "s16"), sample_rate=8000, channels=1,
                   format="s16")  # 1 s

SAMPLES: dict[str, p.Message] = {m.TYPE: m for m in [
    p.Hello(id="a", client="test", capabilities=("x",)),
    p.Generate(id="a", prompts=("one", "two"), duration_s=5, seed=3, variations=2, preset="fast",
               params=p.DecodeParams(decoding_steps=(20, 10, 10, 10), span_arrangement="stride1",
                                     span_scoring="prod", use_sampling=True, temperature=3.0,
                                     anneal_temperature=False, top_p=0.9, top_k=0, max_cfg_coef=10.0,
                                     min_cfg_coef=1.0),
               stream=p.Stream(progress=False, preview=True, audio=False), format="s16", chunk_s=0.5,
               model="m", loudness=-14.0),
    p.Inpaint(id="a", source=p.Source(audio=CLIP), start_s=0.25, end_s=0.5, prompt="fill"),
    p.Continue(id="a", source=p.Source(path="/music/a.wav"), prompt="more", duration_s=10),
    p.Cancel(id="a", target="b"),
    p.SetPrompt(id="a", target="b", prompt="now with strings"),
    p.Status(id="a"),
    p.Models(id="a"),
    p.Load(id="a", model="m", keep_alive_s=-1),
    p.Unload(id="a", model="m"),
    p.Ping(id="a", token=b"\x01\x02"),
    p.Welcome(id="a", daemon_version="0.1.0", protocol_version=1, models=("m",), default_model="m",
              presets=("balanced",), limits=p.Limits(max_message_bytes=1 << 26, max_duration_s=30,
                                                     max_prompts=16, max_variations=8, max_outputs=16,
                                                     max_queue=8),
              sample_rate=32000, frame_rate=50),
    p.Accepted(id="a", queue_position=2, outputs=4, seed=9),
    p.Progress(id="a", step=21, total=50, stage=1, stage_step=1, stage_steps=10, elapsed_s=0.5),
    p.Preview(id="a", data=PCM, format="s16", sample_rate=32000, channels=1, variation=0, seq=0, last=True,
              start_s=0, codebooks=2),
    p.AudioChunk(id="a", data=PCM, format="s16", sample_rate=32000, channels=2, variation=1, seq=3,
                 last=False, start_s=3.0),
    p.Done(id="a", seed=9, seeds=(9, 10), frames=500, duration_s=10, sample_rate=32000,
           timings={"total": 1.5}, batch_size=2, model="m"),
    p.Cancelled(id="a", by="c"),
    p.Error(id=None, code=E.BUSY, message="full", details={"queue": 8, "nested": [1, {"x": b"y"}]}),
    p.Pong(id="a", token="t", time=1.7e9),
    p.StatusReply(id="a", model="m", device="cpu", memory={"total": 10},
                  queue=(p.QueueEntry(id="a", type="generate", state="running", position=0, elapsed_s=1,
                                      own=True),),
                  running=1, recent_timings={"total": 2.0}, uptime_s=5, last_step_at=1.7e9),
    p.ModelsReply(id="a", models=(p.ModelInfo(name="m", loaded=True, segment_s=10, sample_rate=32000,
                                              expires_in_s=300),), default_model="m"),
    p.LoadReply(id="a", model="m", load_s=2.5),
    p.UnloadReply(id="a", model="m"),
    p.CancelReply(id="a", target="b", state="queued"),
    p.SetPromptReply(id="a", target="b", window=3),
    p.Window(id="a", window=2, prompt="p", seed=5, start_s=14.0, duration_s=7.0, elapsed_s=3.5),
]}


def wire(msg: p.Message, **changes: Any) -> dict[str, Any]:
    """The message's map with some keys replaced (a value of ... deletes the key)."""
    d = msg.to_dict()
    for key, value in changes.items():
        node, *path = key.split("__")
        target = d
        for part in [node, *path][:-1]:
            target = target.setdefault(part, {})
        if value is ...:
            target.pop([node, *path][-1], None)
        else:
            target[[node, *path][-1]] = value
    return d


def raises(data: dict[str, Any] | bytes, code: ErrorCode, field: str | None = None) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.unpack(data if isinstance(data, bytes) else msgpack.packb(data, use_bin_type=True))
    exc = info.value
    assert exc.code == code, exc
    if field is not None:
        assert exc.details.get("field") == field, exc
        assert field in exc.message
    return exc


# --- round trips -------------------------------------------------------------------------------------------------
def test_samples_cover_every_message_type() -> None:
    assert set(SAMPLES) == set(p.MESSAGE_TYPES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    msg = SAMPLES[name]
    assert p.unpack(p.pack(msg)) == msg
    assert type(msg).from_dict(msg.to_dict()) == msg
    assert p.Message.from_dict(msg.to_dict()) == msg
    assert msg.to_dict()["v"] == p.PROTOCOL_VERSION and msg.to_dict()["type"] == name


def test_defaults_nil_and_unknown_fields() -> None:
    msg = p.Message.from_dict({"v": 1, "type": "generate", "id": "x", "prompt": "p", "seed": None,
                               "preset": None, "future_field": {"anything": [1]}})
    assert msg == p.Generate(id="x", prompt="p")
    assert (msg.preset, msg.variations, msg.format, msg.chunk_s) == ("balanced", 1, "f32", 1.0)
    assert msg.stream == p.Stream(progress=True, preview=False, audio=True) and msg.params == p.DecodeParams()
    assert msg.to_dict() == {"v": 1, "type": "generate", "id": "x", "prompt": "p"}  # defaults left out
    assert p.Generate.from_dict({"v": 1, "type": "generate", "id": "x", "prompts": ["a"],
                                 "duration_s": 3}).duration_s == 3.0


def test_outputs_and_terminal_types() -> None:
    assert SAMPLES["generate"].outputs == 4 and SAMPLES["inpaint"].outputs == 1
    requests = {n for n, c in p.MESSAGE_TYPES.items() if issubclass(c, p.Request)}
    assert set(p.REPLY_TYPES) == requests
    assert set(p.REPLY_TYPES.values()) <= set(p.MESSAGE_TYPES)
    terminal = {n for n in p.MESSAGE_TYPES if p.is_terminal(n)}
    assert terminal == set(p.REPLY_TYPES.values()) | {"cancelled", "error"}
    assert not terminal & requests
    assert not any(p.is_terminal(n) for n in ("accepted", "progress", "preview", "audio"))
    assert p.is_terminal(SAMPLES["done"]) and not p.is_terminal(SAMPLES["audio"])


def test_error_conversions_and_help() -> None:
    exc = p.ProtocolError("busy", "queue full", request_id="r", details={"queue": 3})
    err = p.Error.from_exception(exc)
    assert (err.id, err.code, err.details) == ("r", E.BUSY, {"queue": 3})
    back = err.to_exception()
    assert (back.code, back.message, back.request_id) == (E.BUSY, "queue full", "r")
    assert str(back) == "busy: queue full"
    assert set(p.ERROR_HELP) == set(E)
    assert "Wait" in p.explain("busy")
    unknown = p.Message.from_dict({"v": 1, "type": "error", "code": "from_the_future", "message": "m"})
    assert unknown.code == E.INTERNAL and unknown.id is None


# --- validation ------------------------------------------------------------------------------------------------
G = p.Generate(id="r1", prompt="p")
INP = SAMPLES["inpaint"]
CASES = [
    (wire(G, prompt=...), E.INVALID_FIELD, "prompt"),
    (wire(G, prompts=["a"]), E.INVALID_FIELD, "prompt"),
    (wire(G, prompt=3), E.INVALID_FIELD, "prompt"),
    (wire(G, prompt="x" * 2001), E.INVALID_FIELD, "prompt"),
    (wire(G, prompt=..., prompts=[]), E.INVALID_FIELD, "prompts"),
    (wire(G, prompt=..., prompts=["a"] * 17), E.INVALID_FIELD, "prompts"),
    (wire(G, prompt=..., prompts=["a", 1]), E.INVALID_FIELD, "prompts[1]"),
    (wire(G, prompt=..., prompts="abc"), E.INVALID_FIELD, "prompts"),
    (wire(G, prompt=..., prompts=["a"] * 4, variations=5), E.INVALID_FIELD, "variations"),
    (wire(G, duration_s=0), E.INVALID_FIELD, "duration_s"),
    (wire(G, duration_s=600.5), E.INVALID_FIELD, "duration_s"),  # long-form: up to 600 s
    (wire(G, rescore=1.5), E.INVALID_FIELD, "rescore"),
    (wire(G, hybrid_s=0), E.INVALID_FIELD, "hybrid_s"),
    (wire(G, duration_s=4, hybrid_s=4), E.INVALID_FIELD, "hybrid_s"),
    (wire(G, endless=True, hybrid_s=1), E.INVALID_FIELD, "hybrid_s"),
    (wire(G, endless=1), E.INVALID_FIELD, "endless"),
    (wire(G, overlap_s=-1), E.INVALID_FIELD, "overlap_s"),
    (wire(G, duration_s=math.nan), E.INVALID_FIELD, "duration_s"),
    (wire(G, duration_s=math.inf), E.INVALID_FIELD, "duration_s"),
    (wire(G, duration_s=True), E.INVALID_FIELD, "duration_s"),
    (wire(G, duration_s="10"), E.INVALID_FIELD, "duration_s"),
    (wire(G, seed=-1), E.INVALID_FIELD, "seed"),
    (wire(G, seed=2**63), E.INVALID_FIELD, "seed"),
    (wire(G, seed=1.0), E.INVALID_FIELD, "seed"),
    (wire(G, seed=False), E.INVALID_FIELD, "seed"),
    (wire(G, variations=0), E.INVALID_FIELD, "variations"),
    (wire(G, variations=9), E.INVALID_FIELD, "variations"),
    (wire(G, variations=True), E.INVALID_FIELD, "variations"),
    (wire(G, preset=""), E.INVALID_FIELD, "preset"),
    (wire(G, model="m" * 513), E.INVALID_FIELD, "model"),
    (wire(G, format="f64"), E.INVALID_FIELD, "format"),
    (wire(G, chunk_s=0.01), E.INVALID_FIELD, "chunk_s"),
    (wire(G, loudness=3.0), E.INVALID_FIELD, "loudness"),
    (wire(G, params=[1]), E.INVALID_FIELD, "params"),
    (wire(G, params__decoding_steps=[20, 10, 10]), E.INVALID_FIELD, "params.decoding_steps"),
    (wire(G, params__decoding_steps=[20, 0, 10, 10]), E.INVALID_FIELD, "params.decoding_steps[1]"),
    (wire(G, params__decoding_steps=[20, 201, 10, 10]), E.INVALID_FIELD, "params.decoding_steps[1]"),
    (wire(G, params__span_arrangement="overlap"), E.INVALID_FIELD, "params.span_arrangement"),
    (wire(G, params__span_scoring=1), E.INVALID_FIELD, "params.span_scoring"),
    (wire(G, params__use_sampling=1), E.INVALID_FIELD, "params.use_sampling"),
    (wire(G, params__temperature=-0.1), E.INVALID_FIELD, "params.temperature"),
    (wire(G, params__anneal_temperature="yes"), E.INVALID_FIELD, "params.anneal_temperature"),
    (wire(G, params__top_p=1.01), E.INVALID_FIELD, "params.top_p"),
    (wire(G, params__top_k=-1), E.INVALID_FIELD, "params.top_k"),
    (wire(G, params__max_cfg_coef=math.nan), E.INVALID_FIELD, "params.max_cfg_coef"),
    (wire(G, params__min_cfg_coef=-1), E.INVALID_FIELD, "params.min_cfg_coef"),
    (wire(G, stream__preview="yes"), E.INVALID_FIELD, "stream.preview"),
    (wire(INP, start_s=...), E.INVALID_FIELD, "start_s"),
    (wire(INP, start_s=-1), E.INVALID_FIELD, "start_s"),
    (wire(INP, end_s=0.3), E.INVALID_REGION, "end_s"),
    (wire(INP, end_s=1.5), E.INVALID_REGION, "end_s"),
    (wire(INP, prompt=...), E.INVALID_FIELD, "prompt"),
    (wire(INP, source=...), E.INVALID_FIELD, "source"),
    (wire(INP, source={}), E.INVALID_FIELD, "source"),
    (wire(INP, source__path="/a.wav"), E.INVALID_FIELD, "source"),
    (wire(INP, source__audio__sample_rate=7999), E.INVALID_AUDIO, "source.audio.sample_rate"),
    (wire(INP, source__audio__sample_rate=192001), E.INVALID_AUDIO, "source.audio.sample_rate"),
    (wire(INP, source__audio__channels=3), E.INVALID_AUDIO, "source.audio.channels"),
    (wire(INP, source__audio__data=b""), E.INVALID_AUDIO, "source.audio.data"),
    (wire(INP, source__audio__data=b"\x00" * 3), E.INVALID_AUDIO, "source.audio.data"),
    (wire(INP, source__audio__data="text"), E.INVALID_FIELD, "source.audio.data"),
    (wire(INP, source__audio__format="s24"), E.INVALID_FIELD, "source.audio.format"),
    (wire(SAMPLES["continue"], source={"audio": CLIP.to_dict()}, duration_s=0.05), E.INVALID_REGION,
     "duration_s"),  # duration_s is what is added: at least one span
    (wire(SAMPLES["continue"], duration_s=601), E.INVALID_FIELD, "duration_s"),
    (wire(INP, start_s=None, end_s=None, start_bar=1, end_bar=2), E.INVALID_FIELD, "bpm"),
    (wire(INP, start_bar=1, end_bar=2, bpm=120), E.INVALID_FIELD, "start_s"),
    (wire(INP, start_s=None, end_s=None, start_bar=2, end_bar=2, bpm=120), E.INVALID_REGION, "end_bar"),
    (wire(INP, start_s=None, end_s=None, start_bar=1, end_bar=2, bpm=0), E.INVALID_FIELD, "bpm"),
    (wire(INP, end_s=None), E.INVALID_FIELD, "end_s"),
    (wire(SAMPLES["cancel"], target=...), E.INVALID_FIELD, "target"),
    (wire(SAMPLES["load"], keep_alive_s=math.inf), E.INVALID_FIELD, "keep_alive_s"),
    (wire(SAMPLES["load"], model=...), E.INVALID_FIELD, "model"),
    (wire(SAMPLES["ping"], token=[1]), E.INVALID_FIELD, "token"),
    (wire(SAMPLES["ping"], token="x" * 65), E.INVALID_FIELD, "token"),
    (wire(SAMPLES["hello"], capabilities=["ok", ""]), E.INVALID_FIELD, "capabilities[1]"),
    (wire(SAMPLES["progress"], step=51), E.INVALID_FIELD, "step"),
    (wire(SAMPLES["progress"], stage=4), E.INVALID_FIELD, "stage"),
    (wire(SAMPLES["audio"], data=b"\x00" * 6), E.INVALID_FIELD, "data"),
    (wire(SAMPLES["done"], timings={"total": -1.0}), E.INVALID_FIELD, "timings.total"),
    (wire(SAMPLES["status_reply"], queue=[{"id": "a"}]), E.INVALID_FIELD, "queue[0].type"),
    (wire(SAMPLES["cancel_reply"], state="done"), E.INVALID_FIELD, "state"),
    (wire(G, id=...), E.INVALID_FIELD, "id"),
    (wire(G, id=""), E.INVALID_FIELD, "id"),
    (wire(G, id="x" * 65), E.INVALID_FIELD, "id"),
    (wire(G, id=7), E.INVALID_FIELD, "id"),
    (wire(G, v=...), E.INVALID_FIELD, "v"),
    (wire(G, v="1"), E.INVALID_FIELD, "v"),
    (wire(G, v=True), E.INVALID_FIELD, "v"),
    (wire(G, type=...), E.INVALID_FIELD, "type"),
    (wire(G, type=5), E.INVALID_FIELD, "type"),
    (wire(G, v=2), E.UNSUPPORTED_VERSION, None),
    (wire(G, v=0), E.UNSUPPORTED_VERSION, None),
    (wire(G, type="generat"), E.UNKNOWN_TYPE, None),
]


@pytest.mark.parametrize(("data", "code", "field"), CASES)
def test_validation_failure_names_code_and_field(data: dict[str, Any], code: ErrorCode,
                                                 field: str | None) -> None:
    exc = raises(data, code, field)
    readable = isinstance(data.get("id"), str) and 1 <= len(data["id"]) <= 64
    assert exc.request_id == (data["id"] if readable else None)


def test_unsupported_version_lists_supported() -> None:
    assert raises(wire(G, v=9), E.UNSUPPORTED_VERSION).details == {"supported": [1]}


def test_from_dict_of_a_class_checks_the_type() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.Cancel.from_dict(G.to_dict())
    assert info.value.code == E.INVALID_FIELD and info.value.details["field"] == "type"


def test_to_dict_validates_what_we_send() -> None:
    with pytest.raises(p.ProtocolError, match="duration_s"):
        p.Generate(id="x", prompt="p", duration_s=999).to_dict()
    with pytest.raises(p.ProtocolError, match="seeds"):
        dataclasses.replace(SAMPLES["done"], seeds=()).to_dict()
    assert p.Error(code=E.INTERNAL, message="m").to_dict()["code"] == "internal"


def test_pack_refuses_frames_over_the_limit() -> None:
    big = p.AudioChunk(id="a", data=b"\x00" * 4000, format="f32", sample_rate=32000, channels=1, variation=0,
                       seq=0, last=True, start_s=0)
    with pytest.raises(p.ProtocolError) as info:
        p.pack(big, max_size=1000)
    assert info.value.code == E.TOO_LARGE and info.value.request_id == "a"


# --- hostile frames ----------------------------------------------------------------------------------------------
VALID = p.pack(G)
HOSTILE = [
    (b"", E.BAD_REQUEST),
    (b"\xc1", E.BAD_REQUEST),  # never-used msgpack byte
    (b"not msgpack at all", E.BAD_REQUEST),  # a fixint followed by extra data
    (VALID[:-3], E.BAD_REQUEST),  # truncated
    (VALID + b"\x00", E.BAD_REQUEST),  # trailing bytes
    (msgpack.packb([1, 2]), E.BAD_REQUEST),
    (msgpack.packb("generate"), E.BAD_REQUEST),
    (msgpack.packb(None), E.BAD_REQUEST),
    (b"\x81\xa1v\xc6\xff\xff\xff\xff", E.BAD_REQUEST),  # declares a 4 GiB bin
    (b"\xdd\xff\xff\xff\xff", E.BAD_REQUEST),  # declares a 4-billion-item array
    (b"\xdf\xff\xff\xff\xff", E.BAD_REQUEST),  # declares a 4-billion-entry map
    (b"\x91" * 5000 + b"\x00", E.BAD_REQUEST),  # nesting deeper than the decoder's stack
    (b"\x81\xa1v" + b"\x81\xa1a" * 3000 + b"\x00", E.BAD_REQUEST),  # deep maps
    (msgpack.packb(list(range(5000))), E.BAD_REQUEST),  # array over the item limit
    (msgpack.packb({"v": 1, "s": "x" * (2 << 20)}), E.BAD_REQUEST),  # str over 1 MiB
    (b"\x82\xa1v\x01\xa4type\xd6\xff\x00\x00\x00\x01", E.BAD_REQUEST),  # ext (timestamp)
    (b"\x81\xa2\xff\xfe\x01", E.BAD_REQUEST),  # invalid UTF-8 key
    (msgpack.packb({1: 2}), E.BAD_REQUEST),  # int map key
    (msgpack.packb({b"v": 1, b"type": b"ping", b"id": b"x"}, use_bin_type=True), E.INVALID_FIELD),  # bin keys
    (msgpack.packb({"v": 1, "type": "ping", "id": "x", "token": {"deep": [[]]}}), E.INVALID_FIELD),
    (msgpack.packb({"v": 1, "type": "ping", "id": "x", "token": {"deep": [[[[]]]]}}), E.BAD_REQUEST),  # 6 levels
    (msgpack.packb({"v": 1, "type": "ping", "id": "x", "v2": [[[]]]}), None),  # 4 levels, unknown: ignored
    (msgpack.packb({"v": 1, "type": "ping", "id": "x", "v2": [[[[[[[[]]]]]]]]}), E.BAD_REQUEST),  # unknown too
]


@pytest.mark.parametrize(("data", "code"), HOSTILE)
def test_hostile_frames_give_protocol_errors(data: bytes, code: ErrorCode | None) -> None:
    if code is None:
        assert isinstance(p.unpack(data), p.Ping)
    else:
        raises(data, code)


def test_too_large_frame() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.unpack(VALID, max_size=len(VALID) - 1)
    assert info.value.code == E.TOO_LARGE and info.value.details == {"size": len(VALID), "max": len(VALID) - 1}
    assert p.unpack(VALID, max_size=len(VALID)) == G


def test_request_id_is_reported_when_readable() -> None:
    assert raises(wire(G, type="nope"), E.UNKNOWN_TYPE).request_id == "r1"
    assert raises(wire(G, variations=0), E.INVALID_FIELD).request_id == "r1"
    assert raises(b"\xc1", E.BAD_REQUEST).request_id is None


# --- PCM ---------------------------------------------------------------------------------------------------------
def test_pcm_f32_round_trip_and_layout() -> None:
    x = np.array([[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]], dtype=np.float32)  # [C=2, N=3]
    data = p.pcm_encode(x, "f32")
    assert data == np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3], dtype="<f4").tobytes()  # interleaved, LE
    np.testing.assert_array_equal(p.pcm_decode(data, "f32", 2), x)
    mono = p.pcm_decode(p.pcm_encode(x[0]), "f32", 1)
    assert mono.shape == (1, 3) and mono.dtype == np.float32


def test_pcm_s16_quantisation_clipping_and_endianness() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 1000)).astype(np.float32)
    y = p.pcm_decode(p.pcm_encode(x, "s16"), "s16", 2)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - x).max() <= 1 / 32767
    assert p.pcm_encode(np.array([2.0, -3.0, 0.5]), "s16") == np.array([32767, -32767, 16384], "<i2").tobytes()
    assert p.pcm_encode(np.array([1 / 32767]), "s16") == b"\x01\x00"


@pytest.mark.parametrize(("data", "fmt", "channels"), [
    (b"", "f32", 1), (b"\x00" * 6, "f32", 1), (b"\x00" * 6, "s16", 2), (b"\x00" * 4, "s24", 1),
    (b"\x00" * 4, "f32", 3), (np.array([np.nan], "<f4").tobytes(), "f32", 1),
    (np.array([np.inf, 0], "<f4").tobytes(), "f32", 2),
])
def test_pcm_decode_rejects_bad_audio(data: bytes, fmt: str, channels: int) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.pcm_decode(data, fmt, channels)
    assert info.value.code == E.INVALID_AUDIO


def test_pcm_encode_rejects_non_finite_and_bad_shapes() -> None:
    with pytest.raises(p.ProtocolError):
        p.pcm_encode(np.array([0.0, np.nan]), "s16")
    with pytest.raises(ValueError):
        p.pcm_encode(np.zeros((1, 2, 3)), "f32")


# --- PROTOCOL.md against the code ------------------------------------------------------------------------------
def doc_tables() -> dict[str, list[list[str]]]:
    """`### \\`name\\`` heading -> the rows of the table under it (cells stripped), header rows excluded."""
    tables: dict[str, list[list[str]]] = {}
    current = None
    for line in DOC.splitlines():
        if line.startswith("#"):
            m = re.match(r"^### `([^`]+)`", line)
            current = m.group(1) if m else None
            if current is not None:
                assert current not in tables, f"heading {current!r} appears twice"
                tables[current] = []
        elif current and line.startswith("| `"):
            tables[current].append([c.strip() for c in line.strip().strip("|").split("|")])
    return tables


def own_fields(cls: type) -> dict[str, bool]:
    """Field name -> required, without the envelope (and without the render options for Render classes)."""
    base = p.Request if cls is p.Render else p.Render if issubclass(cls, p.Render) else p.Message
    inherited = {f.name for f in dataclasses.fields(base)} if issubclass(cls, p.Message) else set()
    return {f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(cls) if f.name not in inherited}


STRUCTS = (p.Stream, p.DecodeParams, p.Source, p.AudioData, p.Limits, p.QueueEntry, p.ModelInfo, p.ReplicaInfo)


def test_doc_tables_list_exactly_the_dataclass_fields() -> None:
    tables = doc_tables()
    expected = {**{n: c for n, c in p.MESSAGE_TYPES.items()}, "render options": p.Render,
                **{c.__name__: c for c in STRUCTS}}
    assert set(tables) == set(expected)
    for name, cls in expected.items():
        documented = {row[0].strip("`"): row[2].startswith("yes") for row in tables[name]}
        assert documented == own_fields(cls), name


def test_doc_error_table_is_errorcode_and_error_help() -> None:
    section = DOC[DOC.index("## 8. Error catalogue"):DOC.index("## 9.")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    assert [r[0].strip("`") for r in rows] == [c.value for c in E]
    for code, meaning, action, *_ in rows:
        assert (meaning, action) == tuple(p.ERROR_HELP[E(code.strip("`"))]), code


def test_doc_version_and_limits_match_the_code() -> None:
    assert re.findall(r"PROTOCOL_VERSION = (\d+)", DOC) == [str(p.PROTOCOL_VERSION)]
    assert f"| {p.PROTOCOL_VERSION} |" in DOC[DOC.index("## 10. Changelog"):]
    assert f"({p.DEFAULT_MAX_MESSAGE_BYTES} bytes)" in DOC
    assert p.DEFAULT_ENDPOINT in DOC


def doc_examples() -> list[tuple[str, str, str, bytes]]:
    """(section, direction line, literal, bytes) for every ```msgpack block, in order."""
    out, section = [], ""
    for part in re.split(r"(^### .*$)", DOC, flags=re.MULTILINE):
        if part.startswith("### "):
            section = part
            continue
        for block in re.findall(r"^```msgpack\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL):
            lines = block.strip().splitlines()
            cut = lines.index("--")
            out.append((section, lines[0], "\n".join(lines[1:cut]), bytes.fromhex(" ".join(lines[cut + 1:]))))
    return out


def test_doc_hex_dumps_match_the_encoder() -> None:
    examples = doc_examples()
    assert len(examples) >= 15
    assert {p.unpack(data).TYPE for *_, data in examples} >= {
        "generate", "accepted", "progress", "preview", "audio", "done", "inpaint", "cancel", "cancel_reply",
        "cancelled", "error"}
    for _, head, literal, data in examples:
        msg = p.unpack(data)
        assert p.pack(msg) == data, head
        assert ast.literal_eval(literal) == msgpack.unpackb(data), head
        assert head == f"# {'client → daemon' if isinstance(msg, p.Request) else 'daemon → client'} " \
                       f"({len(data)} bytes)"


def test_doc_sequences_end_each_request_with_one_terminal() -> None:
    by_section: dict[str, list[p.Message]] = {}
    for section, *_, data in doc_examples():
        by_section.setdefault(section, []).append(p.unpack(data))
    for section, msgs in by_section.items():
        for rid in {m.id for m in msgs if isinstance(m, p.Request)}:
            replies = [m for m in msgs if m.id == rid and not isinstance(m, p.Request)]
            if replies:
                assert [p.is_terminal(m) for m in replies] == [False] * (len(replies) - 1) + [True], section


def test_frames_over_zeromq_router_dealer() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    try:
        router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        for s in (router, dealer):
            s.linger = 0
            s.rcvtimeo = 5000
        router.setsockopt(zmq.MAXMSGSIZE, p.DEFAULT_MAX_MESSAGE_BYTES)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(p.pack(SAMPLES["inpaint"]))
        ident, frame = router.recv_multipart()
        assert p.unpack(frame) == SAMPLES["inpaint"]
        router.send_multipart([ident, p.pack(p.Error(id="a", code=E.BUSY, message="full"))])
        reply = p.unpack(dealer.recv())
        assert isinstance(reply, p.Error) and p.is_terminal(reply) and reply.to_exception().code == E.BUSY
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("bpm", [90, 123.4, 174])
@pytest.mark.parametrize("rate", [32000, 44100, 48000, 22050])
def test_an_inpaint_region_in_bars_has_exact_sample_edges(bpm, rate):
    """Edges = downbeat + bars * beats * 60 / bpm, exactly, rounded half up to a sample; the engine's
    round(seconds * rate) gives back that sample."""
    from fractions import Fraction

    from magnet_rt.audio import bars_to_samples

    msg = p.Inpaint.from_dict(wire(INP, start_s=None, end_s=None, start_bar=2.5, end_bar=4, bpm=bpm, downbeat_s=0.25))
    start, end = msg.region_s(rate)
    for edge, bars in ((start, Fraction(5, 2)), (end, Fraction(4))):
        exact = Fraction(1, 4) * rate + bars * 4 * 60 * rate / Fraction(str(bpm))
        assert round(edge * rate) == math.floor(exact + Fraction(1, 2))
    no_offset = p.Inpaint.from_dict(wire(INP, start_s=None, end_s=None, start_bar=0, end_bar=3, bpm=bpm))
    assert round(no_offset.region_s(rate)[1] * rate) == bars_to_samples(3, bpm, rate)
    three = p.Inpaint.from_dict(wire(INP, start_s=None, end_s=None, start_bar=0, end_bar=1, bpm=bpm, beats_per_bar=3))
    assert round(three.region_s(rate)[1] * rate) == bars_to_samples(1, bpm, rate, beats_per_bar=3)
    assert p.bar_seconds(bpm) * Fraction(str(bpm)) == 240 and p.bar_seconds(123.4, 3) == Fraction(1800, 1234)  # exact
