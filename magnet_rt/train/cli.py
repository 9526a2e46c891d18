"""`magnet-rt train`: train or fine-tune a MAGNeT LM on a folder of captioned audio.

    magnet-rt train --data DIR --init facebook/magnet-small-10secs --out runs/ft --steps 2000
    magnet-rt train --data DIR --codec runs/codec/bundle --text-encoder minilm --dim 256 --layers 6 --out runs/lm

`--init` takes anything `registry.load_pipeline` takes (a released hub id, a folder with state_dict.bin +
compression_state_dict.bin, "tiny-random") or a magnet-rt bundle folder; the LM starts from its weights
and the codec and text encoder stay frozen. Without `--init`, a new LM is built (`--dim/--layers/--heads`)
over the codec of `--codec` (a bundle or a released folder) and the text encoder of `--text-encoder`.
Running the same command again resumes from OUT/trainer.pt.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger("magnet_rt.train")


def build_parser(prog: str = "magnet-rt train", defaults: dict | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder of audio files with captions (.txt beside or captions.jsonl)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, bundle, export)")
    p.add_argument("--init", help="model to fine-tune: registry name, hub id, released folder or bundle")
    p.add_argument("--codec", help="(from scratch) codec: a bundle folder or a folder with compression_state_dict.bin")
    p.add_argument("--text-encoder", default="minilm", help="(from scratch) 'minilm' or a T5 name/folder")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--segment", type=float, default=10.0, help="(from scratch) training segment, seconds")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps (resume continues to this)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="peak LR (default 5e-4 from scratch, 1e-5 fine-tuning)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default min(500, steps // 10))")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cfg-dropout", type=float, default=0.3, help="batch-wise condition dropout probability")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hybrid", action="store_true",
                   help="Hybrid-MAGNeT objective: causal attention and an AR loss before a random split")
    p.add_argument("--ar-weight", type=float, default=1.0, help="weight of the AR loss with --hybrid")
    p.add_argument("--contrast-weight", type=float, default=0.0,
                   help="weight of the counterfactual-caption hinge (key/tempo changed; train/contrast.py)")
    p.add_argument("--contrast-margin", type=float, default=0.5, help="its margin in nats")
    p.add_argument("--contrast-near-keys", type=float, default=0.0,
                   help="share of key counterfactuals that are a nearest key (fifth up or down, relative, parallel)")
    p.add_argument("--contrast-stages", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="codebook stages whose batches get the hinge (0: the first codebook, where the key is)")
    p.add_argument("--contrast-kinds", nargs="+", choices=["key", "tempo", "drums"], default=["key", "tempo"],
                   help="what its counterfactual captions change (drums: 'with drums' <-> 'no drums')")
    p.add_argument("--beat-grid", action="store_true",
                   help="give the LM a beat grid input from the captions' 'N bpm' (magnet_rt/tempo.py); with "
                        "--init, added to the initial LM at zero (it starts computing exactly as before)")
    p.add_argument("--beat-dropout", type=float, default=0.3,
                   help="with a beat grid: probability of training a row without it (prompts with no tempo)")
    p.add_argument("--key-input", action="store_true",
                   help="give the LM a key input from the captions' 'E minor' (magnet_rt/tonality.py); with "
                        "--init, added to the initial LM at zero")
    p.add_argument("--key-dropout", type=float, default=0.3,
                   help="with a key input: probability of training a row without it (prompts with no key)")
    p.add_argument("--control-lr-scale", type=float, default=20.0,
                   help="the beat grid's and key input's projections learn at --lr times this")
    p.add_argument("--valid", type=int, default=32, help="files held out for evaluation")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--encode-workers", type=int, default=1,
                   help="processes that encode the data folder to tokens (first run only; needs --codec)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--publish", help="also write the final bundle here (e.g. magnet_rt/assets/demo)")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/trainer.pt")
    if defaults:
        p.set_defaults(**defaults)
    return p


def load_init(name: str, device):
    """(lm, text_encoder, codec, text encoder name) from a bundle or anything load_pipeline takes."""
    from ..bundle import is_bundle, load_bundle
    from ..registry import load_pipeline

    pipe = load_bundle(name, device=device) if is_bundle(name) else load_pipeline(name, device=str(device))
    te_name = getattr(pipe.lm, "text_encoder_name", "") or "t5-base"
    return pipe.lm, pipe.text_encoder, pipe.codec, te_name


def build_scratch(args, device):
    from ..lm import MagnetConfig, MagnetLM
    from ..minilm import MINILM_NAME, MiniLMTextEncoder

    if not args.codec:
        raise SystemExit("magnet-rt train: without --init, --codec is required (the codec whose tokens to model)")
    from .data import load_codec_any

    codec = load_codec_any(args.codec, device)
    if args.text_encoder == "minilm":
        te, te_name = MiniLMTextEncoder.from_pretrained(device=device), MINILM_NAME
    else:
        from ..conditioning import T5TextEncoder

        te, te_name = T5TextEncoder.from_pretrained(args.text_encoder, device=device), args.text_encoder
    cfg = MagnetConfig(dim=args.dim, num_heads=args.heads, num_layers=args.layers, n_q=codec.n_q, card=codec.card,
                       text_dim=te.dim, segment_duration=args.segment, frame_rate=codec.frame_rate)
    lm = MagnetLM(cfg).init_weights(args.seed).to(device)
    return lm, te, codec, te_name


def main(argv: list[str] | None = None, prog: str = "magnet-rt train", defaults: dict | None = None) -> int:
    args = build_parser(prog, defaults).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..devices import pick_device
    from ..errors import MagnetError
    from ..tempo import BEAT_FEATURES
    from ..tonality import KEY_FEATURES
    from .data import encode_folder
    from .loop import fit_lm
    from .trainer import LMTrainer, TrainConfig

    try:
        device = pick_device(args.device)
        if args.init:
            lm, te, codec, te_name = load_init(args.init, device)
        else:
            lm, te, codec, te_name = build_scratch(args, device)
        if args.beat_grid and lm.beat_proj is None:
            lm = lm.with_control("beat_features", BEAT_FEATURES)
        if args.key_input and lm.key_proj is None:
            lm = lm.with_control("key_features", KEY_FEATURES)
        workers = args.encode_workers if args.codec and not args.init else 1
        tokens = encode_folder(codec, args.data, workers=workers, codec_path=args.codec)
        n_valid = min(args.valid, max(0, len(tokens) // 10))
        train, valid = tokens.split(n_valid)
        lr = args.lr if args.lr is not None else (1e-5 if args.init else 5e-4)
        warmup = args.warmup if args.warmup is not None else min(500, args.steps // 10)
        cfg = TrainConfig(lr=lr, weight_decay=args.weight_decay, warmup_steps=warmup, total_steps=args.steps,
                          grad_clip=args.grad_clip, ema_decay=args.ema_decay, cfg_dropout=args.cfg_dropout,
                          seed=args.seed, hybrid=args.hybrid, ar_weight=args.ar_weight,
                          contrast_weight=args.contrast_weight, contrast_margin=args.contrast_margin,
                          contrast_near_keys=args.contrast_near_keys, contrast_stages=tuple(args.contrast_stages),
                          contrast_kinds=tuple(args.contrast_kinds),
                          beat_dropout=args.beat_dropout, key_dropout=args.key_dropout,
                          control_lr_scale=args.control_lr_scale)
        trainer = LMTrainer(lm, te, cfg, amp_dtype=torch.bfloat16 if device.type == "cuda" else None)
        n_params = sum(p.numel() for p in lm.parameters())
        log.info("LM %.2fM params, %d train / %d held-out files, %d steps of batch %d", n_params / 1e6, len(train),
                 len(valid), args.steps, args.batch_size)
        provenance = {"init": args.init, "data": str(Path(args.data).resolve()), "codec": args.codec,
                      "text_encoder": te_name, "lm_params": n_params, "name": Path(args.out).name}
        metrics = fit_lm(trainer, codec, train, valid, args.out, steps=args.steps, batch_size=args.batch_size,
                         frames=lm.cfg.segment_frames, log_every=args.log_every, ckpt_every=args.ckpt_every,
                         eval_every=args.eval_every, provenance=provenance, text_encoder_name=te_name,
                         publish=args.publish, resume=not args.no_resume,
                         max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    except (MagnetError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if metrics:
        print(f"{prog}: step {trainer.step}, held-out loss {metrics.get('loss', float('nan')):.4f}")
    export = Path(args.out) / "export" / "state_dict.bin"
    print(f"{prog}: bundle at {Path(args.out) / 'bundle'}"
          + (f", released-format export at {export.parent}" if export.is_file() else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
