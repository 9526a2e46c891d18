"""clients/pd/magnet.pd run headless by Debian's puredata-core against a real daemon and the bridge: it sends
requests, prints the replies and loads the result into an array (we assert on what it prints)."""

from __future__ import annotations

import re
import subprocess

import pytest
from test_osc_support import REPO, free_udp_port, need_binary, start_bridge, start_daemon

from magnet_rt.audio import bars_to_samples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pd")
    (tmp / "allowed").mkdir()
    daemon, endpoint = start_daemon(tmp, tmp / "allowed")
    reply = free_udp_port()
    proc, port = start_bridge(endpoint, reply, tmp / "out")
    yield port, reply, tmp / "out"
    proc.stop()
    daemon.stop()


def test_pd_patch_generates_and_loads_the_result(bridge):
    pd = need_binary("pd", "puredata-core")
    port, reply, out = bridge
    sends = [f"magnet-listen {reply}", f"magnet-port {port}", "magnet-autoquit 1", "magnet-send ping",
             "magnet-send inpaint pe1 /etc/passwd 0 1 x live 1",
             "magnet-send generate pd1 dusty\\ drums live 9 1 120"]
    run = subprocess.run([pd, "-nogui", "-noaudio", "-stderr", "-send", "; ".join(sends),
                          str(REPO / "clients" / "pd" / "magnet.pd")],
                         capture_output=True, text=True, timeout=90)
    text = run.stdout + run.stderr
    assert run.returncode == 0, text
    assert re.search(r"magnet-pong: [\d.e+-]+", text), text
    assert "magnet-error: pe1 forbidden_path" in text and "/magnet/inpaint" in text, text
    assert "magnet-accepted: pd1 0" in text, text
    progress = [float(x) for x in re.findall(r"magnet-progress: pd1 ([\d.e+-]+)", text)]
    assert progress and progress[-1] == 1, text
    n = bars_to_samples(1, 120, 32000)
    done = re.search(r"magnet-done: pd1 (\S+) 2 (\d+) 32000 9 0 1", text)
    assert done and int(done.group(2)) == n and done.group(1).startswith(str(out.resolve())), text
    assert f"magnet-loaded: {n}" in text, text


def _pd_request(pd: str, port: int, reply: int, request: str) -> str:
    sends = [f"magnet-listen {reply}", f"magnet-port {port}", "magnet-autoquit 1", f"magnet-send {request}"]
    run = subprocess.run([pd, "-nogui", "-noaudio", "-stderr", "-send", "; ".join(sends),
                          str(REPO / "clients" / "pd" / "magnet.pd")], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_pd_inpaints_long_clips_in_seconds_and_bars_and_continues(bridge):
    """Done-when of issue 13 through Pure Data: a region inside a 60 s clip, a 15 s region, a region in bars
    (174 bpm, downbeat 0.5 s), and a 30 s clip continued by 12 s; outside the region every sample is the clip's."""
    import numpy as np
    import soundfile as sf

    pd = need_binary("pd", "puredata-core")
    port, reply, out = bridge
    allowed = out.parent / "allowed"
    x = np.random.default_rng(9).uniform(-0.3, 0.3, (60 * 32000, 1)).astype(np.float32)
    sf.write(allowed / "minute.wav", x, 32000, subtype="FLOAT")
    sf.write(allowed / "half.wav", x[:30 * 32000], 32000, subtype="FLOAT")
    edges = lambda *bars: [16000 + bars_to_samples(b, 174, 32000) for b in bars]  # noqa: E731
    cases = [("pi1", f"inpaint pi1 {allowed}/minute.wav 30 32 pad live 3", (960000, 1024000), 60 * 32000),
             ("pi2", f"inpaint pi2 {allowed}/minute.wav 20 35 pad live 3", (640000, 1120000), 60 * 32000),
             ("pi3", f"inpaint_bars pi3 {allowed}/minute.wav 8 12 174 pad live 3 0.5", edges(8, 12), 60 * 32000),
             ("pc1", f"continue pc1 {allowed}/half.wav pad live 3 12", (30 * 32000, 30 * 32000), 42 * 32000)]
    for osc_id, request, (a, b), n in cases:
        text = _pd_request(pd, port, reply, request)
        done = re.search(rf"magnet-done: {osc_id} (\S+) [\d.e+]+ ([\d.e+]+) 32000 3 0 1", text)
        loaded = re.search(r"magnet-loaded: ([\d.e+]+)", text)  # Pd prints 6 significant digits: 1.92e+06
        assert done and loaded and float(done.group(2)) == float(loaded.group(1)) == pytest.approx(n, rel=1e-5), text
        y = sf.read(done.group(1), dtype="float32", always_2d=True)[0]
        assert len(y) == n
        np.testing.assert_array_equal(y[:a], x[:a])  # before the region (continue: the whole clip)
        if osc_id.startswith("pi"):
            np.testing.assert_array_equal(y[b:], x[b:])
            assert not np.array_equal(y[a:a + 1000], x[a:a + 1000])
        else:
            assert np.abs(y[a:]).max() > 0
