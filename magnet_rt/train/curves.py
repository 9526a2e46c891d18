"""`python -m magnet_rt.train.curves`: training curves of codec and LM runs as one PNG.

    python -m magnet_rt.train.curves --codec out/runs/codec out/runs/codec-dec --lm out/runs/lm \
        --out docs/training-curves.png

Reads each run's log.jsonl (train rows and {"eval": ...} rows). Codec panels: training loss terms and
held-out mel distance / SI-SDR. LM panels: training loss per codebook stage (smoothed) and held-out
loss per stage. Runs given to one option are drawn one after another on a shared step axis when the
second starts from the first (a decoder-only fine-tune continues the codec curve).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_log(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of RUN/log.jsonl; a step logged twice (after a resume) keeps the last row."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for line in (Path(run) / "log.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "eval" in row:
            evals[int(row["eval"]["step"])] = row["eval"]
        elif "step" in row:
            train[int(row["step"])] = row
    return [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)]


def smooth(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) < n or n <= 1:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def chained(runs: list[str]):
    """(run, train rows, eval rows, step offset) of each run with a log: a run whose count restarted (a new
    run from --init, not a resume) is drawn after the one before it on a shared step axis. `RUN:N` draws
    RUN up to step N only (the step the next run started from, when RUN went on after that)."""
    offset, last = 0, 0
    for spec in runs:
        run, _, until = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
        train, evals = read_log(run)
        if until:
            train = [t for t in train if t["step"] <= int(until)]
            evals = [e for e in evals if e["step"] <= int(until)]
        if not train:
            continue
        if train[0]["step"] < last / 2:
            offset = last
        yield run, train, evals, offset
        last = int(train[-1]["step"]) + offset


def plot(codec_runs: list[str], lm_runs: list[str], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (1 if codec_runs else 0) + (1 if lm_runs else 0)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.6 * rows), squeeze=False)
    r = 0
    if codec_runs:
        sdr = []
        for run, train, evals, offset in chained(codec_runs):
            steps = np.array([t["step"] for t in train]) + offset
            for key in (k for k in ("mel", "logmag", "sc", "l1") if k in train[0]):  # the spectral codec: logmag, sc
                y = smooth(np.array([t[key] for t in train]), 20)
                axes[r, 0].plot(steps[len(steps) - len(y):], y, label=f"{key} ({Path(run).name})")
            if evals:
                es = [e["step"] + offset for e in evals]
                axes[r, 1].plot(es, [e["mel_distance"] for e in evals], "o-", label=f"mel distance ({Path(run).name})")
                sdr += [(x, e["si_sdr"]) for x, e in zip(es, evals, strict=True)]
        if sdr:
            ax2 = axes[r, 1].twinx()
            ax2.plot(*zip(*sorted(sdr), strict=True), "s--", color="gray", label="SI-SDR (dB)")
            ax2.set_ylabel("SI-SDR (dB), gray")
        axes[r, 0].set(title="codec: training losses (20-step mean)", xlabel="step")
        axes[r, 0].legend(fontsize=7)
        axes[r, 1].set(title="codec: held-out mel distance", xlabel="step")
        axes[r, 1].legend(fontsize=7, loc="upper center")
        r += 1
    if lm_runs:
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (run, train, evals, offset) in enumerate(chained(lm_runs)):
            for s in range(4):
                label = f"stage {s}" if i == 0 else None
                pts = [(t["step"] + offset, t["loss"]) for t in train if t.get("stage") == s]
                if pts:
                    x, y = np.array(pts).T
                    k = len(smooth(y, 5))
                    axes[r, 0].plot(x[len(x) - k:], smooth(y, 5), color=colours[s], label=label)
                if evals:
                    axes[r, 1].plot([e["step"] + offset for e in evals], [e[f"loss_stage{s}"] for e in evals], "o-",
                                    color=colours[s], label=label)
            if offset:
                for ax in axes[r]:
                    ax.axvline(offset, color="gray", lw=0.8, ls=":")
                    ax.annotate(Path(run).name, (offset, 1), xycoords=("data", "axes fraction"), fontsize=7,
                                va="top", color="gray")
        axes[r, 0].set(title="LM: training loss on masked tokens, per stage", xlabel="step", ylabel="cross-entropy")
        axes[r, 1].set(title="LM: held-out loss per stage (EMA weights)", xlabel="step")
        for ax in axes[r]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m magnet_rt.train.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", nargs="*", default=[], help="codec run folders, in order")
    p.add_argument("--lm", nargs="*", default=[], help="LM run folders")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not args.codec and not args.lm:
        p.error("give --codec and/or --lm run folders")
    print(plot(args.codec, args.lm, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
