"""Property tests: whatever arrives, `unpack` returns a Message or raises ProtocolError, nothing else."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_protocol import SAMPLES  # tests/ is on sys.path (rootdir-relative, no package)

import protocol as p

FRAMES = [p.pack(m) for m in SAMPLES.values()]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
           | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def decode(data: bytes) -> p.Message | p.ProtocolError:
    try:
        msg = p.unpack(data)
    except p.ProtocolError as exc:
        assert isinstance(exc.code, p.ErrorCode) and exc.message
        return exc
    assert p.unpack(p.pack(msg)) == msg  # anything accepted re-encodes to the same message
    return msg


@SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    decode(data)


@SETTINGS
@given(st.sampled_from(FRAMES), st.integers(0, 10_000), st.binary(min_size=1, max_size=8),
       st.sampled_from(["flip", "insert", "delete", "truncate"]))
def test_mutated_valid_frames(frame: bytes, at: int, noise: bytes, how: str) -> None:
    i = at % len(frame)
    mutated = {
        "flip": frame[:i] + bytes([frame[i] ^ noise[0]]) + frame[i + 1:],
        "insert": frame[:i] + noise + frame[i:],
        "delete": frame[:i] + frame[i + len(noise):],
        "truncate": frame[:i],
    }[how]
    decode(mutated)


@SETTINGS
@given(values)
def test_arbitrary_msgpack_values(value: Any) -> None:
    decode(msgpack.packb(value, use_bin_type=True))


@SETTINGS
@given(st.sampled_from(sorted(SAMPLES)), st.data(), values)
def test_one_field_replaced_by_anything(name: str, data: st.DataObject, value: Any) -> None:
    d = SAMPLES[name].to_dict()
    key = data.draw(st.sampled_from(sorted(d) + ["v", "type", "id", "unknown"]))
    d[key] = value
    result = decode(msgpack.packb(d, use_bin_type=True))
    if isinstance(result, p.ProtocolError) and result.code == p.ErrorCode.INVALID_FIELD:
        assert "field" in result.details


@SETTINGS
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 2), st.integers(1, 64)),
                  elements=st.floats(-1, 1, width=32)))
def test_pcm_round_trips(x: np.ndarray) -> None:
    np.testing.assert_array_equal(p.pcm_decode(p.pcm_encode(x, "f32"), "f32", x.shape[0]), x)
    y = p.pcm_decode(p.pcm_encode(x, "s16"), "s16", x.shape[0])
    assert np.abs(y - x).max() <= 1 / 32767
