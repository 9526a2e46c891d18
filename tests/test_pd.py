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
