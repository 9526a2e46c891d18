"""The `magnet-rt` CLI against the fake daemon, in-process (`main(argv)`) and as a subprocess: WAV output,
take naming, --json, loudness, exit codes and error text, Ctrl-C, stdout hygiene."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import sigint_default

from cli.main import main
from clients.fakedaemon import FakeDaemon

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "magnet-rt"


@pytest.fixture
def daemon():
    with FakeDaemon() as d:
        yield d


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli(*argv: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGNET_RT_DEBUG": ""}
    env.pop("MAGNET_RT_ENDPOINT", None)
    return subprocess.run([str(EXE), *argv], capture_output=True, text=True, timeout=timeout, env=env, **kw)


# --- rendering ---------------------------------------------------------------------------------------------------
def test_generate_writes_a_float_wav_of_the_asked_length(daemon, tmp_path, capsys):
    out = tmp_path / "out.wav"
    code, stdout, stderr = run(capsys, "generate", "warm rhodes", "--connect", daemon.endpoint, "--preset", "live",
                               "--seed", "1", "--duration", "2", "-o", str(out))
    assert code == 0, stderr
    assert stdout == f"{out}\n"  # only the path: pipes stay clean
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (32000, 1, 64000, "FLOAT")
    x, _ = sf.read(str(out), dtype="float32")
    np.testing.assert_array_equal(x, daemon._sine(64000, 1, 1)[0])  # bit-exact float32 round trip
    assert "accepted" in stderr and "done" in stderr  # plain progress lines (stderr is not a TTY)
    sent = daemon.received[-1]
    assert (sent.prompt, sent.preset, sent.seed, sent.duration_s) == ("warm rhodes", "live", 1, 2.0)


def test_variations_are_numbered_and_json_reports_them(daemon, tmp_path, capsys):
    out = tmp_path / "take.wav"
    code, stdout, _ = run(capsys, "generate", "x", "--connect", daemon.endpoint, "--variations", "3", "--seed", "5",
                          "--duration", "1", "-o", str(out), "--json", "--param", "decoding_steps=[3,1,1,1]",
                          "--param", "span_arrangement=stride1", "--subtype", "PCM_16")
    assert code == 0
    report = json.loads(stdout)
    assert report["paths"] == [str(tmp_path / n) for n in ("take.wav", "take-2.wav", "take-3.wav")]
    assert report["seeds"] == [5, 6, 7] and report["batch_size"] == 1 and report["sample_rate"] == 32000
    assert "total" in report["timings"] and report["duration_s"] == 1.0
    for i, path in enumerate(report["paths"]):
        assert sf.info(path).subtype == "PCM_16" and sf.info(path).frames == 32000
        x, _ = sf.read(path, dtype="float32")
        np.testing.assert_allclose(x, daemon._sine(32000, 1, 5 + i)[0], atol=1 / 32767)
    params = daemon.received[-1].params
    assert params.decoding_steps == (3, 1, 1, 1) and params.span_arrangement == "stride1"


def test_several_prompts_and_quiet(daemon, tmp_path, capsys):
    code, stdout, stderr = run(capsys, "generate", "a", "--prompt", "b", "--connect", daemon.endpoint, "-q",
                               "--duration", "0.5", "-o", str(tmp_path / "p.wav"))
    assert code == 0 and stderr == ""
    assert stdout.split() == [str(tmp_path / "p.wav"), str(tmp_path / "p-2.wav")]
    sent = daemon.received[-1]
    assert sent.prompts == ("a", "b") and sent.stream.progress is False


def test_loudness_normalises_each_take(daemon, tmp_path, capsys):
    import pyloudnorm

    out = tmp_path / "loud.wav"
    code, _, stderr = run(capsys, "generate", "x", "--connect", daemon.endpoint, "--duration", "2", "--loudness",
                          "-20", "-o", str(out), "--variations", "2")
    assert code == 0, stderr
    for path in (out, tmp_path / "loud-2.wav"):
        x, sr = sf.read(str(path), dtype="float32")
        assert pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64)) == pytest.approx(-20, abs=0.5)
        assert np.abs(x).max() <= 10 ** (-1 / 20)  # peak protected


def test_inpaint_sends_the_file_and_keeps_the_rest(daemon, tmp_path, capsys):
    src = tmp_path / "in.wav"
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 32000 * 5).astype(np.float32)
    sf.write(str(src), x, 32000, subtype="FLOAT")
    out = tmp_path / "out.wav"
    code, stdout, stderr = run(capsys, "inpaint", str(src), "--start", "2.0", "--end", "4.0", "PROMPT",
                               "--connect", daemon.endpoint, "--preset", "live", "--seed", "2", "-o", str(out))
    assert code == 0, stderr
    assert stdout == f"{out}\n"
    y, sr = sf.read(str(out), dtype="float32")
    assert sr == 32000 and y.shape == x.shape
    np.testing.assert_array_equal(y[:64000], x[:64000])
    np.testing.assert_array_equal(y[128000:], x[128000:])
    sent = daemon.received[-1]
    assert sent.source.audio is not None and (sent.start_s, sent.end_s, sent.prompt) == (2.0, 4.0, "PROMPT")
    code, _, _ = run(capsys, "inpaint", str(src), "--start", "1", "--end", "2", "p", "--by-path", "--connect",
                     daemon.endpoint, "-o", str(out), "--force")
    assert code == 0 and daemon.received[-1].source.path == str(src.resolve())
    code, stdout, _ = run(capsys, "continue", str(src), "more", "--duration", "6", "--connect", daemon.endpoint,
                          "-o", str(tmp_path / "c.wav"))
    assert code == 0 and sf.info(str(tmp_path / "c.wav")).frames == 11 * 32000  # 5 s clip + 6 s added
    code, _, stderr = run(capsys, "inpaint", str(src), "--start-bar", "1", "--end-bar", "2.5", "--bpm", "123.4", "p",
                          "--downbeat", "0.25", "--connect", daemon.endpoint, "-o", str(out), "--force")
    sent = daemon.received[-1]
    assert code == 0, stderr
    assert (sent.start_s, sent.start_bar, sent.end_bar, sent.bpm, sent.downbeat_s) == (None, 1.0, 2.5, 123.4, 0.25)
    assert sent.prompt == "p, 123.4 bpm"  # the region's tempo joins a prompt that names none
    code, _, stderr = run(capsys, "inpaint", str(src), "--start", "1", "--end-bar", "2", "p", "--connect",
                          daemon.endpoint, "-o", str(out))
    assert code == 2 and "--start-bar, --end-bar and --bpm" in stderr


# --- errors and exit codes ---------------------------------------------------------------------------------------
def test_daemon_errors_exit_1_with_meaning_and_next_step(daemon, tmp_path, capsys):
    code, stdout, stderr = run(capsys, "generate", "x", "--connect", daemon.endpoint, "--preset", "nope",
                               "-o", str(tmp_path / "o.wav"))
    assert code == 1 and stdout == ""
    assert "unknown_preset" in stderr and "magnet-rt ping" in stderr and "Traceback" not in stderr
    daemon.fail["generate"] = ("busy", "the queue is full (32 requests)", {"queue": 32, "max_queue": 32})
    code, _, stderr = run(capsys, "generate", "x", "--connect", daemon.endpoint, "-o", str(tmp_path / "o.wav"))
    assert code == 1 and "queue is full" in stderr and "magnet-rt status" in stderr
    code, _, stderr = run(capsys, "cancel", "abc", "--connect", daemon.endpoint)
    assert code == 1 and "not_found" in stderr
    assert not (tmp_path / "o.wav").exists()


def test_usage_errors_exit_2(daemon, tmp_path, capsys):
    ep = ("--connect", daemon.endpoint)
    for argv, needle in [
        (("generate",), "required"),
        (("generate", "x", "--duration", "650", *ep), "--duration"),
        (("generate", "x", "--variations", "9", *ep), "--variations"),
        (("generate", "x", "--param", "nope=1", *ep), "decoding_steps"),
        (("generate", "x", "--param", "decoding_steps=[1,2]", *ep), "--param"),
        (("generate", "x", "--loudness", "5", *ep), "--loudness"),
        (("generate", "x", "--subtype", "ULAW", *ep), "invalid choice"),
        (("inpaint", str(tmp_path / "missing.wav"), "--start", "1", "--end", "2", "p", *ep), "no such file"),
        (("inpaint", "in.wav", "--start", "1", "p", *ep), "--end"),
        (("status", "--server-key", str(tmp_path / "missing.key"), *ep), "--server-key"),
        (("frobnicate",), "invalid choice"),
        (("ping", "--timeout", "0", *ep), "--timeout"),
    ]:
        code, stdout, stderr = run(capsys, *argv)
        assert code == 2, (argv, stderr)
        assert needle in stderr and stdout == "", (argv, stderr)
    assert daemon.received == []  # nothing invalid was sent


def test_unreachable_daemon_exits_3_quickly_with_the_hint(capsys):
    t0 = time.monotonic()
    code, stdout, stderr = run(capsys, "generate", "x", "--connect", dead_endpoint(), "--timeout", "0.5")
    assert code == 3 and stdout == ""
    assert "make serve" in stderr and "magnet-rt serve" in stderr and "Traceback" not in stderr
    assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()  # issue 14 (16): with the default timeout, a refused connection is reported at once
    code, _, stderr = run(capsys, "status", "--connect", dead_endpoint())
    assert code == 3 and "nothing is listening there (connection refused)" in stderr, stderr
    assert time.monotonic() - t0 < 1.5


def test_a_peer_that_accepts_but_never_answers_gets_the_lazy_pirate_retries(capsys):
    with socket.socket() as mute:  # the TCP connection opens, no ZeroMQ handshake ever comes
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        code, _, stderr = run(capsys, "status", "--connect", f"tcp://127.0.0.1:{mute.getsockname()[1]}",
                              "--timeout", "0.2")
    assert code == 3 and "4 attempts" in stderr, stderr


def test_endpoint_from_environment(daemon, monkeypatch, capsys):
    monkeypatch.setenv("MAGNET_RT_ENDPOINT", daemon.endpoint)
    code, stdout, _ = run(capsys, "ping")
    assert code == 0 and "alive" in stdout and "presets: balanced, live" in stdout


def test_queries_print_results_and_json(daemon, capsys):
    ep = ("--connect", daemon.endpoint)
    code, stdout, _ = run(capsys, "status", *ep, "--json")
    assert code == 0 and json.loads(stdout)["device"] == "cpu (fake)"
    code, stdout, _ = run(capsys, "models", *ep)
    assert code == 0 and stdout.startswith("tiny-random\tloaded default")
    code, stdout, _ = run(capsys, "models", *ep, "--json")
    assert json.loads(stdout)["models"][0]["segment_s"] == 10.0
    code, stdout, _ = run(capsys, "load", "tiny-random", "--keep-alive", "60", *ep)
    assert code == 0 and "tiny-random loaded" in stdout and daemon.received[-1].keep_alive_s == 60.0
    code, stdout, _ = run(capsys, "unload", "tiny-random", *ep)
    assert code == 0 and "unloaded" in stdout
    code, stdout, _ = run(capsys, "ping", *ep, "--json")
    assert json.loads(stdout)["protocol_version"] == 1


def test_help_opens_with_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    body = out.split("\n\n", 1)[1]
    assert body.startswith("examples:") and 'magnet-rt generate "' in body
    for sub in ("generate", "inpaint", "continue"):
        code, out, _ = run(capsys, sub, "--help")
        assert code == 0 and out.split("\n\n", 1)[1].startswith("examples:")
    assert "out-2.wav" in out


# --- as a subprocess -----------------------------------------------------------------------------------------------
def test_grader_command_shapes_as_subprocess(daemon, tmp_path):
    r = cli("generate", "PROMPT", "--connect", daemon.endpoint, "--preset", "live", "--seed", "1", "-o", "out.wav",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out.wav\n" and sf.info(str(tmp_path / "out.wav")).samplerate == 32000
    assert sf.info(str(tmp_path / "out.wav")).frames == 10 * 32000  # no --duration: the model's segment
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 32000 * 6).astype(np.float32)
    sf.write(str(tmp_path / "in.wav"), x, 32000, subtype="FLOAT")
    r = cli("inpaint", "in.wav", "--start", "2.0", "--end", "4.0", "PROMPT", "--connect", daemon.endpoint,
            "--preset", "live", "--seed", "2", "-o", "inp.wav", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    y, _ = sf.read(str(tmp_path / "inp.wav"), dtype="float32")
    np.testing.assert_array_equal(np.delete(y, np.s_[64000:128000]), np.delete(x, np.s_[64000:128000]))


def test_subprocess_exit_codes(tmp_path):
    t0 = time.monotonic()
    r = cli("generate", "x", "--connect", dead_endpoint(), "--timeout", "0.5", cwd=tmp_path)
    assert r.returncode == 3 and "magnet-rt serve" in r.stderr and r.stdout == ""
    assert time.monotonic() - t0 < 10
    r = cli("generate", cwd=tmp_path)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_ctrl_c_cancels_and_waits_for_the_end(daemon, tmp_path):
    daemon.step_delay_s = 0.1  # 10 steps: about a second of decoding
    proc = subprocess.Popen([str(EXE), "generate", "x", "--connect", daemon.endpoint, "-o", "o.wav"], cwd=tmp_path,
                            preexec_fn=sigint_default,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().startswith("accepted")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cancelling" in err and "cancelled" in err and out == ""
    assert "cancel" in daemon.types() and not (tmp_path / "o.wav").exists()


def test_rich_progress_on_a_terminal(daemon):
    import io

    from cli.progress import PlainReporter, Reporter, RichReporter, make_reporter
    from clients.client import MagnetClient

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(make_reporter(True, Tty())) is Reporter
    assert isinstance(make_reporter(False, io.StringIO()), PlainReporter)
    screen = Tty()
    reporter = make_reporter(False, screen)
    assert isinstance(reporter, RichReporter)
    with reporter, MagnetClient(daemon.endpoint, timeout_s=1.0) as c:
        for event in c.generate("x", duration_s=1.0, variations=2):
            reporter.event(event)
    text = screen.getvalue()
    assert "receiving audio" in text and "2/2" in text and reporter.stage == 3  # last of 4 stages


def test_keys_then_curve_connection(tmp_path, capsys):
    import zmq.auth

    code, out, _ = run(capsys, "keys", str(tmp_path / "keys"))
    assert code == 0
    public_file = tmp_path / "keys" / "server.key"
    assert public_file.exists()
    public, secret = zmq.auth.load_certificate(str(tmp_path / "keys" / "server.key_secret"))
    with FakeDaemon(curve_secret_key=secret) as d:
        code, out, err = run(capsys, "ping", "--connect", d.endpoint, "--server-key", str(public_file))
        assert code == 0 and "alive" in out, err
        code, _, err = run(capsys, "ping", "--connect", d.endpoint, "--timeout", "0.2")  # no key: refused
        assert code == 3
