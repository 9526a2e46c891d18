"""Which caption words does an LM use? Held-out masked cross-entropy per codebook with the true caption,
with its key moved by a tritone (mode kept), with its tempo scaled by 1.5 (or 1/1.5 above 110 bpm), and
with no text, on the same masks: a word the LM uses raises the CE when it is changed.

    python -m benchmarks.text_sensitivity --data out/data/synth --bundle out/runs/lm4/bundle [--valid 96]

Teacher forcing shows what the model has learned; the outside ear (`benchmarks.music_quality`) shows what
its takes do with it. Held out: the last `--valid` files (the LM trainer's split). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONDITIONS = ("true", "key", "tempo", "none")


def key_moved(caption: str) -> str | None:
    """The caption's key moved by a tritone."""
    from magnet_rt.train.contrast import with_key_moved

    return with_key_moved(caption, 6)


def tempo_moved(caption: str) -> str | None:
    """The caption's tempo x1.5, or /1.5 above 110 bpm."""
    from magnet_rt.train.contrast import with_tempo

    return with_tempo(caption, lambda bpm: bpm * 1.5 if bpm <= 110 else bpm / 1.5)


def sensitivity(bundle: str, data: str, valid: int = 96, batch: int = 16) -> dict:
    """Mean masked CE per codebook for each condition (rows lacking a key or tempo phrase keep their caption)."""
    import torch

    from magnet_rt.registry import load_pipeline
    from magnet_rt.train.data import encode_folder
    from magnet_rt.train.trainer import LMTrainer

    pipe = load_pipeline(bundle, device="cpu")  # fp32 on the CPU
    _, held = encode_folder(pipe.codec, data).split(valid)
    trainer = LMTrainer(pipe.lm, pipe.text_encoder)
    change = {"true": lambda c: c, "key": lambda c: key_moved(c) or c, "tempo": lambda c: tempo_moved(c) or c,
              "none": lambda c: None}
    frames = pipe.lm.cfg.segment_frames
    batches = [held.batch(list(range(i, min(i + batch, len(held)))), frames) for i in range(0, len(held), batch)]
    ce: dict[str, list[float]] = {}
    for cond in CONDITIONS:
        sums = [0.0] * pipe.lm.n_q
        for codes, captions, valid_frames, first_frames in batches:
            for s in range(pipe.lm.n_q):
                trainer.generator = torch.Generator().manual_seed(1234 + s)  # the same masks for every condition
                with torch.no_grad():
                    loss, _ = trainer.compute_loss(codes, [change[cond](c) for c in captions], valid_frames, stage=s,
                                                   drop=False, contrast=False, first_frames=first_frames)
                sums[s] += float(loss) / len(batches)
        ce[cond] = [round(v, 4) for v in sums]
    return {"bundle": bundle, "files": len(held), "ce": ce,
            "delta": {c: [round(a - b, 4) for a, b in zip(ce[c], ce["true"], strict=True)] for c in CONDITIONS[1:]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.text_sensitivity", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the datagen folder the LM was trained on")
    p.add_argument("--bundle", required=True, help="a magnet-rt bundle folder or registry name (demo)")
    p.add_argument("--valid", type=int, default=96, help="held-out files (the trainer's --valid)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (Path(args.data) / "captions.jsonl").is_file():
        print(f"text_sensitivity: error: {args.data} has no captions.jsonl", file=sys.stderr)
        return 2
    print(json.dumps(sensitivity(args.bundle, args.data, args.valid)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
