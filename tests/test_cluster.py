"""`magnet-rt serve --replicas 2`: the same protocol with the engine on two Ray Serve replicas (daemon.cluster).

A local Ray on loopback (Ray's single-machine mode), two replicas of tiny-random at half a CPU each, the
daemon as a subprocess on 127.0.0.1 driven by real DEALER sockets. Results are compared byte for byte with
the single daemon's for the same requests and seeds. Every wait has a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

from daemon.testing import Client, DaemonProcess
from protocol import Cancel, DecodeParams, Generate, Status, Stream, is_terminal

pytestmark = pytest.mark.slow

FAST = DecodeParams(decoding_steps=(4, 1, 1, 1))
MID = DecodeParams(decoding_steps=(200, 50, 50, 50))  # long enough to kill a replica while it runs
SLOW = DecodeParams(decoding_steps=(200, 1, 1, 1))
# (id, prompt, duration, params, seed): each its own length, so none shares a batch here or in the single
# daemon (a batch's codec decode may differ in the last bits, PROTOCOL.md §6) and two run at once
REQUESTS = [(f"r{i}", p, d, FAST, 100 + i) for i, (p, d) in
            enumerate([("dusty breakbeat", 0.5), ("warm pads", 0.6), ("dusty breakbeat", 0.8), ("", 1.0)])]
KILLED = ("k", "acid bassline", 4.0, MID, 7)
LONG = ("l", "ambient drift", 22.0, FAST, 5)  # long-form: three windows of tiny-random's 10 s, each on a replica
REPO = Path(__file__).resolve().parents[1]


def gen(rid: str, prompt: str, duration_s: float, params: DecodeParams, seed: int, **kw) -> Generate:
    return Generate(id=rid, prompt=prompt, duration_s=duration_s, preset="live", params=params, seed=seed,
                    stream=Stream(progress=True, audio=True), **kw)


def start(tmp_path_factory, *args: str) -> DaemonProcess:
    cache = tmp_path_factory.getbasetemp() / "magnet-rt-cache"  # one tiny-random build per test session
    d = DaemonProcess("--model", "tiny-random", "--device", "cpu", "--threads", "1", *args,
                      env={"MAGNET_RT_CACHE": str(cache), "OMP_NUM_THREADS": "1"})
    d.start(timeout=300)
    return d


def run_all(zctx, endpoint: str, requests, timeout: float = 180.0) -> dict[str, list]:
    """Each request from its own client, all at once; every message of each up to its terminal one."""
    out: dict[str, list] = {}
    clients = {r[0]: Client(zctx, endpoint) for r in requests}

    def one(r) -> None:
        out[r[0]] = clients[r[0]].request(gen(*r), timeout=timeout)

    threads = [threading.Thread(target=one, args=(r,)) for r in requests]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 10)
    finally:
        for c in clients.values():
            c.close()
    assert set(out) == {r[0] for r in requests}, f"requests without an answer: {set(clients) - set(out)}"
    return out


def audio_bytes(msgs) -> bytes:
    return b"".join(m.data for m in msgs if m.TYPE == "audio")


def check_one_terminal(msgs) -> None:
    """accepted first, then exactly one terminal message, the last one, and it is `done`."""
    kinds = [m.TYPE for m in msgs]
    assert kinds[0] == "accepted" and kinds[-1] == "done", kinds
    assert sum(is_terminal(m) for m in msgs) == 1, kinds


@pytest.fixture(scope="module")
def reference(tmp_path_factory, zctx) -> dict[str, bytes]:
    """The single daemon's takes for the same requests."""
    d = start(tmp_path_factory)
    try:
        got = run_all(zctx, d.endpoint, [*REQUESTS, KILLED, LONG])
    finally:
        assert d.stop() == 0, d.log()[-3000:]
    for msgs in got.values():
        check_one_terminal(msgs)
    return {rid: audio_bytes(msgs) for rid, msgs in got.items()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, reference):
    d = start(tmp_path_factory, "--replicas", "2", "--replica-cpus", "0.5")
    yield d
    assert d.stop(timeout=120) == 0, d.log()[-5000:]


def status(zctx, endpoint: str, via: Client | None = None):
    """status_reply; `via`: asked by that client (a client waiting on a render keeps the daemon hearing it)."""
    c = via or Client(zctx, endpoint)
    try:
        return c.call(Status(id=f"st-{time.monotonic_ns()}"), timeout=30)
    finally:
        if via is None:
            c.close()


def wait_for(pred, what: str, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()) is not None:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_single_daemon_imports_no_ray():
    """The daemon and the `magnet-rt` command (as pyproject.toml names it) with --replicas among the options."""
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["magnet-rt"]
    module = script.split(":")[0]
    code = (f"import sys, importlib, daemon.server; importlib.import_module({module!r}); "
            "assert '--replicas' in daemon.server.build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_concurrent_clients_get_the_single_daemons_bytes(cluster, reference, zctx):
    got = run_all(zctx, cluster.endpoint, REQUESTS)
    for rid, msgs in got.items():
        check_one_terminal(msgs)
        steps = [m.step for m in msgs if m.TYPE == "progress"]
        assert steps == list(range(1, 8)), (rid, steps)
        assert audio_bytes(msgs) == reference[rid], rid
    st = status(zctx, cluster.endpoint)
    alive = [r for r in st.replicas if r.state == "alive"]
    assert len(alive) == 2 and all(r.pid for r in alive), st.replicas
    assert sum(r.batches for r in st.replicas) >= 2 and all(r.running == 0 for r in st.replicas), st.replicas


def test_cancelling_one_request_of_a_shared_batch_stops_only_its_rows(cluster, zctx):
    """Both replicas busy, then two requests of one shape queue and share a batch; cancelling one posts it on
    the cancel board, the replica drops its rows and the other request still ends with `done`. (Before the
    tests that kill replicas: Serve's restarted replica may take a while to take work again.)"""
    got: dict[str, list] = {}
    blockers = [(f"busy{i}", "drone", 3.0 + 0.2 * i, SLOW, 30 + i) for i in range(2)]  # one batch each

    def collect(r) -> None:
        c = Client(zctx, cluster.endpoint)  # waits with heartbeats, so the daemon keeps hearing it
        try:
            got[r[0]] = c.request(gen(*r), timeout=240)
        finally:
            c.close()

    def alive() -> int:  # a replica killed by an earlier test comes back once Serve has restarted it
        return sum(r.state == "alive" for r in status(zctx, cluster.endpoint).replicas)

    wait_for(lambda: True if alive() >= 2 else None, "two live replicas", timeout=240, every=0.5)
    threads = [threading.Thread(target=collect, args=(r,)) for r in blockers]
    for t in threads:
        t.start()
    wait_for(lambda: True if sum(r.running for r in status(zctx, cluster.endpoint).replicas) >= 2 else None,
             "both replicas running a blocker", timeout=120, every=0.1)
    threads.append(threading.Thread(target=collect, args=(("shared-b", "pads", 4.0, SLOW, 42),)))
    a = Client(zctx, cluster.endpoint)
    try:
        a.send(gen("shared-a", "drone", 4.0, SLOW, 41))
        threads[-1].start()
        seen = []
        while not seen or seen[-1].TYPE != "progress":  # queued behind the blockers, then running beside shared-b
            seen.append(a.next("shared-a", timeout=180))
            assert len(seen) < 50 and not is_terminal(seen[-1]), [m.TYPE for m in seen]
        assert a.call(Cancel(id="xa", target="shared-a")).state == "running"
        a_msgs = a.until_terminal("shared-a", timeout=120)
    finally:
        a.close()
    for t in threads:
        t.join(260)
    assert a_msgs[-1].TYPE == "cancelled" and sum(is_terminal(m) for m in a_msgs) == 1, [m.TYPE for m in a_msgs]
    for rid in ("busy0", "busy1", "shared-b"):
        check_one_terminal(got[rid])
    log = wait_for(lambda: cluster.log() if re.search(r"stopped cancelled job\(s\) \[\d\] of a batch of 2",
                                                       cluster.log()) else None,
                   "the replica's report that it dropped the cancelled job of a shared batch", timeout=30)
    assert log


def test_a_replica_killed_mid_batch_reruns_it_on_another(cluster, reference, zctx):
    c = Client(zctx, cluster.endpoint)
    try:
        c.send(gen(*KILLED))
        assert c.next("k").TYPE == "accepted"
        assert c.next("k", timeout=60).TYPE == "progress"  # decoding on a replica now
        running = wait_for(lambda: next((r for r in status(zctx, cluster.endpoint, c).replicas if r.running), None),
                           "the replica running the request", timeout=30, every=0.1)
        os.kill(running.pid, signal.SIGKILL)
        msgs = c.until_terminal("k", timeout=180)
    finally:
        c.close()
    kinds = [m.TYPE for m in msgs]
    assert kinds[-1] == "done" and sum(is_terminal(m) for m in msgs) == 1, (kinds[-3:], cluster.log()[-4000:])
    steps = [m.step for m in msgs if m.TYPE == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == sum(MID.decoding_steps), steps  # none twice
    assert audio_bytes(msgs) == reference["k"]  # the rerun on the other replica made the same take

    def replaced():
        s = status(zctx, cluster.endpoint)
        return s if sum(r.state == "alive" for r in s.replicas) == 2 else None

    st = wait_for(replaced, "Serve to replace the replica")
    dead = {r.id: r for r in st.replicas}[running.id]
    assert dead.state == "dead" and dead.deaths == 1, st.replicas


def test_cancel_stops_the_replicas_work(cluster, zctx):
    c = Client(zctx, cluster.endpoint)
    try:
        c.send(gen("slow", "drone", 4.0, SLOW, 1))
        assert c.next("slow").TYPE == "accepted"
        assert c.next("slow", timeout=60).TYPE == "progress"
        assert c.call(Cancel(id="x", target="slow")).state == "running"
        msgs = c.until_terminal("slow", timeout=60)
        assert msgs[-1].TYPE == "cancelled" and msgs[-1].by == "x"
        # both replicas are free again: two requests of different lengths run at once and finish
        got = run_all(zctx, cluster.endpoint, REQUESTS[1:3], timeout=120)
    finally:
        c.close()
    for msgs in got.values():
        check_one_terminal(msgs)
    st = status(zctx, cluster.endpoint)
    assert all(r.running == 0 for r in st.replicas), st.replicas


def test_a_batch_that_keeps_killing_replicas_ends_with_internal(cluster, zctx):
    """The request is rerun after each death, and given up after the third: one terminal `error`."""
    c = Client(zctx, cluster.endpoint)
    killed: list[int] = []

    def next_runner():
        return next((r for r in status(zctx, cluster.endpoint, c).replicas if r.running and r.pid not in killed),
                    None)

    try:
        c.send(gen("poison", "noise", 4.0, MID, 11))
        assert c.next("poison").TYPE == "accepted"
        for _ in range(3):
            runner = wait_for(next_runner, "a replica running the request", timeout=120, every=0.1)
            os.kill(runner.pid, signal.SIGKILL)
            killed.append(runner.pid)
        msgs = c.until_terminal("poison", timeout=120)
    finally:
        c.close()
    kinds = [m.TYPE for m in msgs]
    assert sum(is_terminal(m) for m in msgs) == 1 and kinds[-1] == "error", kinds
    assert msgs[-1].code == "internal" and "died 3 times" in msgs[-1].message, msgs[-1]
    deaths = {r.pid: r.deaths for r in status(zctx, cluster.endpoint).replicas}
    assert all(deaths[pid] == 1 for pid in killed), deaths


@pytest.mark.parametrize("args, why", [
    (["--replicas", "-1"], "--replicas must be 0"),
    (["--ray-address", "auto"], "--ray-address needs --replicas N"),
    (["--replicas", "2", "--rescorer", "tiny-random"], "--rescorer runs in the daemon's process"),
    (["--replicas", "2", "--replica-cpus", "0"], "--replica-cpus must be positive"),
])
def test_bad_replica_options_are_refused_before_anything_starts(args, why):
    out = subprocess.run([sys.executable, "-m", "daemon", "--model", "tiny-random", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and why in out.stderr, out.stderr[-2000:]


def test_long_form_runs_window_by_window_on_the_replicas(cluster, reference, zctx):
    msgs = run_all(zctx, cluster.endpoint, [LONG])["l"]
    check_one_terminal(msgs)
    assert [m.window for m in msgs if m.TYPE == "window"] == [0, 1, 2]
    assert audio_bytes(msgs) == reference["l"]


def test_a_client_that_vanishes_frees_its_replica(cluster, zctx):
    c = Client(zctx, cluster.endpoint)
    c.send(gen("gone", "drone", 4.0, SLOW, 3))
    assert c.next("gone").TYPE == "accepted"
    assert c.next("gone", timeout=60).TYPE == "progress"
    c.close()  # the daemon's next message to it fails: the request is cancelled at its next step

    def idle():
        st = status(zctx, cluster.endpoint)
        return st if st.running == 0 and all(r.running == 0 for r in st.replicas) else None

    st = wait_for(idle, "the vanished client's request to leave its replica", timeout=60, every=0.2)
    assert not [q for q in st.queue if q.id == "gone"], st.queue
