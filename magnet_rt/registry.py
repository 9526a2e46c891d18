"""Model names -> pipelines. Every name loads through the released checkpoint format.

- `tiny-random`: a small MAGNeT + small EnCodec + tiny T5 with seeded random weights, written once
  into the cache folder in the exact released formats (`state_dict.bin`, full-weights
  `compression_state_dict.bin`, a transformers T5 folder) and then loaded like any released model.
  It makes noise, not music: it exists so the daemon and tests run on a fresh machine with no hub.
- a directory with `state_dict.bin` + `compression_state_dict.bin` (+ optional `text_encoder/`);
- a hub id such as `facebook/magnet-small-10secs` (through huggingface_hub's cache).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoints import save_audiocraft_lm
from .lm import MagnetConfig, MagnetLM

log = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"
TINY_RANDOM_VERSION = 1
RELEASED = ("facebook/magnet-small-10secs", "facebook/magnet-medium-10secs", "facebook/magnet-small-30secs",
            "facebook/magnet-medium-30secs", "facebook/audio-magnet-small", "facebook/audio-magnet-medium")
TINY_LM = MagnetConfig(dim=64, num_heads=4, num_layers=2, card=2048, text_dim=32, segment_duration=10.0)


def cache_dir() -> Path:
    return Path(os.environ.get("MAGNET_RT_CACHE", Path.home() / ".cache" / "magnet-rt"))


def known_models() -> list[str]:
    return [TINY_RANDOM, *RELEASED]


def build_tiny_random(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny-random model into `directory` (deterministic in `seed`)."""
    from .conditioning import build_random_t5
    from .encodec_checkpoints import (
        audiocraft_xp_cfg,
        random_encodec_config,
        random_encodec_model,
        write_audiocraft_compression_checkpoint,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_audiocraft_lm(MagnetLM(TINY_LM).init_weights(seed), out / "state_dict.bin", dtype=torch.float16)
    cfg = random_encodec_config()
    write_audiocraft_compression_checkpoint(out / "compression_state_dict.bin", random_encodec_model(cfg, seed),
                                            audiocraft_xp_cfg(cfg))
    build_random_t5(out / "text_encoder", d_model=TINY_LM.text_dim, seed=seed)
    return out


def cached_build(folder: str, marker: str, build) -> Path:
    """`cache_dir()/folder`, made by `build(tmp)` on first use and moved into place atomically (a
    concurrent builder's result wins; ours is discarded). `marker` is a file that proves it complete."""
    target = cache_dir() / folder
    if not (target / marker).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=target.parent))
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_random_dir() -> Path:
    """The tiny-random model's folder in the cache, built on first use."""
    return cached_build(f"{TINY_RANDOM}-v{TINY_RANDOM_VERSION}", "state_dict.bin", build_tiny_random)


def resolve_model(name: str) -> str | Path:
    """A name, folder or hub id -> what `MagnetPipeline.from_audiocraft` loads."""
    if name == TINY_RANDOM:
        return tiny_random_dir()
    return name


PRECISIONS = ("auto", "int8")


def load_pipeline(name: str, device: str = "auto", text_encoder: str | None = None, precision: str = "auto",
                  step_graphs: str = "auto", reference: bool = False):
    """`precision`: "auto" computes as released (fp16 blocks on CUDA, fp32 elsewhere); "int8" quantizes the
    block projections for a faster CPU (`int8.quantize_int8`; error after guidance: RESULTS.md).
    `step_graphs`, `reference`: the pipeline's decoding options (`pipeline.PipelineOptions`: same codes
    either way)."""
    from .bundle import is_bundle, load_bundle
    from .errors import InvalidParams
    from .int8 import int8_modules, quantize_int8
    from .pipeline import MagnetPipeline, PipelineOptions

    if precision not in PRECISIONS:
        raise InvalidParams(f"precision must be one of {PRECISIONS}, got {precision!r}")
    options = PipelineOptions(step_graphs=step_graphs, reference=reference)  # checked before a model loads
    if name == DEMO:
        pipe = load_demo(device=device, options=options)
    elif is_bundle(name):  # a magnet-rt bundle folder (the demo's format, e.g. a training run's OUT/bundle)
        pipe = load_bundle(name, device=device, options=options)
    else:
        pipe = MagnetPipeline.from_audiocraft(resolve_model(name), device=device, text_encoder=text_encoder,
                                              options=options, name=name)
    if name == TINY_RANDOM:
        log.warning("model tiny-random: RANDOM WEIGHTS, it makes noise, not music (offline test model)")
    if precision == "int8":
        if pipe.device.type != "cpu":
            raise InvalidParams("precision int8 is a CPU path; on a GPU the release's fp16 is used")
        quantize_int8(pipe.lm)
        log.info("model %s: %d int8 block projections (CPU; not bit-compatible with fp32)", name,
                 int8_modules(pipe.lm))
    return pipe


# ---- "demo": the small MAGNeT + EnCodec + MiniLM trained in this repository (docs/TRAINING.md) -------
DEMO = "demo"
DEMO_BUILD_HINT = ("build it with: python -m magnet_rt.train.datagen --out data/synth --n 4000 --seed 0; "
                   "python -m magnet_rt.train.codec --data data/synth --out runs/codec; "
                   "python -m magnet_rt.train.magnet --data data/synth --codec runs/codec/bundle --out runs/lm "
                   "--publish magnet_rt/assets/demo  (see docs/TRAINING.md)")


def demo_dir() -> Path:
    """Where the demo bundle ships: magnet_rt/assets/demo/ (config.json, model.safetensors, codec.safetensors)."""
    return Path(__file__).resolve().parent / "assets" / "demo"


def default_model() -> str:
    """What `magnet-rt serve` and `make demo` run without --model: the shipped demo bundle; tiny-random
    (random weights) only in a checkout whose bundle was removed."""
    from .bundle import is_bundle

    return DEMO if is_bundle(demo_dir()) else TINY_RANDOM


def load_demo(device: str = "auto", options=None):
    """The shipped demo bundle as a pipeline named "demo" (`options`: `pipeline.PipelineOptions`)."""
    from .bundle import is_bundle, load_bundle
    from .errors import CheckpointError

    d = demo_dir()
    if not is_bundle(d):
        raise CheckpointError(f"model 'demo' is not built yet (no trained bundle at {d}); {DEMO_BUILD_HINT}")
    return load_bundle(d, device=device, options=options, name=DEMO)
