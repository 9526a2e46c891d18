"""`python -m magnet_rt.train.magnet`: the demo MAGNeT, from scratch, on the demo codec's tokens of the
generated data, conditioned on all-MiniLM-L6-v2 (see docs/TRAINING.md). Same options as `magnet-rt train`
with demo defaults (dim 256, 6 layers, 4 heads, 10 s segments, MiniLM, batch 16)."""

from __future__ import annotations

from .cli import main as train_main

DEMO_DEFAULTS = {"dim": 256, "layers": 6, "heads": 4, "segment": 10.0, "text_encoder": "minilm", "batch_size": 16,
                 "steps": 20000, "lr": 5e-4, "ckpt_every": 250, "eval_every": 500}


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, prog="python -m magnet_rt.train.magnet", defaults=DEMO_DEFAULTS)


if __name__ == "__main__":
    raise SystemExit(main())
