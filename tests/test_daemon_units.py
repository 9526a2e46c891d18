"""Unit tests of the daemon's pure parts: scheduler, path policy and output folder, keys and bind rules, the
engine-error table, keep-alive, chunking. Plus one in-process CURVE round trip."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from clients.output_dir import OutputDir
from daemon import keys, render
from daemon.errors import to_protocol_error
from daemon.files import PathPolicy
from daemon.models import ModelManager
from daemon.scheduler import Scheduler, State, Ticket
from magnet_rt.errors import CheckpointError, InvalidAudio, InvalidParams, InvalidRegion
from magnet_rt.presets import UnknownPreset
from protocol import DecodeParams, ErrorCode, Generate, Ping, ProtocolError, pack, pcm_decode, unpack


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ticket(rid: str, key=("m", 50), rows: int = 1, client: bytes = b"A", prepared: bool = True) -> Ticket:
    return Ticket(client, rid, "generate", "m", rows=rows, key=key, prepared=prepared)


# ---- scheduler ------------------------------------------------------------------------------------------------
def test_batches_take_the_head_and_compatible_followers_up_to_max_rows():
    s = Scheduler(max_queue=10, max_batch=4)
    for t in [ticket("a"), ticket("b", key=("m", 99)), ticket("c", rows=2), ticket("d", rows=2), ticket("e")]:
        s.submit(t)
    batch = s.next_batch(0)
    assert [t.rid for t in batch] == ["a", "c", "e"]  # d would make 5 rows; b has another key
    assert {t.state for t in batch} == {State.RUNNING} and {t.batch_size for t in batch} == {3}
    assert [t.rid for t in s.next_batch(0)] == ["b"]
    assert [t.rid for t in s.next_batch(0)] == ["d"]
    assert s.next_batch(0) == []


def test_a_request_wider_than_max_batch_runs_alone_and_unkeyed_tickets_never_batch():
    s = Scheduler(max_batch=2)
    s.submit(ticket("wide", rows=8))
    s.submit(ticket("x"))
    assert [t.rid for t in s.next_batch(0)] == ["wide"]
    s.submit(Ticket(b"A", "load", "load", "m"))
    s.submit(Ticket(b"A", "load2", "load", "m"))
    assert [t.rid for t in s.next_batch(0)] == ["x"]
    assert [t.rid for t in s.next_batch(0)] == ["load"]


def test_unprepared_head_blocks_picking_until_prepared():
    s = Scheduler()
    t = ticket("inp", key=None, prepared=False)
    s.submit(t)
    assert s.next_batch(0) == [] and s.unprepared() == [t]
    s.set_prepared(t, ("m", 60))
    assert s.next_batch(0) == [t]


def test_bounded_queue_and_duplicate_ids():
    s = Scheduler(max_queue=2)
    s.submit(ticket("a"))
    with pytest.raises(ProtocolError) as e:
        s.submit(ticket("a"))
    assert e.value.code == ErrorCode.DUPLICATE_ID and e.value.details == {"id": "a"}
    s.submit(ticket("a", client=b"B"))  # ids are per client
    with pytest.raises(ProtocolError) as e:
        s.submit(ticket("c"))
    assert e.value.code == ErrorCode.BUSY and e.value.details == {"queue": 2, "max_queue": 2}
    s.next_batch(0)  # running requests do not count against the queue
    assert s.submit(ticket("c")) == 0


def test_cancel_queued_running_and_finish_outcomes():
    s = Scheduler()
    run, wait = ticket("run"), ticket("wait", key=("other",))
    s.submit(run)
    s.submit(wait)
    s.next_batch(0)
    assert s.cancel(b"A", "wait", by="c1") == (State.QUEUED, wait)
    assert wait.state == State.FINISHED and s.finish(wait) == "gone"  # the caller already answered it
    assert s.cancel(b"B", "run") == (None, None)  # only the owner can cancel
    assert s.cancel(b"A", "run", by="c2") == (State.RUNNING, run)
    assert run.cancel_requested and run.cancelled_by == "c2"
    assert s.finish(run) == "cancelled"
    assert s.cancel(b"A", "run") == (None, None)  # ended: not_found
    ok = ticket("ok")
    s.submit(ok)
    s.next_batch(0)
    assert s.finish(ok) == "ok" and s.idle()


def test_client_gone_and_close_drain_queue_and_flag_running():
    s = Scheduler()
    mine = [ticket("r"), ticket("q", key=("x",)), ticket("o", client=b"B", key=("y",))]
    for t in mine:
        s.submit(t)
    s.next_batch(0)
    assert s.cancel_client(b"A") == [mine[1]]
    assert mine[0].cancel_requested and mine[0].cancelled_by is None
    assert [t.rid for t in s.close()] == ["o"]
    with pytest.raises(ProtocolError) as e:
        s.submit(ticket("late"))
    assert e.value.code == ErrorCode.SHUTTING_DOWN
    assert s.next_batch(0) is None  # the worker stops once it has finished the running batch
    assert s.finish(mine[0]) == "cancelled"


def test_stale_clients_are_those_running_and_silent():
    clock = Clock()
    s = Scheduler(clock=clock)
    s.touch(b"A")
    s.touch(b"B")
    s.submit(ticket("a"))
    s.submit(ticket("b", client=b"B", key=("q",)))
    s.next_batch(0)  # A's request runs, B's waits
    clock.t += 31
    assert s.stale_clients(30) == [b"A"]
    s.touch(b"A")
    assert s.stale_clients(30) == []


def test_recent_timings_are_medians():
    s = Scheduler()
    for v in (1.0, 3.0, 2.0):
        s.record_timings({"total": v})
    assert s.recent_timings() == {"total": 2.0}


def test_next_batch_wakes_on_submit():
    s = Scheduler()
    got = []
    th = threading.Thread(target=lambda: got.append(s.next_batch(timeout=10)))
    th.start()
    s.submit(ticket("a"))
    th.join(5)
    assert [t.rid for t in got[0]] == ["a"]


# ---- files ---------------------------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    sf.write(allowed / "a.wav", np.zeros((800, 2), np.float32), 8000)
    sf.write(outside / "b.wav", np.zeros(800, np.float32), 8000)
    (allowed / "sub").mkdir()
    os.symlink(allowed / "a.wav", allowed / "sub" / "inside-link.wav")
    os.symlink(outside / "b.wav", allowed / "out-link.wav")
    os.symlink(outside, allowed / "out-dir")
    return allowed, outside


def forbidden(policy: PathPolicy, path: str) -> None:
    with pytest.raises(ProtocolError) as e:
        policy.resolve(path)
    assert e.value.code == ErrorCode.FORBIDDEN_PATH


def test_path_policy(folders):
    allowed, outside = folders
    p = PathPolicy([allowed])
    audio, sr = p.read_audio(str(allowed / "a.wav"), max_s=10)
    assert audio.shape == (2, 800) and sr == 8000
    assert p.resolve(str(allowed / "sub" / "inside-link.wav")) == os.path.realpath(allowed / "a.wav")
    for bad in (str(outside / "b.wav"), str(allowed / "out-link.wav"), str(allowed / "out-dir" / "b.wav"),
                f"{allowed}/../outside/b.wav", f"{allowed}/sub/../a.wav", "a.wav", str(allowed), "/dev/null"):
        forbidden(p, bad)
    forbidden(PathPolicy([]), str(allowed / "a.wav"))  # no --allow-dir: no paths at all
    with pytest.raises(ProtocolError) as e:
        p.read_audio(str(allowed / "a.wav"), max_s=0.05)
    assert e.value.code == ErrorCode.INVALID_AUDIO
    (allowed / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(ProtocolError) as e:
        p.read_audio(str(allowed / "junk.wav"), max_s=10)
    assert e.value.code == ErrorCode.INVALID_AUDIO


def test_output_dir_writes_atomically_and_cleans_up(tmp_path):
    out = OutputDir(tmp_path / "out", ttl_s=60)
    path = out.write_wav(np.full((1, 400), 0.25, np.float32), 16000, name_hint="take/1")
    assert os.path.isabs(path) and path.endswith(".wav") and "/" not in os.path.basename(path)[:-4]
    data, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and np.all(data == 0.25)
    keep = tmp_path / "out" / "notes.txt"
    keep.write_text("not ours")
    assert out.cleanup(now=time.time() + 30) == 0
    assert out.cleanup(now=time.time() + 120) == 1 and not os.path.exists(path) and keep.exists()


# ---- keys, bind rules, CLI --------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.0.0.1:*", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/magnet.sock", True), ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False), ("tcp://192.168.1.4:5555", False), ("tcp://eth0:5555", False)])
def test_is_local_endpoint(endpoint, local):
    assert keys.is_local_endpoint(endpoint) is local


def test_non_loopback_bind_needs_curve_or_insecure(capsys):
    from daemon.server import main
    with pytest.raises(SystemExit) as e:
        main(["--bind", "tcp://0.0.0.0:5555"])
    assert e.value.code == 2 and "--curve-secret" in capsys.readouterr().err


def test_keys_main_creates_a_pair_and_refuses_to_overwrite(tmp_path, capsys):
    assert keys.main([str(tmp_path / "k")]) == 0
    public, secret = keys.load_server_secret(tmp_path / "k" / "server.key_secret")
    assert len(public) == 40 and len(secret) == 40
    assert os.stat(tmp_path / "k" / "server.key_secret").st_mode & 0o077 == 0
    assert keys.main([str(tmp_path / "k")]) == 1 and "--force" in capsys.readouterr().err
    with pytest.raises(ValueError):
        keys.load_server_secret(tmp_path / "k" / "server.key")


# ---- the error table, render helpers --------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "code"), [
    (UnknownPreset("x"), "unknown_preset"), (InvalidParams("x"), "invalid_field"),
    (InvalidAudio("x"), "invalid_audio"), (InvalidRegion("x"), "invalid_region"),
    (CheckpointError("x"), "unknown_model"), (RuntimeError("boom"), "internal")])
def test_engine_errors_map_to_protocol_codes(exc, code):
    err = to_protocol_error(exc, "r1", field="f", preset="p", model="m")
    assert err.code == code and err.request_id == "r1"
    assert "boom" not in err.message  # internal details stay in the log


def test_chunks_cover_the_output_exactly():
    x = np.arange(10, dtype=np.float32)[None] / 10
    parts = list(render.chunks(x, 10, 0.4, "f32"))  # 4 + 4 + 2 samples
    assert [(s, st, last) for s, st, last, _ in parts] == [(0, 0.0, False), (1, 0.4, False), (2, 0.8, True)]
    assert np.array_equal(np.concatenate([pcm_decode(d, "f32", 1) for *_, d in parts], axis=-1), x)


def test_params_pass_through_to_the_engine():
    assert render.engine_overrides(DecodeParams(top_p=1.0, decoding_steps=(1, 1, 1, 1))) == {
        "top_p": 1.0, "decoding_steps": [1, 1, 1, 1]}


# ---- keep-alive -------------------------------------------------------------------------------------------------
class FakePipe:
    segment_duration, sample_rate, frame_rate = 10.0, 32000, 50
    graphs = None  # no static step graphs

    class device:  # noqa: N801 - stands in for a torch.device
        type = "cpu"


def test_keep_alive(monkeypatch):
    monkeypatch.setattr("daemon.models.warm_up", lambda pipe: 0.0)
    clock = Clock()
    m = ModelManager("tiny-random", keep_alive_s=300, loader=lambda name, device: FakePipe(), clock=clock)
    m.load("tiny-random")
    m.load("facebook/magnet-small-10secs")  # the daemon's keep-alive
    m.load("facebook/magnet-medium-10secs", keep_alive_s=-1)  # forever
    m.load("facebook/magnet-small-30secs", keep_alive_s=0)  # as soon as idle
    assert m.expired(busy=set()) == ["facebook/magnet-small-30secs"]
    assert m.expired(busy={"facebook/magnet-small-30secs"}) == []
    clock.t += 301
    assert m.expired(busy=set()) == ["facebook/magnet-small-10secs", "facebook/magnet-small-30secs"]
    m.touch("facebook/magnet-small-10secs")
    assert m.expired(busy=set()) == ["facebook/magnet-small-30secs"]
    assert m.load("tiny-random") == 0.0 and m.unload("facebook/magnet-small-30secs")
    info = {i.name: i for i in m.info()}
    assert info["tiny-random"].expires_in_s is None and info["facebook/magnet-small-10secs"].expires_in_s == 300
    assert not info["facebook/magnet-small-30secs"].loaded
    assert info["facebook/magnet-medium-30secs"].segment_s == 30  # never loaded: guessed from the name


# ---- in process: CURVE, a dead engine thread ---------------------------------------------------------------
@contextlib.contextmanager
def in_process_daemon(tmp_path_factory, monkeypatch, *argv: str):
    """A Daemon serving on a thread of this process (no signal handlers); stopped like SIGTERM would."""
    from daemon.server import Daemon, build_parser

    monkeypatch.setenv("MAGNET_RT_CACHE", str(tmp_path_factory.getbasetemp() / "magnet-rt-cache"))  # one build
    d = Daemon(build_parser().parse_args(["--bind", "tcp://127.0.0.1:*", "--device", "cpu", *argv]))
    endpoint = d.open()
    th = threading.Thread(target=d.serve, daemon=True)
    th.start()
    ctx = zmq.Context()
    try:
        yield d, endpoint, ctx, th
    finally:
        d.signals = 1
        th.join(30)
        d.close()
        ctx.destroy(linger=0)
    assert not th.is_alive()


@pytest.mark.slow
def test_curve_server_answers_only_clients_that_know_its_key(tmp_path, tmp_path_factory, monkeypatch):
    public_file, secret_file = keys.create_server_keys(tmp_path / "keys")
    curve = ("--curve-secret", str(secret_file))
    with in_process_daemon(tmp_path_factory, monkeypatch, *curve) as (_, endpoint, ctx, _th):
        server_public, _ = zmq.auth.load_certificate(str(public_file))
        good = ctx.socket(zmq.DEALER)
        good.curve_serverkey = server_public
        good.curve_publickey, good.curve_secretkey = zmq.curve_keypair()
        good.connect(endpoint)
        good.send(pack(Ping(id="p")))
        assert good.poll(10_000) and unpack(good.recv()).TYPE == "pong"
        plain = ctx.socket(zmq.DEALER)
        plain.connect(endpoint)
        plain.send(pack(Ping(id="p")))
        assert not plain.poll(500)  # no CURVE handshake: never reaches the daemon


@pytest.mark.slow
def test_a_dead_engine_thread_answers_its_requests_and_stops_the_daemon(tmp_path_factory, monkeypatch):
    def crash(self, batch):
        raise RuntimeError("simulated engine-thread bug")

    monkeypatch.setattr("daemon.worker.Worker._render", crash)
    with in_process_daemon(tmp_path_factory, monkeypatch) as (d, endpoint, ctx, serving):
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
        sock.send(pack(Generate(id="g", prompt="x", duration_s=0.2)))
        replies = []
        while not replies or replies[-1].TYPE not in ("error", "done"):
            assert sock.poll(10_000), replies
            replies.append(unpack(sock.recv()))
        assert [m.TYPE for m in replies] == ["accepted", "error"] and replies[-1].code == "internal"
        serving.join(10)  # the loop ends by itself once it sees the engine thread gone
        assert not serving.is_alive() and d.failed
