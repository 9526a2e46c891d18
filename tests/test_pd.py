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
    sends = [f"magnet-port {port}", "magnet-autoquit 1", "magnet-send ping",
             "magnet-send inpaint pe1 /etc/passwd 0 1 x live 1",
             "magnet-send generate pd1 dusty\\ drums live 9 1 120"]
    run = subprocess.run([pd, "-nogui", "-noaudio", "-stderr", "-send", "; ".join(sends),
                          str(REPO / "clients" / "pd" / "magnet.pd")],
                         capture_output=True, text=True, timeout=90)
    text = run.stdout + run.stderr
    assert run.returncode == 0, text
    assert re.search(r"magnet-pong: [\d.e+-]+", text), text
    assert ("magnet-error: pe1@0 forbidden_path source.path is not inside a folder this daemon may read "
            "/magnet/inpaint\n") in text, text  # the message as words, as the README shows it
    assert "magnet-accepted: pd1@0 0" in text, text
    progress = [float(x) for x in re.findall(r"magnet-progress: pd1@0 ([\d.e+-]+)", text)]
    assert progress and progress[-1] == 1, text
    n = bars_to_samples(1, 120, 32000)
    done = re.search(r"magnet-done: pd1@0 (\S+) 2 (\d+) 32000 9 0 1", text)
    assert done and int(done.group(2)) == n and done.group(1).startswith(str(out.resolve())), text
    assert f"magnet-loaded: {n}" in text, text


def _pd_request(pd: str, port: int, reply: int, request: str) -> str:
    sends = [f"magnet-port {port}", "magnet-autoquit 1", f"magnet-send {request}"]
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
        done = re.search(rf"magnet-done: {osc_id}@0 (\S+) [\d.e+]+ ([\d.e+]+) 32000 3 0 1", text)
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


def test_two_pd_patches_at_once_each_get_only_their_own_replies(bridge):
    """Two headless Pd processes request at once with the same job id; each id gets @0, so the bridge answers
    each at the port it sent from (its netsend) and each prints only its own take. One asks for -20 LUFS."""
    import pyloudnorm
    import soundfile as sf

    pd = need_binary("pd", "puredata-core")
    port, _, _ = bridge
    patch = str(REPO / "clients" / "pd" / "magnet.pd")
    runs = {seed: [f"magnet-port {port}", "magnet-autoquit 1", *loud, "magnet-send cancel nosuch",
                   f"magnet-send generate g1 pad live {seed} 1 120"]
            for seed, loud in ((5, ["magnet-loudness -20"]), (6, []))}
    procs = {seed: subprocess.Popen([pd, "-nogui", "-noaudio", "-stderr", "-send", "; ".join(sends), patch],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed, sends in runs.items()}
    texts = {seed: p.communicate(timeout=120)[0] for seed, p in procs.items()}
    for seed, text in texts.items():
        assert procs[seed].returncode == 0, text
        assert text.count("magnet-accepted: g1@0") == 1 and text.count("magnet-done: g1@0") == 1, text
        assert "magnet-error: nosuch@0 not_found no running job 'nosuch@0' from this host /magnet/cancel" in text
        done = re.search(r"magnet-done: g1@0 (\S+) [\d.e+]+ (\d+) 32000 (\d+) 0 1", text)
        assert done and int(done.group(3)) == seed, text  # its own take, not the other patch's
        assert f"magnet-loaded: {bars_to_samples(1, 120, 32000)}" in text, text
        audio = sf.read(done.group(1), dtype="float64", always_2d=True)[0]
        lufs = pyloudnorm.Meter(32000).integrated_loudness(audio)
        assert abs(lufs - (-20.0 if seed == 5 else -14.0)) < 0.5, (seed, lufs)
