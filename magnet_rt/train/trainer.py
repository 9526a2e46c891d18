"""The MAGNeT training loop: masked-span objective, AdamW, cosine warm-up, clipping, EMA, resume.

One `LMTrainer.train_step(codes, captions)`:
1. CFG dropout, batch-wise as released (`conditioners.py:1451-1463`): with probability `cfg_dropout` the
   whole batch's captions become None, i.e. the all-zero null condition the decoder uses for CFG;
2. draw the stage, rates and span masks (`masking.make_masked_batch`, from the trainer's generator);
3. forward with that stage (restricted +-subcodes_context self-attention for stage >= 1), loss on the
   stage's masked tokens (`objective.masked_stage_loss`);
4. AdamW (betas 0.9/0.95, weight decay on matrices and embeddings only), clip the gradient norm, step
   the cosine-with-warm-up schedule, update the EMA of the weights.

Every random draw of the loop comes from one CPU `torch.Generator`, so a checkpoint holding the model,
optimizer, scheduler, EMA, step and generator states resumes bit-exactly. Checkpoints are `torch.save`d
dicts of tensors and plain data, read back with `weights_only=True`.

Cross-attention uses each row's own text length (`cross_len`), as `MagnetPipeline` does when serving;
the release attends to batch padding too (magnet-reference gotcha 6).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..lm import MagnetConfig, MagnetLM
from ..tempo import beat_grids
from ..tonality import key_vectors
from .contrast import contrast_hinge, counterfactual
from .hybrid import hybrid_loss, make_hybrid_batch
from .masking import make_masked_batch
from .objective import masked_stage_accuracy, masked_stage_loss, masked_stage_loss_per_row

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 500
    total_steps: int = 20000  # length of the cosine schedule
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cfg_dropout: float = 0.3  # music release; 0.1 for sound
    seed: int = 0
    hybrid: bool = False  # Hybrid-MAGNeT objective: causal + AR loss before a random split (train/hybrid.py)
    ar_weight: float = 1.0  # weight of the AR loss when `hybrid`
    contrast_weight: float = 0.0  # weight of the counterfactual-caption hinge (train/contrast.py); 0 = off
    contrast_margin: float = 0.5  # nats by which the true caption must beat the counterfactual
    contrast_near_keys: float = 0.0  # share of key counterfactuals that are a nearest key (fifth, relative, parallel)
    contrast_stages: tuple[int, ...] = (0, 1, 2, 3)  # the codebook stages whose batches get the hinge
    contrast_kinds: tuple[str, ...] = ("key", "tempo")  # what the counterfactuals change ("drums" too: turned over)
    beat_dropout: float = 0.3  # with a beat grid: each row's grid is zeroed with this probability ("no tempo")
    key_dropout: float = 0.3  # with a key input: each row's key is zeroed with this probability ("no key")
    control_lr_scale: float = 20.0  # the controls' projections (beat grid, key) learn at lr x this (they start
    # at zero, and their few inputs compete with a sinusoidal position of norm sqrt(dim / 2) in the embedding)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["contrast_stages"], d["contrast_kinds"] = list(self.contrast_stages), list(self.contrast_kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        for name in ("contrast_stages", "contrast_kinds"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def cosine_with_warmup(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then cosine 1 -> min_ratio at `total`, flat after."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class EMA:
    """Exponential moving average of a model's floating-point state: shadow = d * shadow + (1 - d) * w.

    With `warmup`, update n (from 0) uses d_n = min(decay, (1 + n) / (10 + n)), so a short run's average is
    not dominated by the initial weights (0.999^1000 = 0.37 of the init would remain after 1000 steps)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", False))  # checkpoints before the warm-up existed: plain EMA
        self.updates = int(state.get("updates", 0))
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise CheckpointError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}


def param_groups(model: MagnetLM, weight_decay: float, lr: float, control_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on matrices and embedding tables; none on LayerNorm weights and biases. The controls'
    projections (`MagnetLM.control_projections`: beat grid, key), when the model has them, are a third group
    at lr x `control_lr_scale`."""
    controls = [p for proj in model.control_projections() for p in proj.parameters()]
    control_ids = {id(p) for p in controls}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in control_ids]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    if controls:
        groups.append({"params": controls, "weight_decay": weight_decay, "lr": lr * control_lr_scale})
    return groups


@dataclass
class StepInfo:
    step: int
    loss: float
    stage: int
    lr: float
    grad_norm: float
    accuracy: float
    masked: int  # masked tokens in the loss
    dropped: bool  # condition dropped for this batch
    seconds: float
    extra: dict = field(default_factory=dict)


class LMTrainer:
    """Trains a MagnetLM against a frozen text encoder. Batches are token grids [B, K, T] + captions."""

    def __init__(self, lm: MagnetLM, text_encoder, cfg: TrainConfig | None = None,
                 amp_dtype: torch.dtype | None = None):
        self.cfg = cfg or TrainConfig()
        if self.cfg.hybrid and lm.beat_proj is not None:
            raise ValueError("the hybrid objective's delayed layout shifts each codebook by one frame, so a beat "
                             "grid has no single frame to sit on: train a beat-grid LM without --hybrid")
        self.lm = lm.float().train()
        self.lm.compute_dtype = torch.float32
        self.text_encoder = text_encoder
        self.amp_dtype = amp_dtype  # e.g. torch.bfloat16 on CUDA; None = fp32
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        fused = self.device.type == "cuda"
        groups = param_groups(self.lm, self.cfg.weight_decay, self.cfg.lr, self.cfg.control_lr_scale)
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr,
                                           betas=self.cfg.betas, fused=fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(self.cfg.warmup_steps, self.cfg.total_steps, self.cfg.min_lr_ratio))
        self.ema = EMA(self.lm, self.cfg.ema_decay)
        self.step = 0

    @property
    def device(self) -> torch.device:
        return self.lm.device

    # ---- one step ------------------------------------------------------------------------------
    def condition(self, captions: list[str | None], drop: bool, grid: Tensor | None = None,
                  key: Tensor | None = None):
        """captions -> CrossInputs; `drop` replaces them all with the null condition (and no controls).
        `grid` [B, T, F]: the rows' beat grids (`beat_grid`); `key` [B, F]: their key inputs (`key_input`)."""
        text = self.text_encoder.encode([None] * len(captions) if drop else list(captions))
        hidden, mask = text.hidden.to(self.device), text.mask.to(self.device)
        cond = self.lm.project_text(hidden, mask)
        return self.lm.cross_inputs(cond, mask.sum(-1).clamp(min=1), None if drop else grid, None if drop else key)

    def key_input(self, captions: list[str | None], dropout: bool) -> Tensor | None:
        """Each row's key input from its caption's key; with `dropout`, each row's is zeroed with probability
        `key_dropout` (drawn only for a model with a key input, so one without trains exactly as before)."""
        if self.lm.key_proj is None:
            return None
        key = key_vectors(captions).to(self.device)
        return self._drop_rows(key, self.cfg.key_dropout) if dropout else key

    def beat_grid(self, captions: list[str | None], frames: int, first_frames: Tensor | None,
                  dropout: bool) -> Tensor | None:
        """Each row's beat grid from its caption's tempo, starting at its crop's first frame; with `dropout`,
        each row's grid is zeroed with probability `beat_dropout` (one draw per row from the generator, made
        only for a model with a grid, so a model without one trains exactly as before)."""
        if self.lm.beat_proj is None:
            return None
        starts = 0.0 if first_frames is None else first_frames.tolist()
        grid = beat_grids(captions, frames, starts, self.lm.cfg.frame_rate).to(self.device)
        return self._drop_rows(grid, self.cfg.beat_dropout) if dropout else grid

    def _drop_rows(self, control: Tensor, p: float) -> Tensor:
        """`control` [B, ...] with each row zeroed with probability `p` (one draw per row from the generator)."""
        keep = torch.rand(control.shape[0], generator=self.generator) >= p
        return control * keep.to(control).view(-1, *[1] * (control.dim() - 1))

    def compute_loss(self, codes: Tensor, captions: list[str | None], valid: Tensor | None = None,
                     stage: int | None = None, drop: bool | None = None, contrast: bool = True,
                     first_frames: Tensor | None = None) -> tuple[Tensor, dict]:
        """Draw masks (and the CFG coin unless `drop` is given) from the trainer's generator, forward, loss.
        `contrast`: add the counterfactual-caption hinge when the config asks for it (evaluation does not).
        `first_frames` [B]: each crop's first frame in its clip (the beat grid's phase; None: 0). Evaluation
        (`drop` given) keeps every control."""
        training = drop is None
        if drop is None:
            drop = bool(torch.rand(1, generator=self.generator) < self.cfg.cfg_dropout)
        codes = codes.to(self.device)
        grid = self.beat_grid(captions, codes.shape[-1], first_frames, dropout=training)
        key = self.key_input(captions, dropout=training)
        if self.cfg.hybrid:
            return self._hybrid_loss(codes, captions, valid, stage, drop, grid, key)
        batch = make_masked_batch(codes, self.lm.card, self.lm.cfg.span_len, self.generator, stage=stage, valid=valid)
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            logits = self.lm.stage_logits(batch.inputs, self.condition(captions, drop, grid, key), batch.stage)
        loss = masked_stage_loss(logits, batch.targets, batch.mask, batch.stage)
        info = {"stage": batch.stage, "dropped": drop, "masked": int(batch.mask.sum()),
                "accuracy": masked_stage_accuracy(logits, batch.targets, batch.mask, batch.stage)}
        if contrast and self.cfg.contrast_weight > 0 and not drop and batch.stage in self.cfg.contrast_stages:
            hinge = self._contrast(batch, logits, captions, first_frames)
            info["contrast"] = float(hinge.detach())
            loss = loss + self.cfg.contrast_weight * hinge
        return loss, info

    def _contrast(self, batch, logits: Tensor, captions: list[str | None], first_frames: Tensor | None) -> Tensor:
        """The counterfactual-caption hinge (train/contrast.py) on this masked batch (the counterfactual's own
        controls, never dropped)."""
        counter = [counterfactual(c, self.generator, self.cfg.contrast_near_keys, self.cfg.contrast_kinds)
                   for c in captions]
        rows = torch.tensor([c is not None for c in counter], device=self.device)
        if not bool(rows.any()):
            return logits.sum() * 0.0
        amp = self.amp_dtype is not None
        counter = [c or t for c, t in zip(counter, captions, strict=True)]
        grid = self.beat_grid(counter, batch.inputs.shape[-1], first_frames, dropout=False)
        key = self.key_input(counter, dropout=False)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            counter_logits = self.lm.stage_logits(batch.inputs, self.condition(counter, False, grid, key), batch.stage)
        ce_true = masked_stage_loss_per_row(logits, batch.targets, batch.mask, batch.stage)
        ce_counter = masked_stage_loss_per_row(counter_logits, batch.targets, batch.mask, batch.stage)
        return contrast_hinge(ce_true, ce_counter, rows, self.cfg.contrast_margin)

    def _hybrid_loss(self, codes, captions, valid, stage, drop, grid, key) -> tuple[Tensor, dict]:
        """The hybrid objective: delayed layout, causal attention and every head's AR loss before a split
        drawn per row, MAGNeT's span masking and loss after it (train/hybrid.py)."""
        hb = make_hybrid_batch(codes, self.lm.card, self.lm.cfg.span_len, self.generator, stage=stage,
                               context=self.lm.cfg.subcodes_context, valid=valid)
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            logits = self.lm(hb.inputs, self.condition(captions, drop, grid, key), hb.stage, attn_mask=hb.allowed)
        loss, parts = hybrid_loss(logits, hb, self.cfg.ar_weight)
        info = {"stage": hb.stage, "dropped": drop, "masked": int(hb.mask.sum()),
                "accuracy": masked_stage_accuracy(logits, hb.targets, hb.mask, hb.stage),
                "magnet_loss": float(parts["magnet"]), "ar_loss": float(parts["ar"])}
        return loss, info

    def train_step(self, codes: Tensor, captions: list[str | None], valid: Tensor | None = None,
                   first_frames: Tensor | None = None) -> StepInfo:
        t0 = time.perf_counter()
        self.lm.train()
        loss, info = self.compute_loss(codes, captions, valid, first_frames=first_frames)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.lm.parameters(), self.cfg.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.lm)
        self.step += 1
        extra = {k: info[k] for k in ("contrast", "magnet_loss", "ar_loss") if k in info}
        return StepInfo(self.step, float(loss.detach()), info["stage"], lr, grad_norm, info["accuracy"],
                        info["masked"], info["dropped"], time.perf_counter() - t0, extra)

    @torch.no_grad()
    def evaluate(self, batches, use_ema: bool = True) -> dict[str, float]:
        """Mean loss per stage on held-out batches [(codes, captions[, first_frames])], each stage evaluated on
        every batch, with a fixed generator (seed 1234) so numbers are comparable across steps."""
        model = self.ema_model() if use_ema else self.lm
        saved_gen, saved_lm = self.generator, self.lm
        self.generator, self.lm = torch.Generator().manual_seed(1234), model.eval()
        try:
            out: dict[str, list[float]] = {}
            for codes, captions, *first in batches:
                for s in range(model.n_q):
                    loss, info = self.compute_loss(codes, captions, stage=s, drop=False, contrast=False,
                                                   first_frames=first[0] if first else None)
                    out.setdefault(f"loss_stage{s}", []).append(float(loss))
                    out.setdefault(f"acc_stage{s}", []).append(info["accuracy"])
        finally:
            self.generator, self.lm = saved_gen, saved_lm
            self.lm.train()
        res = {k: sum(v) / len(v) for k, v in out.items()}
        res["loss"] = sum(res[f"loss_stage{s}"] for s in range(model.n_q)) / model.n_q
        return res

    def ema_model(self) -> MagnetLM:
        """A copy of the LM carrying the EMA weights (eval mode)."""
        return self.ema.copy_to(copy.deepcopy(self.lm)).eval()

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"version": CHECKPOINT_VERSION, "step": self.step, "lm_config": self.lm.cfg.to_dict(),
                "train_config": self.cfg.to_dict(), "model": self.lm.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict(), "rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"training checkpoint version {state.get('version')} != {CHECKPOINT_VERSION}")
        if state["lm_config"] != self.lm.cfg.to_dict():
            raise CheckpointError("training checkpoint was made for a different LM config: "
                                  f"{state['lm_config']} vs {self.lm.cfg.to_dict()}")
        self.lm.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomic `torch.save` of `state_dict()` (tensors and plain data only)."""
        return save_atomic(self.state_dict(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint_file(path))


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    from ..checkpoints import safe_load

    state = safe_load(path)  # torch.load(weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training checkpoint")
    return state


def lm_from_checkpoint(path: str | Path) -> MagnetLM:
    """Rebuild the LM (raw weights) from a training checkpoint."""
    state = load_checkpoint_file(path)
    lm = MagnetLM(MagnetConfig(**state["lm_config"]))
    lm.load_state_dict(state["model"])
    return lm
