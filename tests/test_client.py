"""The Python clients against a fake daemon (a ROUTER thread speaking the protocol): Lazy Pirate retries,
typed errors, event order, audio assembly, cancel on close and on Ctrl-C, asyncio parity, CurveZMQ."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
import zmq

import protocol as P
from clients.aio import AsyncMagnetClient
from clients.client import (
    DaemonTimeout,
    DaemonUnavailable,
    MagnetClient,
    RequestCancelled,
    RequestFailed,
    load_server_key,
)
from clients.fakedaemon import FakeDaemon
from magnet_rt.audio import bars_to_samples

T = 0.3  # client timeout in these tests: short, so silence is detected fast


@pytest.fixture
def daemon():
    with FakeDaemon() as d:
        yield d


@pytest.fixture
def client(daemon):
    with MagnetClient(daemon.endpoint, timeout_s=T, retries=3) as c:
        yield c


def dead_endpoint() -> str:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# --- idempotent calls: Lazy Pirate ----------------------------------------------------------------------------
def test_ping_survives_silence_by_reconnecting_and_resending(daemon, client):
    daemon.drop["ping"] = 2  # the daemon ignores the first two pings
    t0 = time.monotonic()
    pong = client.ping(token="t1")
    assert isinstance(pong, P.Pong) and pong.token == "t1"
    pings = [peer for peer, m in zip(daemon.peers, daemon.received, strict=True) if m.TYPE == "ping"]
    assert len(pings) == 3
    assert len(set(pings)) == 3, "each retry must come from a fresh socket (new routing id)"
    assert 2 * T <= time.monotonic() - t0 < 2 * T + 2.0


def test_unavailable_after_bounded_retries_names_the_fix(daemon):
    daemon.mute = True
    with MagnetClient(daemon.endpoint, timeout_s=T, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(DaemonUnavailable) as info:
            c.status()
        elapsed = time.monotonic() - t0
    assert daemon.types() == ["status"] * 3  # 1 + 2 retries, then it gives up
    assert 3 * T <= elapsed < 3 * T + 2.0
    assert "make serve" in str(info.value) and "magnet-rt serve" in str(info.value)


def test_unavailable_without_any_daemon():
    with MagnetClient(dead_endpoint(), timeout_s=0.2, retries=1) as c:
        for call in (c.ping, c.hello, c.models):
            with pytest.raises(DaemonUnavailable, match="magnet-rt serve"):
                call()


def test_replies_and_typed_errors(daemon, client):
    welcome = client.hello()
    assert welcome.protocol_version == P.PROTOCOL_VERSION and "live" in welcome.presets
    assert client.welcome is welcome
    assert client.status().device == "cpu (fake)"
    assert [m.name for m in client.models().models] == ["tiny-random"]
    assert client.load("tiny-random", keep_alive_s=-1).model == "tiny-random"
    assert client.unload("tiny-random").model == "tiny-random"
    with pytest.raises(RequestFailed) as info:
        client.load("nope")
    assert info.value.code == P.ErrorCode.UNKNOWN_MODEL and info.value.details == {"model": "nope"}
    assert not info.value.local
    with pytest.raises(RequestFailed) as info:
        client.cancel("not-running")
    assert info.value.code == P.ErrorCode.NOT_FOUND
    daemon.fail["status"] = ("shutting_down", "bye", {})
    with pytest.raises(RequestFailed) as info:
        client.status()
    assert info.value.code == P.ErrorCode.SHUTTING_DOWN and info.value.message == "bye"
    assert daemon.types().count("status") == 2, "an error reply is an answer: no retry"


# --- generating requests ---------------------------------------------------------------------------------------
def test_generate_streams_events_in_protocol_order(client):
    events = list(client.generate("warm rhodes", duration_s=1.0, seed=7, variations=2, chunk_s=0.3))
    types = [e.TYPE for e in events]
    assert types[0] == "accepted" and types[-1] == "done"
    assert [P.is_terminal(e) for e in events].count(True) == 1
    steps = [e.step for e in events if e.TYPE == "progress"]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == events[1].total
    chunks = [(e.variation, e.seq, e.last) for e in events if e.TYPE == "audio"]
    assert chunks == [(v, s, s == 3) for v in (0, 1) for s in range(4)]  # 1 s in 0.3 s chunks, output by output
    assert types.index("audio") > max(i for i, t in enumerate(types) if t == "progress")
    assert events[-1].seeds == (7, 8)


def test_generate_audio_collects_float32_takes(daemon, client):
    seen = []
    result = client.generate_audio("x", duration_s=1.5, seed=3, variations=2, preset="live",
                                   params={"decoding_steps": [2, 1, 1, 1]}, on_event=lambda e: seen.append(e.TYPE))
    assert len(result.audio) == 2 and result.sample_rate == 32000
    for i, take in enumerate(result.audio):
        assert take.dtype == np.float32 and take.shape == (1, 48000)
        np.testing.assert_array_equal(take, daemon._sine(48000, 1, 3 + i))  # chunks joined in order
    assert result.seeds == [3, 4] and result.seed == 3 and result.batch_size == 1 and "total" in result.timings
    assert seen.count("progress") == 5 and seen[-1] == "done"
    sent = daemon.received[-1]
    assert sent.preset == "live" and sent.params.decoding_steps == (2, 1, 1, 1)


def test_inpaint_and_continue_send_inline_pcm(daemon, client, tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 32000 * 3)).astype(np.float32)
    result = client.inpaint_audio(x, 1.0, 2.0, "fill", sample_rate=32000, seed=2)
    np.testing.assert_array_equal(result.audio[0][:, :32000], x[:, :32000])
    np.testing.assert_array_equal(result.audio[0][:, 64000:], x[:, 64000:])
    assert not np.array_equal(result.audio[0][:, 32000:64000], x[:, 32000:64000])
    longer = client.continue_audio(x, "more", duration_s=4.0, sample_rate=32000)  # 4 s added
    assert longer.audio[0].shape == (1, 7 * 32000)
    np.testing.assert_array_equal(longer.audio[0][:, :96000], x)
    bars = client.inpaint_audio(x, None, None, "fill", sample_rate=32000, start_bar=1, end_bar=2, bpm=174,
                                downbeat_s=0.1)
    a, b = (3200 + bars_to_samples(n, 174, 32000) for n in (1, 2))
    np.testing.assert_array_equal(bars.audio[0][:, :a], x[:, :a])
    np.testing.assert_array_equal(bars.audio[0][:, b:], x[:, b:])


def test_error_reply_raises_request_failed_with_code(daemon, client):
    daemon.fail["generate"] = ("busy", "the queue is full (32 requests)", {"queue": 32, "max_queue": 32})
    stream = client.generate("x", duration_s=1.0)
    with pytest.raises(RequestFailed) as info:
        list(stream)
    assert info.value.code == P.ErrorCode.BUSY and info.value.details["max_queue"] == 32
    assert info.value.request_id == stream.id and isinstance(stream.terminal, P.Error)
    del daemon.fail["generate"]
    with pytest.raises(RequestFailed, match="unknown_preset"):
        client.generate_audio("x", preset="nope")


def test_invalid_arguments_fail_locally_before_sending(daemon, client):
    for kwargs in ({"duration_s": 650.0}, {"variations": 9}, {"params": {"decoding_steps": [1, 2]}},
                   {"prompt": None}):
        with pytest.raises(RequestFailed) as info:
            client.generate(**{"prompt": "x", **kwargs})
        assert info.value.local and info.value.code == P.ErrorCode.INVALID_FIELD
    with pytest.raises(RequestFailed) as info:
        client.inpaint(np.zeros((1, 32000), np.float32), 0.5, 2.0, "x", sample_rate=32000)
    assert info.value.code == P.ErrorCode.INVALID_REGION and info.value.local
    assert daemon.received == []


def test_request_id_given_and_duplicates_refused(daemon, client):
    stream = client.generate("x", duration_s=1.0, request_id="mine")
    assert next(stream).id == "mine"
    with pytest.raises(RequestFailed) as info:
        next(client.generate("y", duration_s=1.0, request_id="mine"))
    assert info.value.code == P.ErrorCode.DUPLICATE_ID and info.value.local
    assert [e.TYPE for e in stream][-1] == "done"
    assert len(client.generate("z").id) == 32  # uuid4 hex by default


def test_interleaved_requests_are_sorted_by_id(daemon, client):
    a = client.generate("a", duration_s=1.0, seed=1)
    b = client.generate("b", duration_s=1.0, seed=2)
    got: dict[str, list[str]] = {a.id: [], b.id: []}
    pending = [a, b]
    while pending:
        for s in list(pending):
            try:
                e = next(s)
            except StopIteration:
                pending.remove(s)
                continue
            assert e.id == s.id
            got[s.id].append(e.TYPE)
            client.ping()  # replies to other requests must not steal or lose events
    assert got[a.id][-1] == got[b.id][-1] == "done"
    assert got[a.id] == got[b.id]


def test_close_cancels_and_waits_for_the_terminal_message(daemon, client):
    daemon.step_delay_s = 0.05
    with client.generate("x", duration_s=2.0) as stream:
        assert next(stream).TYPE == "accepted"
        assert next(stream).TYPE == "progress"
    assert isinstance(stream.terminal, P.Cancelled)
    assert daemon.types()[-1] == "cancel" and daemon.received[-1].target == stream.id
    assert list(stream) == []
    with pytest.raises(RequestCancelled):
        client.collect(_cancel_after_first(client.generate("y", duration_s=2.0)))
    assert client.ping()  # the connection is still usable


def _cancel_after_first(stream):
    next(stream)
    stream.close()
    return stream


def test_keyboard_interrupt_while_waiting_sends_cancel(daemon, client, monkeypatch):
    daemon.step_delay_s = 0.05
    stream = client.generate("x", duration_s=2.0)
    next(stream)
    real_take, calls = client._take, []

    def interrupted_take(rid, timeout_s):
        calls.append(rid)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_take(rid, timeout_s)

    monkeypatch.setattr(client, "_take", interrupted_take)
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert isinstance(stream.terminal, P.Cancelled)
    assert "cancel" in daemon.types()


def test_daemon_silent_after_accept_times_out(daemon):
    daemon.hang_after_accept = True
    with MagnetClient(daemon.endpoint, timeout_s=T, stream_timeout_s=1.0) as c:
        stream = c.generate("x", duration_s=1.0)
        assert next(stream).TYPE == "accepted"
        t0 = time.monotonic()
        with pytest.raises(DaemonTimeout, match="no event"):
            next(stream)  # pings are answered, but nothing comes for 1 s: the cap applies
        assert 1.0 <= time.monotonic() - t0 < 3.0
        stream = c.generate("x", duration_s=1.0)
        assert next(stream).TYPE == "accepted"
        daemon.mute = True  # now the daemon stops answering at all
        t0 = time.monotonic()
        with pytest.raises(DaemonTimeout, match="pings are unanswered"):
            next(stream)
        assert time.monotonic() - t0 < 2 * T + 1.5


def test_generate_without_daemon_is_unavailable_quickly():
    with MagnetClient(dead_endpoint(), timeout_s=T) as c:
        t0 = time.monotonic()
        with pytest.raises(DaemonUnavailable, match="make serve"):
            c.generate_audio("x", duration_s=1.0)
        assert time.monotonic() - t0 < T + 1.0  # not retried: generate is not idempotent


def test_slow_queue_is_kept_alive_by_pings(daemon):
    daemon.queue_delay_s = 4 * T  # nothing but silence for several timeouts after `accepted`
    with MagnetClient(daemon.endpoint, timeout_s=T) as c:
        result = c.generate_audio("x", duration_s=1.0)
    assert result.audio[0].shape == (1, 32000)
    assert daemon.types().count("ping") >= 2
    assert daemon.types().count("generate") == 1  # never resent


# --- CurveZMQ ---------------------------------------------------------------------------------------------------
def test_curve_client_with_server_public_key(tmp_path):
    public, secret = zmq.curve_keypair()
    key_file = tmp_path / "server.key"
    key_file.write_text(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
    bare = tmp_path / "server.pub"
    bare.write_text(public.decode() + "\n")
    assert load_server_key(key_file) == load_server_key(bare) == load_server_key(public.decode()) == public
    with pytest.raises(ValueError):
        load_server_key(tmp_path / "missing.key")
    with FakeDaemon(curve_secret_key=secret) as d:
        for key in (public.decode(), key_file):
            with MagnetClient(d.endpoint, timeout_s=1.0, server_public_key=key) as c:
                assert c.ping().TYPE == "pong"
                assert c.generate_audio("x", duration_s=0.5).audio[0].shape == (1, 16000)
        with MagnetClient(d.endpoint, timeout_s=0.2, retries=0) as plain:  # no key: the handshake fails
            with pytest.raises(DaemonUnavailable):
                plain.ping()


# --- asyncio ------------------------------------------------------------------------------------------------------
def test_async_client_has_the_same_surface_and_results(daemon, client):
    sync_types = [e.TYPE for e in client.generate("x", duration_s=1.0, seed=5, chunk_s=0.5)]
    sync_audio = client.generate_audio("x", duration_s=1.0, seed=5).audio[0]

    async def scenario():
        async with AsyncMagnetClient(daemon.endpoint, timeout_s=T) as ac:
            assert (await ac.hello()).presets == ("balanced", "live")
            assert (await ac.ping("tok")).token == "tok"
            assert (await ac.status()).running == 0
            assert (await ac.models()).default_model == "tiny-random"
            assert (await ac.load("tiny-random")).model == "tiny-random"
            types = [e.TYPE async for e in ac.generate("x", duration_s=1.0, seed=5, chunk_s=0.5)]
            result = await ac.generate_audio("x", duration_s=1.0, seed=5)
            with pytest.raises(RequestFailed) as info:
                await ac.generate_audio("x", preset="nope")
            assert info.value.code == P.ErrorCode.UNKNOWN_PRESET
            with pytest.raises(RequestFailed):
                await ac.cancel("nothing")
            daemon.step_delay_s = 0.05
            async with ac.generate("y", duration_s=2.0) as stream:
                assert (await stream.__anext__()).TYPE == "accepted"
            assert isinstance(stream.terminal, P.Cancelled)
            # two requests at once on one connection, plus pings: the reader routes by id
            daemon.step_delay_s = 0.0
            a, b, pong = await asyncio.gather(ac.generate_audio("a", duration_s=0.5, seed=1),
                                              ac.generate_audio("b", duration_s=0.5, seed=2), ac.ping())
            assert a.seeds == [1] and b.seeds == [2] and pong.TYPE == "pong"
            return types, result

    types, result = asyncio.run(scenario())
    assert types == sync_types
    np.testing.assert_array_equal(result.audio[0], sync_audio)
    assert daemon.types().count("cancel") == 2


def test_async_retries_then_unavailable(daemon):
    async def scenario():
        daemon.drop["ping"] = 1
        async with AsyncMagnetClient(daemon.endpoint, timeout_s=T, retries=2) as ac:
            assert (await ac.ping()).TYPE == "pong"
        async with AsyncMagnetClient(dead_endpoint(), timeout_s=0.2, retries=1) as ac:
            with pytest.raises(DaemonUnavailable, match="magnet-rt serve"):
                await ac.status()
            with pytest.raises(DaemonUnavailable):
                await ac.generate_audio("x")

    asyncio.run(asyncio.wait_for(scenario(), 15))
    pings = [p for p, m in zip(daemon.peers, daemon.received, strict=True) if m.TYPE == "ping"]
    assert len(pings) == 2 and pings[0] != pings[1]


def test_async_task_cancellation_cancels_the_request(daemon):
    daemon.step_delay_s = 0.05

    async def scenario():
        async with AsyncMagnetClient(daemon.endpoint, timeout_s=T) as ac:
            stream = ac.generate("x", duration_s=2.0)

            async def consume():
                async for _ in stream:
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return stream

    stream = asyncio.run(asyncio.wait_for(scenario(), 15))
    assert "cancel" in daemon.types()
    assert isinstance(stream.terminal, P.Cancelled)
