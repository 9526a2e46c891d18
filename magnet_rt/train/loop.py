"""The LM training run shared by `magnet-rt train` (fine-tuning) and `python -m magnet_rt.train.magnet`
(the demo model from scratch): resumable loop, logs, held-out evaluation, bundle + audiocraft export.

OUT/
  trainer.pt        latest resumable state (model, optimizer, scheduler, EMA, step, RNG), weights_only
  log.jsonl         one JSON object per logged step / evaluation
  bundle/           the EMA weights as a magnet-rt bundle (model.safetensors, codec.safetensors, config.json)
  export/           the EMA weights in the released format: state_dict.bin + compression_state_dict.bin (EnCodec
                    only; an LM with a beat grid has no released form)
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .data import TokenSet
from .trainer import LMTrainer

log = logging.getLogger(__name__)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def eval_batches(tokens: TokenSet, batch_size: int, frames: int, max_batches: int = 4):
    """Fixed held-out batches (codes, captions, first frames; crops drawn with seed 0), the same at every
    evaluation."""
    g = torch.Generator().manual_seed(0)
    n = min(len(tokens), batch_size * max_batches)
    batches = [tokens.batch(list(range(i, min(n, i + batch_size))), frames, g) for i in range(0, n, batch_size)]
    return [(codes, captions, first) for codes, captions, _, first in batches]


def export_run(trainer: LMTrainer, codec, out: Path, provenance: dict, metrics: dict, text_encoder_name: str,
               publish: Path | None = None, lm_dtype: torch.dtype = torch.float16) -> Path:
    """Write OUT/bundle (EMA weights) and OUT/export (released format); copy the bundle to `publish`."""
    from ..bundle import save_bundle
    from ..checkpoints import save_audiocraft_lm
    from ..codec import Codec
    from ..conditioning import T5TextEncoder
    from ..encodec_checkpoints import audiocraft_xp_cfg, write_audiocraft_compression_checkpoint
    from ..pipeline import MagnetPipeline

    ema = trainer.ema_model()
    te = trainer.text_encoder
    spec = None  # default: MiniLM by package, a small T5 embedded in the bundle
    if isinstance(te, T5TextEncoder) and sum(p.numel() for p in te.model.parameters()) > 50_000_000:
        spec = {"kind": "t5", "name": text_encoder_name, "dim": te.dim}  # t5-base/large: by name, not copied
    pipe = MagnetPipeline(ema, te, codec, name=provenance.get("name", out.name))
    bundle = save_bundle(pipe, out / "bundle", lm_dtype=lm_dtype, text_encoder=spec, provenance=provenance,
                         metrics=metrics)
    if ema.has_controls:  # audiocraft's LM has no beat grid or key input: a bundle only
        log.info("no released-format export: the LM has a beat grid or key input")
    else:
        (out / "export").mkdir(parents=True, exist_ok=True)
        save_audiocraft_lm(ema, out / "export" / "state_dict.bin", text_encoder=text_encoder_name)
    if isinstance(codec, Codec):  # audiocraft's format holds EnCodec only; a spectral codec lives in the bundle
        write_audiocraft_compression_checkpoint(out / "export" / "compression_state_dict.bin", codec.model,
                                                audiocraft_xp_cfg(codec.model.config))
    if publish is not None:
        save_bundle(pipe, publish, lm_dtype=lm_dtype, text_encoder=spec, provenance=provenance, metrics=metrics)
    return bundle


def fit_lm(trainer: LMTrainer, codec, train: TokenSet, valid: TokenSet | None, out: str | Path, *, steps: int,
           batch_size: int, frames: int, log_every: int = 10, ckpt_every: int = 200, eval_every: int = 500,
           provenance: dict | None = None, text_encoder_name: str = "", publish: str | Path | None = None,
           resume: bool = True, max_seconds: float | None = None) -> dict:
    """Train until `trainer.step == steps` (resuming OUT/trainer.pt when present). Returns the last eval."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "trainer.pt"
    if resume and ckpt.is_file():
        trainer.load_checkpoint(ckpt)
        log.info("resumed %s at step %d", ckpt, trainer.step)
    provenance = {"steps_target": steps, "batch_size": batch_size, "frames": frames,
                  "train_config": trainer.cfg.to_dict(), "train_files": len(train),
                  "valid_files": len(valid) if valid is not None else 0, "git": git_commit(),
                  **(provenance or {})}
    held = eval_batches(valid, batch_size, frames) if valid is not None and len(valid) else []
    metrics: dict = {}
    t_start, deadline = time.time(), (time.time() + max_seconds) if max_seconds else None
    with (out / "log.jsonl").open("a") as logf:
        def record(obj: dict) -> None:
            logf.write(json.dumps(obj) + "\n")
            logf.flush()

        while trainer.step < steps:
            codes, captions, valid_mask, first_frames = train.sample(batch_size, frames, trainer.generator)
            info = trainer.train_step(codes, captions, valid_mask, first_frames)
            if trainer.step % log_every == 0 or trainer.step == steps:
                row = {**{k: v for k, v in asdict(info).items() if k != "extra"}, **info.extra}
                row["time"] = round(time.time() - t_start, 1)
                record(row)
                log.info("step %d loss %.4f stage %d acc %.3f lr %.2e |g| %.2f (%.2f s/step)%s", info.step, info.loss,
                         info.stage, info.accuracy, info.lr, info.grad_norm, info.seconds,
                         "".join(f" {k} {v:.3f}" for k, v in info.extra.items()))
            stop = deadline is not None and time.time() > deadline
            if held and (trainer.step % eval_every == 0 or trainer.step == steps or stop):
                metrics = {"step": trainer.step, **trainer.evaluate(held)}
                record({"eval": metrics})
                log.info("eval step %d: loss %.4f (%s)", trainer.step, metrics["loss"],
                         ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_stage")))
            if trainer.step % ckpt_every == 0 or trainer.step == steps or stop:
                trainer.save_checkpoint(ckpt)
                export_run(trainer, codec, out, {**provenance, "step": trainer.step}, metrics, text_encoder_name)
            if stop:
                log.info("time budget reached at step %d; resume by running the same command again", trainer.step)
                return metrics
    if publish is not None:
        export_run(trainer, codec, out, {**provenance, "step": trainer.step}, metrics, text_encoder_name,
                   publish=Path(publish))
        log.info("published bundle to %s", publish)
    return metrics
