"""`python -m magnet_rt.train.codec`: train a small EnCodec (transformers `EncodecModel`: SEANet encoder /
decoder + 4-codebook RVQ of 2048 entries at 32 kHz, 50 frames/s) on a folder of audio.

    python -m magnet_rt.train.codec --data out/data/synth --out out/runs/codec --steps 20000

Losses (no adversarial terms): multi-resolution STFT (spectral convergence + log-magnitude L1) and log-mel
L1 over 4 windows, time-domain L1 (x0.1), RVQ commitment (x1). The RVQ is trained as in EnCodec/audiocraft
(`quantization/core_vq.py`): codebooks initialised by k-means on the first batch, updated by EMA of the
assigned vectors (decay 0.99, Laplace smoothing), straight-through gradients, dead codes replaced by
random vectors of the current batch. "Dead" is relative to the batch: EMA count < 0.1 x the uniform
count N / card (audiocraft's absolute threshold 2 assumes thousands of vectors per step; with 400 vectors
and 2048 entries it would re-seed almost every entry at every step). transformers' codebook buffers
(`embed`, `embed_avg`, `cluster_size`, `inited`) hold the state, so the trained model is an ordinary `EncodecModel`.

OUT/trainer.pt (resumable: model, optimizer, step, RNG; weights_only), OUT/log.jsonl, and OUT/codec/
(config.json + codec.safetensors, loadable with `magnet_rt.bundle.load_codec` or as `--codec` of the LM
trainer, plus compression_state_dict.bin in the released format). Held-out files (every file whose name
hashes to 0 mod 50) give the reconstruction metrics: multi-resolution mel distance and SI-SDR.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import MultiResolutionSTFTLoss, mel_distance, si_sdr
from .trainer import load_checkpoint_file, save_atomic

log = logging.getLogger("magnet_rt.train.codec")

SR = 32000


# ---- the RVQ, trained -------------------------------------------------------------------------------
def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """x [N, D] -> (centroids [k, D], counts [k]); empty clusters keep their previous centroid."""
    if x.shape[0] <= k:  # fewer vectors than entries: seed with (repeated) samples; dead-code replacement refines
        idx = torch.randint(x.shape[0], (k,), generator=generator)
        return x[idx].clone(), torch.full((k,), x.shape[0] / k)
    c = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    counts = torch.zeros(k)
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(a, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, a, x)
        nz = counts > 0
        c[nz] = sums[nz] / counts[nz, None]
    return c, counts


class TrainableRVQ:
    """Trains the codebooks of a transformers `EncodecResidualVectorQuantizer` in place (EMA updates)."""

    def __init__(self, quantizer: nn.Module, n_q: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_ratio: float = 0.1, kmeans_iters: int = 10):
        self.layers = list(quantizer.layers)[:n_q]
        self.decay, self.eps, self.dead_ratio, self.kmeans_iters = decay, eps, dead_ratio, kmeans_iters

    def __call__(self, z: Tensor, generator: torch.Generator, train: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """z [B, D, T] -> (quantized [B, D, T] with straight-through gradients, codes [K, B, T], commitment loss)."""
        B, D, T = z.shape
        residual, out, commit, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for layer in self.layers:
            cb = layer.codebook
            x = residual.transpose(1, 2).reshape(-1, D)  # [N, D]
            xd = x.detach()
            if train and not bool(cb.inited.item()):
                c, counts = kmeans(xd.float(), cb.embed.shape[0], self.kmeans_iters, generator)
                cb.embed.copy_(c)
                cb.cluster_size.copy_(counts.clamp_min(xd.shape[0] / cb.embed.shape[0]))
                cb.embed_avg.copy_(c * cb.cluster_size[:, None])  # EMA state: embed = embed_avg / cluster_size
                cb.inited.fill_(1.0)
            embed = cb.embed
            dist = xd.pow(2).sum(1, keepdim=True) - 2 * xd @ embed.t() + embed.pow(2).sum(1)[None]
            idx = dist.argmin(1)  # [N]
            q = F.embedding(idx, embed)  # [N, D]
            if train:
                with torch.no_grad():
                    self._ema_update(cb, xd, idx, generator)
            commit = commit + F.mse_loss(x, q.detach())
            q_st = x + (q - x).detach()
            q_st = q_st.view(B, T, D).transpose(1, 2)
            out = out + q_st
            residual = residual - q.view(B, T, D).transpose(1, 2).detach()
            codes.append(idx.view(B, T))
        return out, torch.stack(codes), commit

    def _ema_update(self, cb: nn.Module, x: Tensor, idx: Tensor, generator: torch.Generator) -> None:
        C = cb.embed.shape[0]
        counts = torch.bincount(idx, minlength=C).to(x.dtype)
        sums = torch.zeros_like(cb.embed).index_add_(0, idx, x)
        cb.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        cb.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = cb.cluster_size.sum()
        smoothed = (cb.cluster_size + self.eps) / (n + C * self.eps) * n
        cb.embed.copy_(cb.embed_avg / smoothed[:, None])
        uniform = x.shape[0] / C  # expected count of an entry per step
        dead = cb.cluster_size < self.dead_ratio * uniform
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(x.shape[0], (n_dead,), generator=generator)
            fresh = x[pick.to(x.device)]
            cb.embed[dead] = fresh
            cb.embed_avg[dead] = fresh * uniform
            cb.cluster_size[dead] = uniform


def codebook_usage(codes: Tensor, card: int) -> list[float]:
    """Per codebook: perplexity of the code histogram / card (1.0 = uniform use of every entry)."""
    out = []
    for k in range(codes.shape[0]):
        p = torch.bincount(codes[k].reshape(-1), minlength=card).float()
        p = p / p.sum()
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        out.append(float(ent.exp() / card))
    return out


# ---- data ------------------------------------------------------------------------------------------
def is_held_out(name: str, every: int = 50) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % every == 0


def list_audio(folder: Path, every: int = 50) -> tuple[list[Path], list[Path]]:
    """(train, held-out) .wav files; held-out by a hash of the name, so the split is stable as files are added."""
    files = sorted(p for p in folder.rglob("*.wav") if not p.name.startswith("."))
    return [p for p in files if not is_held_out(p.name, every)], [p for p in files if is_held_out(p.name, every)]


def read_crop(path: Path, n: int, generator: torch.Generator | None) -> np.ndarray:
    """A random (or, without a generator, the first) n-sample mono crop at 32 kHz, zero-padded."""
    import soundfile as sf

    info = sf.info(str(path))
    if info.samplerate != SR:
        raise ValueError(f"{path}: {info.samplerate} Hz; the codec trainer expects {SR} Hz files")
    start = 0
    if generator is not None and info.frames > n:
        start = int(torch.randint(info.frames - n + 1, (1,), generator=generator))
    x, _ = sf.read(str(path), start=start, frames=n, dtype="float32", always_2d=True)
    x = x.mean(1)
    return np.pad(x, (0, n - len(x)))


# ---- model -----------------------------------------------------------------------------------------
def demo_codec_config(n_filters: int = 16, dimension: int = 64, lstm_layers: int = 1):
    from ..encodec_checkpoints import random_encodec_config

    return random_encodec_config(sample_rate=SR, ratios=(8, 5, 4, 4), n_filters=n_filters, dimension=dimension,
                                 lstm_layers=lstm_layers, card=2048, n_q=4)


def spectral_codec_config(hidden: int = 256, latent_dim: int = 128, layers: int = 4):
    from ..spectral_codec import SpectralCodecConfig

    return SpectralCodecConfig(sampling_rate=SR, hidden=hidden, latent_dim=latent_dim, layers=layers)


def build_model(config) -> nn.Module:
    from transformers import EncodecModel

    from ..spectral_codec import SpectralCodecConfig, SpectralCodecModel

    torch.manual_seed(0)
    model = SpectralCodecModel(config) if isinstance(config, SpectralCodecConfig) else EncodecModel(config)
    for cb in (layer.codebook for layer in model.quantizer.layers):
        cb.inited.fill_(0.0)
    return model


@torch.no_grad()
def evaluate_model(model: nn.Module, clips: Tensor, batch: int = 4) -> dict[str, float]:
    """clips [N, 1, S] -> mel distance, SI-SDR (dB), codebook usage, through the real `Codec.encode/decode`
    path (the one the LM and pipeline use). Leaves the model in eval mode."""
    codec = codec_for(model)
    mels, sdrs, all_codes = [], [], []
    for i in range(0, clips.shape[0], batch):
        x = clips[i:i + batch]
        codes = codec.encode(x, SR)  # [B, K, T]
        y = codec.decode(codes)[..., : x.shape[-1]]
        mels.append(mel_distance(x[:, 0], y[:, 0], SR))
        sdrs.append(si_sdr(x[:, 0], y[:, 0]))
        all_codes.append(codes.transpose(0, 1).reshape(codes.shape[1], -1))
    usage = codebook_usage(torch.cat(all_codes, 1), model.config.codebook_size)
    return {"mel_distance": float(torch.cat(mels).mean()), "si_sdr": float(torch.cat(sdrs).mean()),
            "codebook_usage": [round(u, 4) for u in usage], "clips": int(clips.shape[0])}


def codec_for(model: nn.Module):
    """The runtime codec (`Codec` or `SpectralCodec`) around a model being trained."""
    from ..codec import Codec
    from ..spectral_codec import SpectralCodec, SpectralCodecModel

    return SpectralCodec(model) if isinstance(model, SpectralCodecModel) else Codec(model)


def held_out_clips(folder: Path, n: int, seconds: float, every: int = 50) -> Tensor | None:
    """The first `seconds` of the first `n` held-out files -> [n, 1, S] (None if there are none)."""
    _, held = list_audio(folder, every)
    held = held[:n]
    if not held:
        return None
    return torch.from_numpy(np.stack([read_crop(f, int(seconds * SR), None) for f in held]))[:, None]


class CodecTrainer:
    """`decoder_only`: the encoder and codebooks are frozen (tokens fixed, e.g. while an LM trains on them)
    and only the decoder learns."""

    def __init__(self, model: nn.Module, lr: float = 3e-4, seed: int = 0, n_q: int = 4,
                 weights: dict[str, float] | None = None, decoder_only: bool = False):
        self.model = model.train()
        self.decoder_only = decoder_only
        self.rvq = TrainableRVQ(model.quantizer, n_q)
        self.n_q = n_q
        self.spec_loss = MultiResolutionSTFTLoss(SR)
        self.weights = {"sc": 1.0, "logmag": 1.0, "mel": 1.0, "l1": 0.1, "commit": 1.0, **(weights or {})}
        prefixes = ("decoder.",) if decoder_only else ("encoder.", "decoder.")
        params = [p for n, p in model.named_parameters() if n.startswith(prefixes)]
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(prefixes))
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def reconstruct(self, x: Tensor, train: bool) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, 1, N] -> (y [B, 1, N], codes [K, B, T], commitment)."""
        with torch.set_grad_enabled(train and not self.decoder_only):
            z = self.model.encoder(x)
            q, codes, commit = self.rvq(z, self.generator, train=train and not self.decoder_only)
        y = self.model.decoder(q)[..., : x.shape[-1]]
        return y, codes, commit

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        y, codes, commit = self.reconstruct(x, train=True)
        return {**self.spec_loss(x, y), "l1": F.l1_loss(y, x), "commit": commit}

    def train_step(self, x: Tensor) -> dict[str, float]:
        t0 = time.perf_counter()
        self.model.train()
        terms = self.loss_terms(x)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                "grad_norm": float(gn), "seconds": time.perf_counter() - t0}

    def evaluate(self, clips: Tensor, batch: int = 4) -> dict[str, float]:
        res = evaluate_model(self.model, clips, batch)
        self.model.train()
        return res

    def state_dict(self) -> dict:
        return {"version": 1, "step": self.step, "decoder_only": self.decoder_only, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "config": self.model.config.to_dict(),
                "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict) -> None:
        if bool(state.get("decoder_only", False)) != self.decoder_only:
            raise ValueError("checkpoint and trainer disagree on --decoder-only; start a new --out with --init")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])


class SpectralCodecTrainer(CodecTrainer):
    """The spectral codec learns log-magnitude frames: L1 on them (every bin, the noise floor compressed by
    the log) plus spectral convergence on the magnitudes (the loud partials that carry pitch); no waveform,
    so no phase to learn and nothing periodic at the frame rate."""

    DEFAULT_WEIGHTS = {"logmag": 1.0, "sc": 1.0, "commit": 1.0}

    def __init__(self, model: nn.Module, lr: float = 1e-3, seed: int = 0, n_q: int = 4,
                 weights: dict[str, float] | None = None, decoder_only: bool = False):
        super().__init__(model, lr, seed, n_q, {**self.DEFAULT_WEIGHTS, **(weights or {})}, decoder_only)
        self.weights = {k: v for k, v in self.weights.items() if k in self.DEFAULT_WEIGHTS}

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        target = self.model.features(x[:, 0])
        with torch.set_grad_enabled(not self.decoder_only):
            z = self.model.encoder(target)
            q, _, commit = self.rvq(z, self.generator, train=not self.decoder_only)
        pred = self.model.decoder(q)
        mag, mag_hat = self.model.magnitude(target), self.model.magnitude(pred)
        norm = torch.linalg.vector_norm
        sc = norm(mag_hat - mag, dim=(1, 2)) / norm(mag, dim=(1, 2)).clamp_min(1e-6)
        return {"logmag": F.l1_loss(pred, target), "sc": sc.mean(), "commit": commit}


def pca_init(model: nn.Module, files: list[Path], seed: int, clips: int = 64, seconds: float = 2.0) -> None:
    """`SpectralCodecModel.pca_init` on the frames of `clips` random training crops."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(files), (clips,), generator=g).tolist()
    x = torch.from_numpy(np.stack([read_crop(files[i], int(seconds * SR), g) for i in picks]))
    with torch.no_grad():
        model.pca_init(model.features(x))
    log.info("initialised the spectral codec as a PCA of %d crops", clips)


def save_codec_folder(model: nn.Module, out: Path, metrics: dict, provenance: dict) -> Path:
    """OUT/ config.json (bundle format, codec only) + codec.safetensors + compression_state_dict.bin."""
    from safetensors.torch import save_file

    from ..bundle import BUNDLE_FORMAT, BUNDLE_VERSION, CODEC_FILE, CONFIG
    from ..encodec_checkpoints import audiocraft_xp_cfg, write_audiocraft_compression_checkpoint
    from ..spectral_codec import SpectralCodecModel

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / f".{CODEC_FILE}.tmp"))
    (out / f".{CODEC_FILE}.tmp").replace(out / CODEC_FILE)
    cfg = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "name": "codec", "codec": model.config.to_dict(),
           "provenance": provenance, "metrics": metrics}
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    if not isinstance(model, SpectralCodecModel):  # the released format holds EnCodec only
        write_audiocraft_compression_checkpoint(out / "compression_state_dict.bin", model,
                                                audiocraft_xp_cfg(model.config))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m magnet_rt.train.codec", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="folder of 32 kHz .wav files (searched recursively)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1.0, help="training crop length")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--kind", choices=["encodec", "spectral"], default="encodec",
                   help="encodec: SEANet waveform codec; spectral: log-magnitude codec + Griffin-Lim (the demo's)")
    p.add_argument("--filters", type=int, default=16, help="encodec: base filters")
    p.add_argument("--dimension", type=int, default=None, help="latent dimension (encodec 64, spectral 128)")
    p.add_argument("--lstm", type=int, default=1, help="encodec: LSTM layers")
    p.add_argument("--hidden", type=int, default=256, help="spectral: channels of the conv stacks")
    p.add_argument("--layers", type=int, default=4, help="spectral: residual blocks per side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-clips", type=int, default=16, help="held-out clips (first --eval-seconds of each)")
    p.add_argument("--eval-seconds", type=float, default=4.0)
    p.add_argument("--held-out-every", type=int, default=50, help="hold out files whose name hash is 0 mod this")
    p.add_argument("--rescan-every", type=int, default=500, help="re-list the data folder (it may still be growing)")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--loss-weights", default="", help="overrides, e.g. 'l1=1.0,commit=0.5' (keys: sc, logmag, "
                   "mel, l1, commit; defaults 1, 1, 1, 0.1, 1)")
    p.add_argument("--init", help="start a new run from these codec weights (a trainer.pt or a codec folder)")
    p.add_argument("--decoder-only", action="store_true",
                   help="freeze the encoder and codebooks (tokens unchanged) and train only the decoder")
    p.add_argument("--eval-only", action="store_true",
                   help="score OUT/codec on the held-out clips, record the result in its config.json, exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    if args.eval_only:
        from ..bundle import load_codec

        clips = held_out_clips(data, args.eval_clips, args.eval_seconds, args.held_out_every)
        if clips is None:
            print(f"codec: error: no held-out files under {data}", file=sys.stderr)
            return 2
        cfg_path = out / "codec" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        scores = evaluate_model(load_codec(out / "codec").model, clips)
        metrics = {"step": cfg.get("provenance", {}).get("step"), **scores}
        cfg["metrics"] = metrics  # the folder's weights, scored now (the last in-run eval may predate them)
        cfg_path.write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        print(json.dumps(metrics))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    train_files, held = list_audio(data, args.held_out_every)
    if not train_files:
        print(f"codec: error: no .wav files under {data}", file=sys.stderr)
        return 2
    if args.kind == "spectral":
        config = spectral_codec_config(args.hidden, args.dimension or 128, args.layers)
    else:
        config = demo_codec_config(args.filters, args.dimension or 64, args.lstm)
    weights = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.loss_weights.split(",") if kv.strip())}
    model = build_model(config)
    ckpt = out / "trainer.pt"
    if args.init and not ckpt.is_file():
        init = Path(args.init)
        if init.is_dir():
            from ..bundle import load_codec

            init_model = load_codec(init).model
            init_config, init_state = init_model.config.to_dict(), init_model.state_dict()
        else:
            state = load_checkpoint_file(init)
            init_config, init_state = state.get("config"), state["model"]
        if init_config != config.to_dict():
            print(f"codec: error: --init {init} has another codec config", file=sys.stderr)
            return 2
        model.load_state_dict(init_state)
        log.info("initialised from %s", init)
    if args.kind == "spectral" and not ckpt.is_file() and not args.init:
        pca_init(model, train_files, args.seed)
    trainer_class = SpectralCodecTrainer if args.kind == "spectral" else CodecTrainer
    trainer = trainer_class(model, lr=args.lr, seed=args.seed, weights=weights, decoder_only=args.decoder_only)
    if ckpt.is_file():
        state = load_checkpoint_file(ckpt)
        if state.get("config") != config.to_dict():
            print(f"codec: error: {ckpt} was trained with another codec config; use a new --out", file=sys.stderr)
            return 2
        try:
            trainer.load_state_dict(state)
        except ValueError as e:
            print(f"codec: error: {ckpt}: {e}", file=sys.stderr)
            return 2
        for group in trainer.optimizer.param_groups:  # --lr applies to a resumed run too
            group["lr"] = args.lr
        log.info("resumed %s at step %d (lr %g)", ckpt, trainer.step, args.lr)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log.info("codec %.2fM params, %d train files, %d held out", n_params / 1e6, len(train_files), len(held))
    seg = int(args.seconds * SR) // 640 * 640  # whole codec frames
    metrics: dict = {}
    eval_set, scanned_at = None, None
    deadline = time.time() + args.max_minutes * 60 if args.max_minutes else None
    provenance = {"data": str(data.resolve()), "init": args.init, "decoder_only": args.decoder_only,
                  "steps_target": args.steps, "batch_size": args.batch_size,
                  "crop_seconds": args.seconds, "lr": args.lr, "params": n_params, "loss_weights": trainer.weights}
    with (out / "log.jsonl").open("a") as logf:
        while trainer.step < args.steps:
            if scanned_at is None or trainer.step - scanned_at >= args.rescan_every:
                scanned_at = trainer.step
                train_files, held = list_audio(data, args.held_out_every)
                if eval_set is None or eval_set.shape[0] < min(args.eval_clips, len(held)):
                    eval_set = held_out_clips(data, args.eval_clips, args.eval_seconds, args.held_out_every)
            idx = torch.randint(len(train_files), (args.batch_size,), generator=trainer.generator).tolist()
            x = torch.from_numpy(np.stack([read_crop(train_files[i], seg, trainer.generator) for i in idx]))[:, None]
            row = trainer.train_step(x)
            if trainer.step % args.log_every == 0:
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                terms = " ".join(f"{k} {row[k]:.4f}" for k in trainer.weights)
                log.info("step %d loss %.3f %s (%.2f s/step)", row["step"], row["loss"], terms, row["seconds"])
            stop = deadline is not None and time.time() > deadline
            last = trainer.step == args.steps or stop
            if eval_set is not None and (trainer.step % args.eval_every == 0 or last):
                metrics = {"step": trainer.step, "files": len(train_files), **trainer.evaluate(eval_set)}
                logf.write(json.dumps({"eval": metrics}) + "\n")
                logf.flush()
                log.info("eval step %d: mel distance %.3f, SI-SDR %.2f dB, usage %s", trainer.step,
                         metrics["mel_distance"], metrics["si_sdr"], metrics["codebook_usage"])
            if trainer.step % args.ckpt_every == 0 or last:
                save_atomic(trainer.state_dict(), ckpt)
                save_codec_folder(trainer.model, out / "codec", metrics, {**provenance, "step": trainer.step})
            if stop:
                break
    print(f"codec: step {trainer.step}; codec at {out / 'codec'}; metrics {metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
