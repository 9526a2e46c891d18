"""Prompt adherence: a small classifier of the data generator's labels, applied to generated audio.

    python -m magnet_rt.train.adherence --data out/data/synth --bundle magnet_rt/assets/demo \
        --out out/runs/adherence

The generator (`datagen`) writes labels next to every caption. We predict four of them from audio:
style (10 classes), drums (yes/no), tempo (slow < 90 bpm <= medium < 125 bpm <= fast) and the lead
instrument's family. Features are hand-made and cheap: log-mel (64 bands) mean and spread over time, and
the autocorrelation of an onset envelope over the lags of 48-235 bpm (tempo and groove). The classifier
is one hidden layer with a head per label. It is trained on the codec's *reconstructions* of training
clips (generated audio comes out of the same decoder, so the classifier sees the same sound), scored on
reconstructions of held-out clips (its ceiling), and then on audio the LM generated from the held-out
captions. A control scores the same generations against the labels of *other* captions (a fixed
permutation): if the model ignored the prompt, both accuracies would be equal. Its hidden layer is also
the embedding of a Frechet distance between generated and real clips (an FAD-style proxy, lower is
better), used by `benchmarks/schedules.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import log_mel

log = logging.getLogger("magnet_rt.train.adherence")

SR = 32000
HOP_FPS = SR / 512  # log-mel frames per second (n_fft 2048, hop 512)
MIN_LAG, MAX_LAG = 16, 78  # onset-autocorrelation lags in frames: 60 * 62.5 / lag = 234 .. 48 bpm


def tempo_class(bpm: float) -> str:
    return "slow" if bpm < 90 else ("medium" if bpm < 125 else "fast")


TARGETS = {
    "style": lambda r: str(r["style"]),
    "drums": lambda r: "drums" if r["drums"] else "no drums",
    "tempo": lambda r: tempo_class(float(r["tempo"])),
    "lead": lambda r: str(r["lead"]["family"]),
}


def labels_of(rows: list[dict]) -> dict[str, list[str]]:
    return {name: [f(r) for r in rows] for name, f in TARGETS.items()}


@torch.no_grad()
def audio_features(x: Tensor, sample_rate: int = SR) -> Tensor:
    """[B, N] mono audio at 32 kHz -> [B, 64 + 64 + 2 + (MAX_LAG - MIN_LAG + 1)] features."""
    if sample_rate != SR:
        raise ValueError(f"features expect {SR} Hz audio, got {sample_rate}")
    x = x.reshape(x.shape[0], -1).float()
    mel = log_mel(x, SR, 2048, 64)  # [B, 64, T]
    onset = F.relu(mel.diff(dim=-1)).mean(1)  # [B, T-1] spectral flux
    env = onset - onset.mean(-1, keepdim=True)
    n = env.shape[-1]
    spec = torch.fft.rfft(env, 2 * n)
    ac = torch.fft.irfft(spec.abs().pow(2), 2 * n)[..., :n]
    ac = ac / ac[..., :1].clamp_min(1e-8)
    return torch.cat([mel.mean(-1), mel.std(-1), onset.mean(-1, keepdim=True), onset.std(-1, keepdim=True),
                      ac[..., MIN_LAG:MAX_LAG + 1]], dim=-1)


class AdherenceClassifier(nn.Module):
    """Standardised features -> hidden (the embedding) -> one head per target."""

    def __init__(self, n_features: int, classes: dict[str, list[str]], hidden: int = 128):
        super().__init__()
        self.classes = {k: list(v) for k, v in classes.items()}
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in self.classes.items()})

    def embed(self, feats: Tensor) -> Tensor:
        return self.body((feats - self.mean) / self.std)

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        h = self.embed(feats)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, feats: Tensor) -> dict[str, list[str]]:
        self.eval()
        return {k: [self.classes[k][i] for i in v.argmax(-1).tolist()] for k, v in self(feats).items()}


def fit_classifier(feats: Tensor, labels: dict[str, list[str]], epochs: int = 400, lr: float = 3e-3,
                   weight_decay: float = 1e-3, seed: int = 0) -> AdherenceClassifier:
    """Full-batch Adam on the summed cross-entropies of every target."""
    torch.manual_seed(seed)
    classes = {k: sorted(set(v)) for k, v in labels.items()}
    clf = AdherenceClassifier(feats.shape[1], classes)
    clf.mean.copy_(feats.mean(0))
    clf.std.copy_(feats.std(0).clamp_min(1e-6))
    y = {k: torch.tensor([classes[k].index(s) for s in v]) for k, v in labels.items()}
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    clf.train()
    for _ in range(epochs):
        out = clf(feats)
        loss = sum(F.cross_entropy(out[k], y[k]) for k in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


def accuracy(pred: dict[str, list[str]], labels: dict[str, list[str]]) -> dict[str, float]:
    acc = {k: float(np.mean([p == t for p, t in zip(pred[k], labels[k], strict=True)])) for k in pred}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def chance(train_labels: dict[str, list[str]], labels: dict[str, list[str]]) -> dict[str, float]:
    """Accuracy of always answering the training set's most frequent class."""
    out = {}
    for k, v in labels.items():
        values, counts = np.unique(train_labels[k], return_counts=True)
        out[k] = float(np.mean([t == values[counts.argmax()] for t in v]))
    out["mean"] = float(np.mean(list(out.values())))
    return out


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to embeddings a [N, D] and b [M, D]."""
    from scipy import linalg

    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


FEATURES = "features.pt"  # in the --out folder: features of the reconstructed clips, keyed by codec and clips


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def decoding_fingerprint() -> str:
    """Hash of the code that turns weights, prompt and seed into codes: a cached generation is reused
    only while that code is unchanged (a change to how draws are made changes every take)."""
    from magnet_rt import decoding, graphs, lm, sampling

    h = hashlib.sha256()
    for module in (decoding, graphs, lm, sampling):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def held_out_features(folder: Path, bundle: Path) -> Tensor:
    """The reconstructed held-out clips' features an adherence run left in `folder`, checked to come from
    `bundle`'s codec (for `benchmarks/schedules.py`)."""
    from ..bundle import CODEC_FILE

    blob = torch.load(Path(folder) / FEATURES, weights_only=True)
    if blob.get("codec") != file_sha(Path(bundle) / CODEC_FILE):
        raise ValueError(f"{folder / FEATURES} was made with another codec than {bundle}'s; re-run the adherence")
    return blob["held"]


def save_classifier(clf: AdherenceClassifier, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(path),
              metadata={"classes": json.dumps(clf.classes)})


def load_classifier(path: Path) -> AdherenceClassifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        classes = json.loads(f.metadata()["classes"])
    state = load_file(str(path))
    clf = AdherenceClassifier(state["mean"].shape[0], classes, hidden=state["body.0.weight"].shape[0])
    clf.load_state_dict(state)
    return clf.eval()


# ---- data: the generator's folder, split like the LM trainer ------------------------------------------
@dataclass
class Split:
    train: list  # CaptionedFile
    held: list


def split_like_lm(data: Path, valid: int) -> Split:
    """The LM trainer holds out the last `valid` captioned files (train/cli.py); so do we."""
    from .data import find_captioned_audio

    items = find_captioned_audio(data)
    return Split(items[:-valid], items[-valid:])


@torch.no_grad()
def reconstructed_features(codec, files: list, batch: int = 8) -> Tensor:
    """Features of codec.decode(codec.encode(x)) for each file (the sound the LM's outputs have)."""
    from .data import load_audio

    out = []
    for i in range(0, len(files), batch):
        clips = [load_audio(f.path)[0].mean(0) for f in files[i:i + batch]]
        n = min(len(c) for c in clips)
        x = torch.from_numpy(np.stack([c[:n] for c in clips]))[:, None]
        y = codec.decode(codec.encode(x, SR))[..., :n]
        out.append(audio_features(y[:, 0]))
    return torch.cat(out)


@torch.no_grad()
def generated_features(pipe, captions: list[str], params, seed: int, batch: int = 16) -> tuple[Tensor, float]:
    """Generate one take per caption (seed + index, batched) -> (features, seconds spent generating)."""
    from ..pipeline import Job

    feats, seconds = [], 0.0
    frames = pipe.frames_for(None)
    for i in range(0, len(captions), batch):
        job = Job(captions[i:i + batch], frames, params, seed + i)
        res = pipe.run_batch([job])[0]
        seconds += res.timings.get("total", 0.0)
        feats.append(audio_features(torch.from_numpy(res.audio).mean(1)))
    return torch.cat(feats), seconds


def _generated(pipe, out: Path, split, args, seed: int, lm_hash: str) -> tuple[Tensor, float]:
    """Features of one take per held-out caption for `seed`, cached per LM, decoding code, preset (with the
    bundle's own decoding defaults) and seed."""
    from ..presets import resolve_params

    params = resolve_params(args.preset, None, pipe.decoding)
    tag = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    cache = out / f"generated-{args.preset}-{tag}-seed{seed}-valid{args.valid}-{lm_hash}-{decoding_fingerprint()}.pt"
    if cache.is_file():  # the same LM, decoding code, preset, seed and captions: the same audio
        blob = torch.load(cache, weights_only=True)
        return blob["generated"], float(blob["seconds"])
    log.info("generating %d held-out captions with preset %s, seed %d", len(split.held), args.preset, seed)
    gen_x, gen_s = generated_features(pipe, [f.caption for f in split.held], params, seed)
    torch.save({"generated": gen_x, "seconds": gen_s}, cache)
    return gen_x, gen_s


def _mean(accuracies: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([a[k] for a in accuracies])) for k in accuracies[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m magnet_rt.train.adherence", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="the generator's folder (captions.jsonl with labels)")
    p.add_argument("--bundle", required=True, help="the demo bundle (its codec reconstructs; its LM generates)")
    p.add_argument("--out", required=True)
    p.add_argument("--valid", type=int, default=96, help="held-out files (the LM trainer's --valid)")
    p.add_argument("--train-clips", type=int, default=800, help="training clips for the classifier")
    p.add_argument("--preset", default="balanced")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[1000, 1001, 1002],
                   help="one take per held-out caption per seed; accuracies are averaged over the seeds "
                        "(one seed's 96 takes move a label's accuracy by +-0.05 or more)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..bundle import CODEC_FILE, LM_FILE, load_bundle

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = split_like_lm(Path(args.data), args.valid)
    if len(split.train) < args.train_clips:
        print(f"adherence: error: {len(split.train)} training files < --train-clips", file=sys.stderr)
        return 2
    pick = split.train[:: max(1, len(split.train) // args.train_clips)][: args.train_clips]
    pipe = load_bundle(args.bundle, device="cpu")
    train_labels, held_labels = labels_of([f.labels for f in pick]), labels_of([f.labels for f in split.held])
    key = {"codec": file_sha(Path(args.bundle) / CODEC_FILE), "train_files": [str(f.path) for f in pick],
           "held_files": [str(f.path) for f in split.held]}
    blob = torch.load(out / FEATURES, weights_only=True) if (out / FEATURES).is_file() else {}
    if all(blob.get(k) == v for k, v in key.items()):  # same codec, same clips: same reconstructions
        train_x, held_x = blob["train"], blob["held"]
    else:
        log.info("reconstructing %d training + %d held-out clips", len(pick), len(split.held))
        train_x = reconstructed_features(pipe.codec, pick)
        held_x = reconstructed_features(pipe.codec, split.held)
        torch.save({**key, "train": train_x, "held": held_x}, out / FEATURES)
    clf = fit_classifier(train_x, train_labels)
    save_classifier(clf, out / "classifier.safetensors")
    lm_hash = file_sha(Path(args.bundle) / LM_FILE)
    perm = np.random.default_rng(0).permutation(len(split.held))
    shuffled = {k: [v[i] for i in perm] for k, v in held_labels.items()}
    per_seed, controls, frechets, seconds = {}, [], [], 0.0
    for seed in args.seeds:
        gen_x, gen_s = _generated(pipe, out, split, args, seed, lm_hash)
        gen_pred = clf.predict(gen_x)
        per_seed[seed] = accuracy(gen_pred, held_labels)
        controls.append(accuracy(gen_pred, shuffled))
        frechets.append(frechet_distance(clf.embed(gen_x), clf.embed(held_x)))
        seconds += gen_s
    result = {
        "held_out_clips": len(split.held), "train_clips": len(pick), "preset": args.preset, "seeds": args.seeds,
        "chance": chance(train_labels, held_labels),
        "reconstructed_held_out": accuracy(clf.predict(held_x), held_labels),
        "generated": _mean(list(per_seed.values())),  # over the seeds: each seed is one take per caption
        "generated_per_seed": {str(k): v for k, v in per_seed.items()},
        "generated_vs_other_captions": _mean(controls),
        "frechet_generated_vs_reconstructed": float(np.mean(frechets)),
        "generation_seconds": seconds if np.isfinite(seconds) else None,  # None: features from an older cache
    }
    (out / "adherence.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
