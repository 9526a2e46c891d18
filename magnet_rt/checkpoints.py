"""Checkpoint files: the released audiocraft export format, hub resolution, validation.

`state_dict.bin` (audiocraft `utils/export.py:61-79`) is a `torch.save`d dict: `best_state` (the LM
state dict incl. the T5 conditioner's `output_proj`), `xp.cfg` (the training config as a YAML
string), `version`, `exported`. Released tensors are fp16; they are cast to the model's dtype.
Only `torch.load(weights_only=True)` is used: a file that carries pickled code is refused.
"""

from __future__ import annotations

import logging
import pickle
import re
import socket
import threading
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import yaml

from .errors import CheckpointError, UnsupportedConfig
from .lm import MagnetConfig, MagnetLM

log = logging.getLogger(__name__)

AUDIOCRAFT_VERSION = "1.3.0"  # what our exports claim to be compatible with


# ---- files ----------------------------------------------------------------------------------------
def resolve_file(name_or_path: str | Path, filename: str, **hub_kwargs) -> Path:
    """A file path, a directory holding `filename`, or a hub repo id (through huggingface_hub's cache;
    `HF_HUB_OFFLINE=1` or `local_files_only=True` never touch the network)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        f = p / filename
        if not f.is_file():
            raise CheckpointError(f"{p} has no {filename}")
        return f
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") != 1:
        raise CheckpointError(f"{name_or_path}: no such file or directory, and not a hub repo id")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = str(name_or_path)
    try:  # the local cache first: no network, no retries
        return Path(hf_hub_download(repo_id=repo, filename=filename, **{**hub_kwargs, "local_files_only": True}))
    except LocalEntryNotFoundError:
        pass
    if hub_kwargs.get("local_files_only") or constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT):
        raise CheckpointError(f"{repo} is not in the local model cache, and the hub cannot be reached (offline): "
                              f"download it on a machine with network (`huggingface-cli download {repo}`), or "
                              "give a folder that holds it")
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, **hub_kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"could not fetch {repo}/{filename}: {e}") from e


def hub_reachable(endpoint: str, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout_s` (name lookup included, which a
    socket timeout does not bound: it runs on a thread that is abandoned when late)."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(result and result[0])


def safe_load(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"global {found.group(1)}" if found else str(e).splitlines()[0]
        raise CheckpointError(f"{path}: refused, the file carries pickled code ({what}); only plain "
                              "tensors and containers are loaded (torch.load weights_only=True)") from e
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, AttributeError,
            zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'unexpected end of file'})") from e
    except Exception as e:  # struct.error and other low-level unpickler failures on damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


# ---- audiocraft LM format -------------------------------------------------------------------------
def _cfg_get(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_REQUIRED = {  # xp.cfg field -> value the architecture here computes
    "lm_model": "transformer_lm_magnet",
    "transformer_lm.positional_embedding": "sin",
    "transformer_lm.norm_first": True,
    "transformer_lm.causal": False,
    "transformer_lm.activation": "gelu",
    "transformer_lm.bias_attn": False,
    "transformer_lm.bias_ff": False,
    "transformer_lm.bias_proj": False,
    "codebooks_pattern.modeling": "parallel",
}
_DEFAULTS_OK = {  # fields that may be absent; when present they must equal these
    "transformer_lm.layer_scale": None,
    "transformer_lm.kv_repeat": 1,
    "transformer_lm.positional_scale": 1.0,
    "transformer_lm.norm": "layer_norm",
    "transformer_lm.cross_attention": False,
    "transformer_lm.qk_layer_norm": False,
    "transformer_lm.qk_layer_norm_cross": False,
    "fuser.cross_attention_pos_emb": False,
}


def config_from_xp(xp: dict, text_dim: int, frame_rate: int = 50) -> MagnetConfig:
    """Build the MagnetConfig from a parsed `xp.cfg`, refusing what this architecture cannot compute."""
    for key, want in _REQUIRED.items():
        got = _cfg_get(xp, key)
        if got != want:
            raise UnsupportedConfig(f"xp.cfg {key} = {got!r}; magnet-rt computes {want!r}")
    for key, want in _DEFAULTS_OK.items():
        got = _cfg_get(xp, key, want)
        if got is not None and got != want:
            raise UnsupportedConfig(f"xp.cfg {key} = {got!r} is not supported (expected {want!r})")
    lm = _cfg_get(xp, "transformer_lm", {})
    try:
        seg = float(_cfg_get(xp, "dataset.segment_duration", lm.get("segment_duration", 10.0)))
        return MagnetConfig(
            dim=int(lm["dim"]), num_heads=int(lm["num_heads"]), num_layers=int(lm["num_layers"]),
            hidden_scale=int(lm.get("hidden_scale", 4)), n_q=int(lm.get("n_q", 4)), card=int(lm.get("card", 2048)),
            text_dim=int(text_dim), subcodes_context=int(lm.get("subcodes_context", 5)),
            span_len=int(_cfg_get(xp, "masking.span_len", lm.get("span_len", 3))), segment_duration=seg,
            frame_rate=int(frame_rate), max_period=float(lm.get("max_period") or 10000.0),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"xp.cfg transformer_lm is missing or has a bad field: {e}") from e


def audiocraft_key_to_ours(key: str) -> str:
    key = re.sub(r"^condition_provider\.conditioners\.[^.]+\.output_proj\.", "output_proj.", key)
    return key.removeprefix("transformer.")


def ours_to_audiocraft_key(key: str, condition: str = "description") -> str:
    if key.startswith("output_proj."):
        return f"condition_provider.conditioners.{condition}.{key}"
    if key.startswith("layers."):
        return "transformer." + key
    return key


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Every key and shape must match; the error names each mismatch."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = [f"{k}: checkpoint {list(got[k])} vs model {list(want[k])}" for k in sorted(set(want) & set(got))
             if want[k] != got[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}"
                        f"{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong[:8])}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + " | ".join(problems))


def read_audiocraft_lm(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(parsed xp.cfg, state dict in our key names) from a released `state_dict.bin` or its directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "state_dict.bin"
    pkg = safe_load(path)
    if not isinstance(pkg, dict) or "best_state" not in pkg or "xp.cfg" not in pkg:
        raise CheckpointError(f"{path} is not an audiocraft export (needs 'best_state' and 'xp.cfg')")
    state = pkg["best_state"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # older training checkpoints: {'best_state': {'model': ...}}
    xp_raw = pkg["xp.cfg"]
    try:
        xp = yaml.safe_load(xp_raw) if isinstance(xp_raw, str) else dict(xp_raw)
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: xp.cfg is not valid YAML: {e}") from e
    if not isinstance(xp, dict):
        raise CheckpointError(f"{path}: xp.cfg is not a mapping")
    ours = {audiocraft_key_to_ours(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return xp, ours


def load_audiocraft_lm(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       frame_rate: int = 50) -> MagnetLM:
    """Load a released `state_dict.bin` (or a directory holding it)."""
    xp, state = read_audiocraft_lm(path)
    if "output_proj.weight" not in state:
        raise CheckpointError(f"{path}: no condition_provider.conditioners.*.output_proj.weight (the text projection)")
    cfg = config_from_xp(xp, text_dim=state["output_proj.weight"].shape[1], frame_rate=frame_rate)
    with torch.device("meta"):
        model = MagnetLM(cfg)
    check_state_dict(model, state, str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    model.text_encoder_name = _cfg_get(xp, "conditioners.description.t5.name", "t5-base")
    model = model.to(device).eval()
    if dtype is not None and dtype != torch.float32:
        model.set_precision(dtype)
    log.info("loaded %s: dim %d, %d layers, %d heads, %.1f s segment", path, cfg.dim, cfg.num_layers,
             cfg.num_heads, cfg.segment_duration)
    return model


def load_pretrained_lm(repo_id: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       **hub_kwargs) -> MagnetLM:
    """Resolve `repo_id` (hub id, hub cache, or local directory) and load its `state_dict.bin`."""
    return load_audiocraft_lm(resolve_file(repo_id, "state_dict.bin", **hub_kwargs), device=device, dtype=dtype)


def audiocraft_xp_cfg(cfg: MagnetConfig, text_encoder: str = "t5-base") -> str:
    """An `xp.cfg` YAML string holding every field the release's loader and our reader use."""
    xp = {
        "lm_model": "transformer_lm_magnet",
        "sample_rate": 32000, "channels": 1,
        "dataset": {"segment_duration": cfg.segment_duration},
        "masking": {"span_len": cfg.span_len},
        "codebooks_pattern": {"modeling": "parallel", "parallel": {"empty_initial": -1}},
        "transformer_lm": {
            "dim": cfg.dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
            "hidden_scale": cfg.hidden_scale, "n_q": cfg.n_q, "card": cfg.card, "dropout": 0.0,
            "activation": "gelu", "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False,
            "causal": False, "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False, "checkpointing": "none",
            "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm",
            "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
            "subcodes_context": cfg.subcodes_context, "compression_model_framerate": cfg.frame_rate,
            "segment_duration": cfg.segment_duration, "span_len": cfg.span_len,
        },
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {
            "name": text_encoder, "finetune": False, "word_dropout": 0.0, "normalize_text": False}}},
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
    }
    return yaml.safe_dump(xp, sort_keys=False)


def save_audiocraft_lm(model: MagnetLM, path: str | Path, dtype: torch.dtype = torch.float16,
                       text_encoder: str = "t5-base") -> Path:
    """Write `model` as a released `state_dict.bin` (fp16 tensors by default, like the release). A model with
    musical controls (a beat grid, `tempo.py`; a key input, `tonality.py`) has no released form: CheckpointError."""
    if model.has_controls:
        raise CheckpointError("the released format has no beat grid or key input; this model lives in a bundle only")
    path = Path(path)
    if path.suffix != ".bin":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "state_dict.bin"
    best = {ours_to_audiocraft_key(k): v.detach().to("cpu", dtype).contiguous()
            for k, v in model.state_dict().items()}
    torch.save({"best_state": best, "xp.cfg": audiocraft_xp_cfg(model.cfg, text_encoder),
                "version": AUDIOCRAFT_VERSION, "exported": True}, path)
    return path
