"""The README is tested: every ```sh, ```bash and ```python block of README.md runs here as written, so the README
cannot drift from the code.

- Each block runs in a fresh temporary working directory holding the clips its examples name (`loop.wav`, 10 s;
  `verse.wav`, 60 s), with `.venv/bin` first on PATH (as after `source .venv/bin/activate`) and HOME in that
  directory. `make ...` lines run in the repository root, where the Makefile is.
- Shell blocks run line by line (`bash -c LINE`), each bounded in time; every line must exit 0.
  A `magnet-rt serve ...` or `make serve` line starts that daemon in the background. It binds
  $MAGNET_RT_ENDPOINT, which the test sets to `tcp://127.0.0.1:*` (a free loopback port) and then to the endpoint
  of its ready line for the block's later lines. It must report the model it was asked for (`demo` without
  --model) and exit 0 on SIGTERM at the end of the block.
  A block without a serve line talks to the README's daemon: `make serve` as written (the demo model), once.
- Outputs are checked: `magnet-rt generate|inpaint|continue` must print the paths it writes and write them (OUT,
  OUT-2, ... for --variations) as finite, non-silent audio of the length the options ask for (the model's 10 s
  segment, --duration, the source's length for inpaint, the source plus --duration for continue); `--json` prints
  one JSON object; every other magnet-rt command prints something.
- Python blocks run as scripts; a line ending in `# -> TEXT` must print TEXT as a line (in order), and every Python
  block has at least one.
- `--play` plays for real: through PortAudio into ALSA's null device, which the $HOME/.asoundrc written here makes
  the default output, so auditioning examples run on a machine without a sound card (libportaudio2 is one of the
  Debian packages `make test` installs).
- A fenced block without a kind is an error: label it sh/bash/python to run it, or text to show a synopsis.

The few lines that cannot run as written here are listed below, each with what runs instead and why. A listed
line that the README no longer has fails the test, so the list cannot go stale.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import sigint_default

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent
RUN_KINDS = ("sh", "bash", "python")
SHOW_KINDS = ("text", "console", "json", "yaml", "toml", "msgpack")  # shown, never run
SEGMENT_S = 10.0  # the segment of the models the test serves (demo, tiny-random)
SR = 32000
FRAME = SR // 50  # one codec frame: a take may be up to 2 of them short of its asked length
LINE_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
READY = re.compile(r"magnet-rt ready on (\S+) model=(\S+) device=(\S+)")
EXPECT = re.compile(r"#\s*->\s*(.+?)\s*$")
CLIPS = {"loop.wav": 10.0, "verse.wav": 60.0}  # what the CLI examples inpaint and continue

# Lines that cannot run as written here: what runs instead, and why.
INSTEAD = {
    "make test": (
        "make -n test",
        "`make test` runs the whole suite, this test included: it would call itself. The dry run checks that the "
        "target exists and runs pytest."),
    "magnet-rt serve --model facebook/magnet-small-10secs --rescorer facebook/musicgen-small": (
        "magnet-rt serve --model tiny-random --rescorer tiny-random",
        "the released MAGNeT and MusicGen come from the model hub, which tests never reach; tiny-random and its "
        "random MusicGen are built offline in the same formats and share a codec and text size, as the real pair do."),
}
# Lines that run until Ctrl-C, as the README says: interrupted (SIGINT to their process group, as a terminal does)
# once their output holds audio; they must then exit 0 with a valid WAV.
UNTIL_CTRL_C = {
    'magnet-rt generate "deep house" --endless --play -o live.wav':
        "an endless stream: it runs until Ctrl-C (the README: 'Ctrl-C cancels, exit 0')",
}


@dataclass(frozen=True)
class Block:
    kind: str
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.kind}"


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(.*)$", lines[i])
        if m is None:
            i += 1
            continue
        body, j = [], i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            body.append(lines[j])
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: a fenced block is never closed"
        out.append(Block(m.group(1).strip(), i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return out


def key(command: str) -> str:
    """A shell line without its comment, normalised: how lines are matched against INSTEAD and UNTIL_CTRL_C."""
    return shlex.join(shlex.split(command, comments=True))


BLOCKS = readme_blocks()
RUNNABLE = [b for b in BLOCKS if b.kind in RUN_KINDS]
INSTEAD_BY_KEY = {key(line): instead for line, (instead, _why) in INSTEAD.items()}
CTRL_C_KEYS = {key(line) for line in UNTIL_CTRL_C}


def shell_lines(text: str) -> list[str]:
    out, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    return out


# --- what the examples need around them ---------------------------------------------------------------------------
def groove(seconds: float, bpm: float = 96.0) -> np.ndarray:
    """A clip to inpaint and continue: a decaying kick on every beat over a soft A minor chord, 32 kHz mono."""
    t = np.arange(int(round(seconds * SR))) / SR
    beat = (t * bpm / 60.0) % 1.0 * 60.0 / bpm  # seconds since the last beat
    kick = np.sin(2 * np.pi * 55.0 * beat) * np.exp(-beat * 18.0)
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63)) / 3.0
    return (0.5 * kick + 0.2 * chord).astype(np.float32)


def workdir(tmp_path: Path) -> Path:
    for name, seconds in CLIPS.items():
        sf.write(str(tmp_path / name), groove(seconds), SR, subtype="FLOAT")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("pcm.!default {\n  type null\n}\n")  # a silent sound card for --play
    return tmp_path


def base_env(tmp_path_factory, home: Path) -> dict[str, str]:
    cache = os.environ.get("MAGNET_RT_CACHE") or str(tmp_path_factory.getbasetemp() / "magnet-rt-cache")
    env = {**os.environ, "HOME": str(home), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MAGNET_RT_CACHE": cache, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name in ("MAGNET_RT_ENDPOINT", "MAGNET_RT_DEBUG", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)  # the test's own settings only (a make above pytest must not leak into `make serve`)
    return env


# --- daemons ------------------------------------------------------------------------------------------------------
def children_of(pid: int) -> list[int]:
    """Every descendant of `pid`, parents first (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class Daemon:
    """A serve line run in the background (own process group), ready once it prints its ready line."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path):
        self.command, self.log = command, log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                         env={**env, "MAGNET_RT_ENDPOINT": "tcp://127.0.0.1:*"})
        self.stdout: list[str] = []
        self._ready = threading.Event()
        self.ready: re.Match | None = None
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(READY_TIMEOUT_S) or self.ready is None:
            self.kill()
            pytest.fail(f"`{command}` printed no ready line within {READY_TIMEOUT_S:.0f} s\n{self.tail()}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            if self.ready is None and (m := READY.search(line)):
                self.ready = m
                self._ready.set()
        self._ready.set()  # ended without one

    def tail(self) -> str:
        return "stdout:\n" + "".join(self.stdout)[-2000:] + "\nstderr:\n" + self.log.read_text()[-3000:]

    def server_pid(self) -> int | None:
        """The `magnet-rt serve` process itself (under `bash -c`, and under make for `make serve`)."""
        found = None
        for pid in [self.proc.pid, *children_of(self.proc.pid)]:
            argv = cmdline(pid)
            if any(a.endswith("magnet-rt") for a in argv) and "serve" in argv:
                found = pid
        return found

    def stop(self) -> int:
        """SIGTERM to the daemon (a clean stop: its parents, make included, then exit 0 too); the exit status."""
        if self.proc.poll() is None:
            pid = self.server_pid()
            assert pid is not None, f"`{self.command}`: no magnet-rt serve process under it\n{self.tail()}"
            os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"`{self.command}` did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM\n{self.tail()}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def is_serve(argv: list[str]) -> bool:
    return argv[:2] in (["magnet-rt", "serve"], ["make", "serve"])


def start_daemon(command: str, cwd: Path, env: dict[str, str], log: Path) -> Daemon:
    argv = shlex.split(command, comments=True)
    d = Daemon(command, REPO if argv[0] == "make" else cwd, env, log)
    endpoint, model, _device = d.ready.groups()
    asked = argv[argv.index("--model") + 1] if "--model" in argv else "demo"  # the default model (README, Makefile)
    assert model == asked, f"`{command}` serves {model}, not {asked}\n{d.tail()}"
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoint), endpoint
    return d


@pytest.fixture(scope="module")
def readme_daemon(tmp_path_factory):
    """The daemon the README's first block starts, `make serve` (the demo model): for blocks without their own."""
    home = tmp_path_factory.mktemp("readme-daemon")
    d = start_daemon("make serve", home, base_env(tmp_path_factory, home), home / "daemon.log")
    yield d.ready.group(1)
    assert d.stop() == 0, d.tail()


# --- checks -------------------------------------------------------------------------------------------------------
def option(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return default


def take_paths(argv: list[str]) -> list[str]:
    base = option(argv, "-o", "--output", default="out.wav")
    n = int(option(argv, "--variations", default="1"))
    stem, dot, ext = base.rpartition(".")
    return [base] + [f"{stem}-{i}.{ext}" if dot else f"{base}-{i}" for i in range(2, n + 1)]


def check_take(path: Path, frames: int | None, at_least: int = 1, rate: int = SR, channels: int = 1) -> None:
    assert path.is_file(), f"{path.name} was not written"
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert (sr, x.shape[1]) == (rate, channels), f"{path.name}: {sr} Hz x {x.shape[1]} channels"
    if frames is None:
        assert len(x) >= at_least, f"{path.name}: {len(x)} samples, expected at least {at_least}"
    else:
        assert frames - 2 * FRAME <= len(x) <= frames, f"{path.name}: {len(x)} samples, expected {frames}"
    assert np.isfinite(x).all() and np.abs(x).max() > 0, f"{path.name} is silent or not finite"


def check_render(argv: list[str], r: subprocess.CompletedProcess, cwd: Path) -> None:
    verb, paths = argv[1], take_paths(argv)
    if "--json" in argv:
        json.loads(r.stdout)  # one JSON object, nothing else
    else:
        assert r.stdout.split("\n")[:-1] == paths, f"stdout should list the takes written: {r.stdout!r}"
    duration = option(argv, "--duration")
    for name in paths:
        if verb == "generate" and "--endless" in argv:
            check_take(cwd / name, None, at_least=SR)
        elif verb == "generate":
            check_take(cwd / name, round(float(duration or SEGMENT_S) * SR))
        else:
            source = sf.info(str(cwd / argv[2]))
            if verb == "inpaint":  # exactly the source's length, rate and channels
                check_take(cwd / name, source.frames, rate=source.samplerate, channels=source.channels)
                assert sf.info(str(cwd / name)).frames == source.frames
            else:  # continue: the source, then --duration (default: the model's segment) more
                added = round(float(duration or SEGMENT_S) * source.samplerate)
                check_take(cwd / name, source.frames + added, rate=source.samplerate, channels=source.channels)


def check_line(argv: list[str], r: subprocess.CompletedProcess, cwd: Path) -> None:
    if argv[:1] == ["magnet-rt"] and argv[1:2] in (["generate"], ["inpaint"], ["continue"]):
        check_render(argv, r, cwd)
    elif argv[:1] == ["magnet-rt"]:
        assert r.stdout.strip(), f"`{shlex.join(argv)}` printed nothing"
    elif argv[:3] == ["make", "-n", "test"]:
        assert "pytest" in r.stdout, r.stdout


def run_until_ctrl_c(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = cwd / take_paths(shlex.split(command, comments=True))[0]
    with open(cwd / "ctrl-c.out", "w+") as so, open(cwd / "ctrl-c.err", "w+") as se:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=so, stderr=se,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=sigint_default)
        deadline, frames = time.monotonic() + LINE_TIMEOUT_S, 0
        while frames == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                frames = sf.info(str(out)).frames
            except (OSError, RuntimeError):  # not there yet, or its header is being written
                frames = 0
        assert proc.poll() is None, f"`{command}` ended before Ctrl-C (exit {proc.returncode})"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on a terminal does
        try:
            rc = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            pytest.fail(f"`{command}` did not stop within {STOP_TIMEOUT_S:.0f} s of Ctrl-C")
        so.seek(0)
        se.seek(0)
        return subprocess.CompletedProcess(command, rc, so.read(), se.read())


# --- the tests ----------------------------------------------------------------------------------------------------
def test_every_block_has_a_kind_and_the_exceptions_are_current():
    unlabelled = [f"README.md:{b.line}" for b in BLOCKS if b.kind not in RUN_KINDS + SHOW_KINDS]
    assert not unlabelled, f"fenced blocks with no known kind (sh, bash, python run; text shows): {unlabelled}"
    assert RUNNABLE, "README.md has no runnable example"
    lines = {key(line) for b in RUNNABLE if b.kind != "python" for line in shell_lines(b.text)}
    stale = [k for k in [*INSTEAD, *UNTIL_CTRL_C] if key(k) not in lines]
    assert not stale, f"listed as exceptions but not in README.md any more: {stale}"
    first = next(b for b in RUNNABLE if b.kind != "python")
    assert [key(x) for x in shell_lines(first.text)][:2] == ["make serve", "make test"]


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block_runs_as_written(block: Block, tmp_path, tmp_path_factory, request):
    cwd = workdir(tmp_path)
    env = base_env(tmp_path_factory, cwd / "home")
    if block.kind == "python":
        run_python(block, cwd, env, request)
    else:
        run_shell(block, cwd, env, request)


def run_python(block: Block, cwd: Path, env: dict[str, str], request) -> None:
    expected = [m.group(1) for line in block.text.splitlines() if (m := EXPECT.search(line))]
    assert expected, f"README.md:{block.line}: a Python example should show what it prints (`# -> TEXT`)"
    env["MAGNET_RT_ENDPOINT"] = request.getfixturevalue("readme_daemon")
    script = cwd / f"readme_{block.line}.py"
    script.write_text(block.text)
    r = subprocess.run([sys.executable, script.name], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=LINE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"README.md:{block.line}: exit {r.returncode}\n{r.stderr[-4000:]}"
    printed = iter(r.stdout.splitlines())
    for want in expected:
        assert any(got.strip() == want for got in printed), f"README.md:{block.line}: no line {want!r} " \
                                                            f"(in order) in its output:\n{r.stdout}"


def run_shell(block: Block, cwd: Path, env: dict[str, str], request) -> None:
    lines = shell_lines(block.text)
    commands = [INSTEAD_BY_KEY.get(key(line), line) for line in lines]
    daemons: list[Daemon] = []
    if not any(is_serve(shlex.split(c, comments=True)) for c in commands):
        env["MAGNET_RT_ENDPOINT"] = request.getfixturevalue("readme_daemon")
    try:
        for line, command in zip(lines, commands, strict=True):
            argv = shlex.split(command, comments=True)
            where = f"README.md:{block.line}: `{line.strip()}`" + (f" (run as `{command}`)" if command != line else "")
            if is_serve(argv):
                d = start_daemon(command, cwd, env, cwd / f"daemon-{len(daemons)}.log")
                daemons.append(d)
                env["MAGNET_RT_ENDPOINT"] = d.ready.group(1)
                continue
            if key(line) in CTRL_C_KEYS:
                r = run_until_ctrl_c(command, cwd, env)
            else:
                r = subprocess.run(["bash", "-c", command], cwd=REPO if argv[0] == "make" else cwd, env=env,
                                   capture_output=True, text=True, timeout=LINE_TIMEOUT_S, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, f"{where}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
            check_line(argv, r, cwd)
    finally:
        codes = [(d.command, d.stop()) for d in daemons]
    for command, code in codes:
        assert code == 0, f"README.md:{block.line}: `{command}` exited {code} on SIGTERM"
