"""The OSC bridge against a real daemon (tiny-random, CPU): every address of protocol/OSC.md, bad input, and
liblo's oscsend/oscdump (a client we did not write)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_osc_support import Receiver, client, free_udp_port, need_binary, start_bridge, start_daemon

from magnet_rt.audio import bars_to_samples

pytestmark = pytest.mark.slow
SR = 32000


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("osc")
    allow, out = tmp / "allowed", tmp / "out"
    allow.mkdir()
    daemon, endpoint = start_daemon(tmp, allow)
    reply = free_udp_port()
    rx = Receiver(reply)
    bridge, port = start_bridge(endpoint, reply, out)
    yield {"rx": rx, "tx": client(port), "port": port, "allow": allow, "out": out, "endpoint": endpoint,
           "bridge": bridge}
    rx.close()
    bridge.stop()
    daemon.stop()


def done_of(rig, address, *args, timeout=60.0):
    rig["tx"].send_message(address, list(args))
    osc_id = args[0]
    msg = rig["rx"].expect("/magnet/done", osc_id, timeout)
    return msg


def check_wav(msg, out: Path, samples: int | None = None):
    _, osc_id, path, duration, n, rate, seed, variation, outputs = msg
    assert os.path.isabs(path) and Path(path).parent == out.resolve()
    info = sf.info(path)
    assert (info.frames, info.samplerate) == (n, rate)
    assert abs(duration - n / rate) < 1e-4
    if samples is not None:
        assert n == samples
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def test_startup_and_ping(rig):
    msg = rig["rx"].expect("/magnet/startup", timeout=5)
    assert msg[2] == rig["port"]
    rig["tx"].send_message("/magnet/ping", [])
    _, ms = rig["rx"].expect("/magnet/pong", timeout=10)
    assert 0 <= ms < 10000


def test_generate_in_bars_is_exact(rig):
    rx = rig["rx"]
    msg = done_of(rig, "/magnet/generate", "g1", "warm pad", "live", 7, 1, 123.4)
    audio = check_wav(msg, rig["out"], bars_to_samples(1, 123.4, SR))  # 62237, not 62236.6 nor 1.96 s
    assert np.isfinite(audio).all() and audio.shape[0] == 1
    assert msg[6:] == (7, 0, 1)
    events = rx.all_of("g1")
    assert events[0][0] == "/magnet/accepted" and events[0][2] >= 0
    fractions = [m[2] for m in events if m[0] == "/magnet/progress"]
    assert fractions and fractions == sorted(fractions) and 0 < fractions[0] and abs(fractions[-1] - 1) < 1e-6


def test_generate_seconds_and_default_length(rig):
    check_wav(done_of(rig, "/magnet/generate", "g2", "pad", "live", 1, 1.234), rig["out"], round(1.234 * SR))
    check_wav(done_of(rig, "/magnet/generate", "g3", "pad", "live", -1), rig["out"], 10 * SR)


def test_variations(rig):
    rig["tx"].send_message("/magnet/variations", ["v1", "pad", "live", 5, 2, 1.0])
    a = rig["rx"].expect("/magnet/done", "v1")
    b = rig["rx"].expect("/magnet/done", "v1")
    assert (a[6:], b[6:]) == ((5, 0, 2), (6, 1, 2))
    assert a[2] != b[2]
    assert not np.array_equal(check_wav(a, rig["out"], SR), check_wav(b, rig["out"], SR))


def test_loop_has_exact_musical_length(rig):
    msg = done_of(rig, "/magnet/loop", "l1", "pad", 1, 97.3, "live", 3)
    audio = check_wav(msg, rig["out"], bars_to_samples(1, 97.3, SR))
    assert np.isfinite(audio).all()
    progress = [m[2] for m in rig["rx"].all_of("l1") if m[0] == "/magnet/progress"]
    assert progress == sorted(progress) and any(p < 0.5 for p in progress) and abs(progress[-1] - 1) < 1e-6


def test_inpaint_a_result_and_an_allowed_file(rig):
    msg = done_of(rig, "/magnet/generate", "s1", "pad", "live", 2, 2.0)
    src, path = check_wav(msg, rig["out"], 2 * SR), msg[2]
    msg = done_of(rig, "/magnet/inpaint", "i1", path, 0.5, 1.0, "pad", "live", 4)
    new = check_wav(msg, rig["out"], 2 * SR)
    a, b = round(0.5 * SR), round(1.0 * SR)
    np.testing.assert_array_equal(new[:, :a], src[:, :a])  # kept sample for sample outside the region
    np.testing.assert_array_equal(new[:, b:], src[:, b:])
    assert not np.array_equal(new[:, a:b], src[:, a:b])
    stereo = rig["allow"] / "beat.wav"  # a file the daemon reads itself: 44.1 kHz stereo
    sf.write(stereo, np.random.default_rng(0).uniform(-0.3, 0.3, (44100, 2)).astype(np.float32), 44100)
    msg = done_of(rig, "/magnet/inpaint", "i2", str(stereo), 0.25, 0.5, "pad", "live", 4)
    assert check_wav(msg, rig["out"], 44100).shape[0] == 2


def test_continue_in_bars(rig):
    path = done_of(rig, "/magnet/generate", "s2", "pad", "live", 2, 1.0)[2]
    msg = done_of(rig, "/magnet/continue", "k1", path, "pad", "live", 3, 1, 120.0)
    check_wav(msg, rig["out"], SR + bars_to_samples(1, 120.0, SR))  # the 1 s clip, then one bar


def test_long_clips_inpaint_in_seconds_and_bars_and_continue(rig):
    """A region inside a 60 s clip, a 15 s region, a bar region at 123.4 bpm, and a 30 s clip continued by 12 s:
    every sample outside the region (or of the clip) is the source's."""
    clip = rig["allow"] / "minute.wav"
    x = np.random.default_rng(5).uniform(-0.3, 0.3, (60 * SR, 2)).astype(np.float32)
    sf.write(clip, x, SR, subtype="FLOAT")
    for osc_id, a, b in (("L1", 30.0, 32.0), ("L2", 20.0, 35.0)):
        new = check_wav(done_of(rig, "/magnet/inpaint", osc_id, str(clip), a, b, "pad", "live", 4, timeout=120),
                        rig["out"], 60 * SR)
        a, b = round(a * SR), round(b * SR)
        np.testing.assert_array_equal(new[:, :a], x[:a].T)
        np.testing.assert_array_equal(new[:, b:], x[b:].T)
        assert not np.array_equal(new[:, a:b], x[a:b].T)
    new = check_wav(done_of(rig, "/magnet/inpaint_bars", "L3", str(clip), 4, 6, 123.4, "pad", "live", 4, 0.5),
                    rig["out"], 60 * SR)
    a, b = (round(0.5 * SR) + bars_to_samples(n, 123.4, SR) for n in (4, 6))
    np.testing.assert_array_equal(new[:, :a], x[:a].T)
    np.testing.assert_array_equal(new[:, b:], x[b:].T)
    assert not np.array_equal(new[:, a:a + 1000], x[a:a + 1000].T)
    half = rig["allow"] / "half.wav"
    sf.write(half, x[:30 * SR], SR, subtype="FLOAT")
    new = check_wav(done_of(rig, "/magnet/continue", "L4", str(half), "pad", "live", 4, 12.0, timeout=120),
                    rig["out"], 42 * SR)
    np.testing.assert_array_equal(new[:, :30 * SR], x[:30 * SR].T)


def test_cancel_and_status(rig):
    tx, rx = rig["tx"], rig["rx"]
    tx.send_message("/magnet/generate", ["c1", "pad", "studio", 1, 10.0])
    rx.expect("/magnet/accepted", "c1")
    tx.send_message("/magnet/status", [])
    _, model, device, running, queued, jobs = rx.expect("/magnet/status", timeout=10)
    assert model == "tiny-random" and device and jobs >= 1 and running + queued >= 1
    tx.send_message("/magnet/cancel", ["c1"])
    rx.expect("/magnet/cancelled", "c1")
    tx.send_message("/magnet/cancel", ["c1"])
    assert rx.expect("/magnet/error", "c1")[2] == "not_found"


@pytest.mark.parametrize("address, args, osc_id, code", [
    ("/magnet/nope", [1], "", "unknown_address"),
    ("/magnet/generate", ["b1", "pad", "live"], "b1", "invalid_field"),  # missing seed
    ("/magnet/generate", ["b2", "pad", "live", "seven"], "b2", "invalid_field"),  # wrong type
    ("/magnet/generate", ["b3", "pad", "live", 1.5], "b3", "invalid_field"),
    ("/magnet/generate", [3, "pad", "live", 1], "", "invalid_field"),  # id not a string
    ("/magnet/generate", ["b4", "pad", "live", 1, 0, 120.0], "b4", "invalid_field"),  # 0 bars
    ("/magnet/generate", ["b5", "pad", "live", 1, 700.0], "b5", "invalid_field"),  # > 600 s (long-form limit)
    ("/magnet/generate", ["b6", "pad", "no-such-preset", 1, 1.0], "b6", "unknown_preset"),
    ("/magnet/loop", ["b7", "pad", 1, 0.0, "live", 1], "b7", "invalid_field"),  # bpm 0
    ("/magnet/inpaint", ["b8", "/etc/passwd", 0.0, 1.0, "x", "live", 1], "b8", "forbidden_path"),
    ("/magnet/inpaint", ["b9", "relative.wav", 0.0, 1.0, "x", "live", 1], "b9", "forbidden_path"),
    ("/magnet/continue", ["b10", "/dev/zero", "x", "live", 1, 2.0], "b10", "forbidden_path"),
])
def test_bad_input_gets_an_error_and_the_bridge_keeps_serving(rig, address, args, osc_id, code):
    rig["tx"].send_message(address, args)
    msg = rig["rx"].expect("/magnet/error", osc_id, timeout=15)
    assert msg[2] == code and msg[3] and msg[4] == address
    rig["tx"].send_message("/magnet/ping", [])
    rig["rx"].expect("/magnet/pong", timeout=10)


def test_paths_that_escape_or_are_not_audio(rig):
    allow = rig["allow"]
    (allow / "notes.wav").write_text("not audio")
    (allow / "escape.wav").symlink_to("/etc/passwd")
    (allow / "zero.wav").symlink_to("/dev/zero")
    os.mkfifo(allow / "fifo.wav")
    cases = {"e1": (str(allow / "notes.wav"), "invalid_audio"), "e2": (str(allow / "escape.wav"), "forbidden_path"),
             "e3": (str(allow / "zero.wav"), "forbidden_path"), "e4": (str(allow / "fifo.wav"), "forbidden_path"),
             "e5": (f"{allow}/../{allow.name}/notes.wav", "forbidden_path"),
             "e6": (str(allow / "missing.wav"), "invalid_audio")}
    for osc_id, (path, _) in cases.items():
        rig["tx"].send_message("/magnet/inpaint", [osc_id, path, 0.0, 0.5, "x", "live", 1])
    for osc_id, (path, code) in cases.items():
        assert rig["rx"].expect("/magnet/error", osc_id, timeout=15)[2] == code, path


def test_duplicate_id_is_refused(rig):
    tx, rx = rig["tx"], rig["rx"]
    tx.send_message("/magnet/generate", ["d1", "pad", "studio", 1, 10.0])
    tx.send_message("/magnet/generate", ["d1", "pad", "live", 1, 1.0])
    assert rx.expect("/magnet/error", "d1", timeout=15)[2] == "duplicate_id"
    tx.send_message("/magnet/cancel", ["d1"])
    rx.expect("/magnet/cancelled", "d1")


def test_liblo_oscsend_and_oscdump(rig, tmp_path):
    """liblo's tools speak to a second bridge (oscdump owns its reply port)."""
    oscsend, oscdump = need_binary("oscsend", "liblo-tools"), need_binary("oscdump", "liblo-tools")
    reply = free_udp_port()
    bridge, port = start_bridge(rig["endpoint"], reply, rig["out"])
    dump = subprocess.Popen([oscdump, "-L", str(reply)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        send = [oscsend, "127.0.0.1", str(port)]
        subprocess.run([*send, "/magnet/ping"], check=True, timeout=10)
        subprocess.run([*send, "/magnet/generate", "sssiif", "lo1", "dusty drums", "live", "9", "1", "120.5"],
                       check=True, timeout=10)
        subprocess.run([*send, "/magnet/generate", "sssf", "lo2", "x", "live", "1.5"], check=True, timeout=10)
        lines, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and not any("/magnet/done" in s for s in lines):
            lines.append(dump.stdout.readline())
    finally:
        dump.terminate()
        dump.wait(5)
        bridge.stop()
    text = "".join(lines)
    assert "/magnet/pong f" in text
    assert '/magnet/accepted si "lo1" 0' in text or '/magnet/accepted si "lo1"' in text
    assert '/magnet/error ssss "lo2" "invalid_field"' in text
    done = next(s for s in lines if "/magnet/done" in s)
    assert ' ssfiiiii "lo1" "' in done and f" {bars_to_samples(1, 120.5, SR)} 32000 9 0 1" in done


def _osc_str(text: bytes) -> bytes:
    """An OSC string: the bytes, a NUL, padded to a multiple of 4."""
    return text + b"\0" * (4 - len(text) % 4)


def _osc(address: bytes, tags: bytes, *args: bytes) -> bytes:
    return _osc_str(address) + _osc_str(b"," + tags) + b"".join(args)


INT1 = (1).to_bytes(4, "big")
MALFORMED = [  # (case, datagram, code, address the error names)
    ("garbage", b"\xff\xfe\x00garbage", "bad_request", ""),
    ("empty", b"", "bad_request", ""),
    ("no leading slash", _osc(b"magnet/ping", b""), "bad_request", ""),
    ("non-UTF-8 address", _osc(b"/magnet/\xff\xfe", b""), "bad_request", ""),
    ("type tags without data", _osc(b"/magnet/generate", b"sssi"), "bad_request", "/magnet/generate"),
    ("truncated", _osc(b"/magnet/generate", b"sssi", _osc_str(b"t1"), _osc_str(b"pad"))[:-2], "bad_request",
     "/magnet/generate"),
    ("non-UTF-8 argument", _osc(b"/magnet/cancel", b"s", _osc_str(b"\xff\xfe")), "bad_request", "/magnet/cancel"),
]


def test_malformed_datagrams_get_an_error_and_a_log_line(rig):
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for case, datagram, code, address in MALFORMED:
            tx.sendto(datagram, ("127.0.0.1", rig["port"]))
            msg = rig["rx"].expect("/magnet/error", "", timeout=10)
            assert (msg[2], msg[4]) == (code, address) and msg[3], (case, msg)
    finally:
        tx.close()
    deadline = time.monotonic() + 10  # the bridge's log is read by a thread: its lines may trail the replies
    while True:
        drops = [line for line in rig["bridge"].log if "dropped a datagram" in line]
        if len(drops) >= len(MALFORMED) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(drops) >= len(MALFORMED), drops
    rig["tx"].send_message("/magnet/ping", [])
    rig["rx"].expect("/magnet/pong", timeout=10)


def test_a_datagram_over_8_kb_is_read_whole_and_answered(rig):
    prompt = b"x" * 9000  # over the 2000-character prompt limit: the daemon refuses it, the bridge says so
    datagram = _osc(b"/magnet/generate", b"sssi", _osc_str(b"big"), _osc_str(prompt), _osc_str(b"live"), INT1)
    assert len(datagram) > 9000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(datagram, ("127.0.0.1", rig["port"]))
    msg = rig["rx"].expect("/magnet/error", "big", timeout=15)
    assert msg[2] == "invalid_field" and "prompt" in msg[3], msg


@pytest.mark.parametrize(("tag", "payload", "name"), [(b"c", INT1, "char"), (b"x", INT1, "unknown type"),
                                                      (b"T", b"", "true")])
def test_argument_types_no_request_uses_are_refused_by_name(rig, tag, payload, name):
    osc_id = f"ty-{tag.decode()}"
    datagram = _osc(b"/magnet/generate", b"sssi" + tag, _osc_str(osc_id.encode()), _osc_str(b"pad"),
                    _osc_str(b"live"), INT1, payload)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(datagram, ("127.0.0.1", rig["port"]))
    msg = rig["rx"].expect("/magnet/error", osc_id, timeout=10)
    assert msg[2] == "invalid_field" and f"argument 5 has OSC type '{tag.decode()}' ({name})" in msg[3], msg
    assert not [m for m in rig["rx"].all_of(osc_id) if m[0] == "/magnet/accepted"]


# ---- several clients on one host, prompts, loudness, cancel all (issue 15) ----------------------------------------
def _wait_for_all(proc, needles: list[str], timeout: float) -> str:
    """The process's output once every needle has appeared in it (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(n in "".join(proc.log) for n in needles):
        time.sleep(0.1)
    return "".join(proc.log)


def test_two_clients_listening_on_their_own_ports_get_only_their_own_replies(rig):
    """Two oscdump listeners (two device instances) request at once with the same job names; each id names its
    listener's port, and each listener receives exactly its own replies and nothing else."""
    from test_osc_support import Proc

    oscsend, oscdump = need_binary("oscsend", "liblo-tools"), need_binary("oscdump", "liblo-tools")
    ports = [free_udp_port(), free_udp_port()]
    dumps = [Proc([oscdump, "-L", str(p)]) for p in ports]
    try:
        time.sleep(0.5)
        send = [oscsend, "127.0.0.1", str(rig["port"])]
        sends = [subprocess.Popen([*send, "/magnet/generate", "sssiif", f"gen0@{p}", "pad", "live", str(k), "1",
                                   "120"]) for k, p in enumerate(ports)]
        sends += [subprocess.Popen([*send, "/magnet/ping", "s", f"p@{p}"]) for p in ports]
        sends += [subprocess.Popen([*send, "/magnet/generate", "sssi", f"bad@{p}", "", "live", "1"]) for p in ports]
        for s in sends:
            assert s.wait(10) == 0
        for d in dumps:
            _wait_for_all(d, ["/magnet/done", "/magnet/pong", "/magnet/error"], 90)
        time.sleep(0.5)  # anything misrouted would arrive by now
    finally:
        for d in dumps:
            d.stop()
    for port, other, k in ((ports[0], ports[1], 0), (ports[1], ports[0], 1)):
        text = "".join(dumps[k].log)
        assert f'"gen0@{port}"' in text and f"@{other}" not in text, text
        assert f'/magnet/accepted si "gen0@{port}"' in text and text.count("/magnet/pong f") == 1, text
        assert f'/magnet/error ssss "bad@{port}" "invalid_field"' in text and "prompt is empty" in text, text
        assert text.count("/magnet/done") == 1 and f" {bars_to_samples(1, 120, SR)} 32000 {k} 0 1" in text, text
    assert not rig["rx"].all_of("gen0") and not rig["rx"].all_of(f"gen0@{ports[0]}")  # nothing at the default port


def test_empty_prompt_is_refused_and_unconditioned_is_asked_on_purpose(rig):
    for osc_id, prompt in (("e-1", ""), ("e-2", " ")):
        rig["tx"].send_message("/magnet/generate", [osc_id, prompt, "live", 1, 1.0])
        msg = rig["rx"].expect("/magnet/error", osc_id, timeout=10)
        assert msg[2] == "invalid_field" and "@unconditioned" in msg[3]
        assert not [m for m in rig["rx"].all_of(osc_id) if m[0] == "/magnet/accepted"]
    check_wav(done_of(rig, "/magnet/generate", "u1", "@unconditioned", "live", 1, 1.0), rig["out"], SR)


def test_loudness_and_normalize_options(rig):
    """Every take is -14 LUFS by default; `loudness` picks another level, `normalize 0` keeps the model's own;
    a long-form take streams unnormalised, so its loudness is left out rather than refused."""
    import pyloudnorm

    takes = {}
    for osc_id, options in (("n1", []), ("n2", ["loudness", -23.0]), ("n3", ["normalize", 0])):
        takes[osc_id] = check_wav(done_of(rig, "/magnet/generate", osc_id, "pad", "live", 3, 2.0, *options),
                                  rig["out"], 2 * SR)
    measured = {k: pyloudnorm.Meter(SR).integrated_loudness(a.T.astype(np.float64)) for k, a in takes.items()}
    assert abs(measured["n1"] - -14.0) < 0.5 and abs(measured["n2"] - -23.0) < 0.5, measured
    assert abs(measured["n3"] - measured["n1"]) > 1.0, measured  # the model's own level is not -14 LUFS
    rig["tx"].send_message("/magnet/status", [])  # the welcome has arrived: the bridge knows the segment
    rig["rx"].expect("/magnet/status", timeout=10)
    msg = done_of(rig, "/magnet/generate", "n4", "pad", "live", 3, 12.0, "loudness", -20.0, timeout=120)
    check_wav(msg, rig["out"], 12 * SR)


def test_cancel_star_cancels_every_job_routed_to_that_port(rig):
    port = free_udp_port()
    rx = Receiver(port)
    try:
        for osc_id in (f"k1@{port}", f"k2@{port}"):
            rig["tx"].send_message("/magnet/generate", [osc_id, "pad", "studio", 1, 10.0])
            rx.expect("/magnet/accepted", osc_id, timeout=15)
        rig["tx"].send_message("/magnet/generate", ["k3", "pad", "live", 1, 1.0])  # routed elsewhere: untouched
        rig["tx"].send_message("/magnet/cancel", [f"*@{port}"])
        for osc_id in (f"k1@{port}", f"k2@{port}"):
            rx.expect("/magnet/cancelled", osc_id, timeout=30)
        rig["rx"].expect("/magnet/done", "k3", timeout=60)
        rig["tx"].send_message("/magnet/cancel", [f"*@{port}"])
        assert rx.expect("/magnet/error", f"*@{port}", timeout=10)[2] == "not_found"
    finally:
        rx.close()


def test_no_daemon_is_answered_unreachable_within_the_reply_timeout(tmp_path):
    """A bridge whose daemon never answers says so (`unreachable`, OSC.md §4) to each request, bounded in time."""
    reply = free_udp_port()
    rx = Receiver(reply)
    with socket.socket() as s:  # a TCP port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    bridge, port = start_bridge(f"tcp://127.0.0.1:{dead}", reply, tmp_path)
    try:
        tx = client(port)
        tx.send_message("/magnet/generate", ["u1", "pad", "live", 1, 1.0])
        tx.send_message("/magnet/ping", ["p1"])
        for osc_id, address in (("u1", "/magnet/generate"), ("p1", "/magnet/ping")):
            msg = rx.expect("/magnet/error", osc_id, timeout=25)
            assert msg[2] == "unreachable" and msg[4] == address, msg
    finally:
        rx.close()
        bridge.stop()
