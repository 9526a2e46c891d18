"""`make demo`: start the daemon, make three takes and one inpaint through the CLI, plot them, stop.

    python -m cli.demo [--model demo|tiny-random|FOLDER] [--out out/demo] [--preset live]

The model defaults to the daemon's (`registry.default_model`: the shipped demo bundle; `tiny-random`, random
weights, said plainly, only in a checkout without the bundle). Everything goes through the real command line
(`magnet-rt serve`, `magnet-rt generate`, `magnet-rt inpaint`) on a free loopback port. Writes `take-1.wav` ..
`take-3.wav`, `inpainted.wav` and `demo.png` (waveform and spectrogram of each, the inpainted region marked),
overwriting those of an earlier run. Each stage says on stderr what it does and how long it took, and each take
shows the CLI's progress.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from magnet_rt import registry

# In the demo model's vocabulary (the data generator's captions: styles, GM instruments, drums, tempo, key).
PROMPTS = (
    "energetic funk with clavinet, slap bass and drums at 110 bpm in E minor",
    "gentle ambient track, vibraphone over warm pad, without drums, 66 bpm, C major",
    "driving rock with distorted guitar, electric bass and drums at 140 bpm in A minor",
)
INPAINT = ("funk with alto sax, slap bass and drums", 3.0, 5.0)  # prompt, start_s, end_s in take 1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def say(text: str, since: float | None = None) -> None:
    """One progress line on stderr, with the seconds a stage took when `since` is given."""
    took = f" ({time.monotonic() - since:.1f} s)" if since is not None else ""
    print(f"demo: {text}{took}", file=sys.stderr, flush=True)


def start_daemon(model: str, timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(_cli("serve", "--model", model, "--bind", "tcp://127.0.0.1:*"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"ready on (\S+)", line):
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"the daemon did not get ready within {timeout_s:g} s")


def plot(files: list[Path], region: tuple[float, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import soundfile as sf

    fig, axes = plt.subplots(len(files), 2, figsize=(13, 2.4 * len(files)), squeeze=False)
    for row, f in zip(axes, files, strict=True):
        x, sr = sf.read(f, always_2d=True)
        mono = x.mean(axis=1)
        t = np.arange(len(mono)) / sr
        row[0].plot(t, mono, linewidth=0.3)
        row[0].set_title(f.name, fontsize=9)
        row[0].set_xlim(0, t[-1] if len(t) else 1)
        row[1].specgram(mono + 1e-9, NFFT=1024, Fs=sr, noverlap=768, cmap="magma")
        row[1].set_ylim(0, min(8000, sr / 2))
        if f.name.startswith("inpainted"):
            for ax in row:
                ax.axvspan(*region, color="cyan", alpha=0.25, label="regenerated")
            row[0].legend(loc="upper right", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the shipped demo bundle")
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--preset", default="live")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--param", action="append", default=[], help="extra KEY=JSON decoding overrides")
    args = ap.parse_args(argv)
    model = args.model or registry.default_model()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if model == "tiny-random":
        print("demo: no trained demo bundle yet; using tiny-random (random weights: noise, not music)",
              file=sys.stderr)
    t0 = time.monotonic()
    say(f"starting the daemon on model {model} (loading and warming it up) ...")
    proc, endpoint = start_daemon(model)
    say(f"daemon ready on {endpoint}", t0)
    extra = [a for p in args.param for a in ("--param", p)]
    try:
        files = []
        for i, prompt in enumerate(PROMPTS, 1):
            wav, t = out / f"take-{i}.wav", time.monotonic()
            say(f"take {i}/{len(PROMPTS)}: {args.duration:g} s of \"{prompt}\" ...")
            subprocess.run(_cli("generate", prompt, "--connect", endpoint, "--preset", args.preset, "--seed", str(i),
                                "--duration", str(args.duration), "--force", "-o", str(wav), *extra), check=True,
                           stdout=subprocess.DEVNULL)
            say(f"take {i} written to {wav}", t)
            files.append(wav)
        prompt, start, end = INPAINT
        wav, t = out / "inpainted.wav", time.monotonic()
        say(f"inpainting {start:g}-{end:g} s of take 1 with \"{prompt}\" ...")
        subprocess.run(_cli("inpaint", str(files[0]), "--start", str(start), "--end", str(end), prompt, "--connect",
                            endpoint, "--preset", args.preset, "--seed", "7", "--force", "-o", str(wav), *extra),
                       check=True, stdout=subprocess.DEVNULL)
        say(f"inpaint written to {wav}", t)
        files.append(wav)
    finally:
        say("stopping the daemon")
        proc.terminate()
        proc.wait(timeout=60)
    say("plotting ...")
    plot(files, (INPAINT[1], INPAINT[2]), out / "demo.png")
    say(f"plot written to {out / 'demo.png'}; all done", t0)
    for f in [*files, out / "demo.png"]:
        print(f)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
