"""`python -m magnet_rt.train.recipe`: the demo bundle from nothing, in one command (docs/TRAINING.md).

    python -m magnet_rt.train.recipe --work out [--publish magnet_rt/assets/demo] [--dry-run]

Stages, each one the module command it prints (so any of them can be re-run alone), each resumable:

1. data: `datagen` renders 2400 captioned 10 s clips with FluidSynth (WORK/data/synth), balanced in style x drums;
2. codec: `codec --kind spectral` trains the full codec (PCA-initialised encoder, RVQ, decoder) for
   `--codec-steps` (WORK/runs/codec);
3. LM and decoder, side by side on two processes of one thread each: `magnet` trains the LM on the
   codec's tokens (frozen from here on) while `codec --decoder-only` keeps training the codec's decoder
   (WORK/runs/lm, WORK/runs/codec-dec) - the decoder has the most to learn and tokens do not change;
4. adherence: the prompt-adherence classifier and its scores on the LM bundle (WORK/runs/adherence);
5. publish: LM + fine-tuned decoder -> `--publish`, with the metrics; training curves -> docs PNG.

The shipped bundle was made by these stages with the settings below, except that its decoder was not
fine-tuned (the step-1500 codec ships) and its adherence used one seed (docs/TRAINING.md 3.4, 5.5); the
codec's first ~400 steps ran on two threads, so a re-run gives a comparable, not bit-identical, bundle.
CPU figures on 2 busy cores: 9 min (data) + 12 min (codec) + 70 min (LM, 1200 steps) + 15 min per
adherence seed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def stages(work: Path, publish: Path, args) -> list[tuple[str, list[list[str]]]]:
    py = [sys.executable, "-m"]
    data, runs = work / "data" / "synth", work / "runs"
    codec_base = runs / "codec" / "codec"
    return [
        ("data", [py + ["magnet_rt.train.datagen", "--out", str(data), "--n", str(args.clips), "--seed", "0",
                        "--seconds", "10", "--workers", str(args.threads), "--no-midi"]]),
        ("codec", [py + ["magnet_rt.train.codec", "--kind", "spectral", "--data", str(data), "--out",
                         str(runs / "codec"), "--steps", str(args.codec_steps), "--batch-size", "16", "--seconds",
                         "2", "--lr", "3e-4", "--threads", "1", "--eval-every", "500", "--eval-clips", "8"]]),
        ("lm+decoder", [
            py + ["magnet_rt.train.magnet", "--data", str(data), "--codec", str(codec_base), "--out",
                  str(runs / "lm"), "--steps", str(args.lm_steps), "--batch-size", "16", "--lr", "1e-3",
                  "--warmup", "100", "--ema-decay", "0.995", "--cfg-dropout", "0.2", "--valid", "96",
                  "--threads", "1", "--encode-workers", "2", "--eval-every", "250", "--ckpt-every", "100"],
            py + ["magnet_rt.train.codec", "--kind", "spectral", "--data", str(data), "--out", str(runs / "codec-dec"),
                  "--init", str(codec_base), "--decoder-only", "--steps", str(args.decoder_steps), "--batch-size",
                  "16", "--seconds", "2", "--lr", "3e-4", "--threads", "1", "--eval-every", "1000"],
        ]),
        ("adherence", [py + ["magnet_rt.train.adherence", "--data", str(data), "--bundle", str(runs / "lm" / "bundle"),
                             "--out", str(runs / "adherence"), "--valid", "96", "--threads", str(args.threads)]]),
        ("publish", [
            py + ["magnet_rt.train.publish", "--lm", str(runs / "lm" / "bundle"), "--codec",
                  str(runs / "codec-dec" / "codec"), "--out", str(publish), "--metrics",
                  str(runs / "adherence" / "adherence.json")],
            py + ["magnet_rt.train.curves", "--codec", str(runs / "codec"), str(runs / "codec-dec"), "--lm",
                  str(runs / "lm"), "--out", "docs/training-curves.png"],
        ]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m magnet_rt.train.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="out", help="data and runs go under WORK/data, WORK/runs")
    p.add_argument("--publish", default="magnet_rt/assets/demo")
    p.add_argument("--clips", type=int, default=2400)
    p.add_argument("--codec-steps", type=int, default=1500)
    p.add_argument("--lm-steps", type=int, default=1200)
    p.add_argument("--decoder-steps", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the single-process stages")
    p.add_argument("--from-stage", default="data", help="skip the stages before this one")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    todo = stages(Path(args.work), Path(args.publish), args)
    names = [n for n, _ in todo]
    if args.from_stage not in names:
        p.error(f"--from-stage must be one of {names}")
    for name, cmds in todo[names.index(args.from_stage):]:
        print(f"== {name}", flush=True)
        for c in cmds:
            print("   python " + shlex.join(c[1:]), flush=True)
        if args.dry_run:
            continue
        if name == "publish" or len(cmds) == 1:
            for c in cmds:
                subprocess.run(c, check=True)
        else:  # side by side
            procs = [subprocess.Popen(c) for c in cmds]
            codes = [pr.wait() for pr in procs]
            if any(codes):
                print(f"recipe: stage {name} failed: exit codes {codes}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
