"""EnCodec checkpoints: audiocraft's `compression_state_dict.bin` read, converted and written.

Loads the codec the way audiocraft ships it (pointer or full-weights form), converts it to transformers'
`EncodecModel` with the 4 regex renames of `shared/reference/encodec-layout.md` section 4 and the config
of section 5 (`load_audiocraft_codec` -> `codec.Codec`). It also writes the same formats
(`write_audiocraft_compression_checkpoint`, `write_pointer_checkpoint`) by inverting the mapping, so tests
and the offline "tiny-random" model round-trip through the real layout without any download, and builds
small random EnCodecs of the released architecture.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers import EncodecConfig, EncodecModel

from .checkpoints import safe_load
from .codec import Codec
from .errors import CheckpointError, UnsupportedConfig

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "compression_state_dict.bin"


def load_audiocraft_codec(path: str | Path, device: str | torch.device = "cpu", half: bool = False) -> Codec:
    """Load audiocraft's `compression_state_dict.bin` (the file, or a folder holding it).

    Pointer form `{'pretrained': name}` -> `EncodecModel.from_pretrained(name)` (a folder next to the
    file is tried first, then the name as given). Full-weights form `{'best_state', 'xp.cfg'}` ->
    config from the file's own xp.cfg (pad_mode included), renamed keys, strict load.
    """
    file = Path(path)
    if file.is_dir():
        file = file / CHECKPOINT_NAME
    pkg = safe_load(file)
    if not isinstance(pkg, Mapping):
        raise CheckpointError(f"{file}: expected a dict, got {type(pkg).__name__}")
    if "pretrained" in pkg:
        name = str(pkg["pretrained"])
        local = file.parent / name
        target = local if local.is_dir() else name
        log.info("%s points to pretrained EnCodec %r", file, str(target))
        return Codec.from_pretrained(target, device=device, half=half)
    if "best_state" not in pkg or "xp.cfg" not in pkg:
        raise CheckpointError(f"{file}: neither a pointer ('pretrained') nor full weights "
                              f"('best_state' + 'xp.cfg'); keys: {sorted(map(str, pkg))}")
    xp = pkg["xp.cfg"]
    if isinstance(xp, str):
        try:
            xp = yaml.safe_load(xp)
        except yaml.YAMLError as e:
            raise CheckpointError(f"{file}: xp.cfg is not valid YAML: {e}") from e
    if not isinstance(xp, Mapping):
        raise CheckpointError(f"{file}: xp.cfg must be a YAML mapping, got {type(xp).__name__}")
    config = encodec_config_from_xp_cfg(xp)
    model = _build_model(config)
    _load_audiocraft_state(model, pkg["best_state"], file)
    log.info("loaded EnCodec %d Hz, hop %d, %d x %d codes, pad_mode=%s from %s", config.sampling_rate,
             config.hop_length, config.num_quantizers, config.codebook_size, config.pad_mode, file)
    return Codec(model, device=device, half=half)


# ---- checkpoint reading ----------------------------------------------------------------------------------


_INTERP = re.compile(r"\$\{([^${}]+)\}")
_MISSING = object()


def _cfg_get(root: Mapping, dotted: str, default: Any = _MISSING, _seen: frozenset = frozenset()) -> Any:
    """`root['a']['b']` for `dotted='a.b'`, resolving OmegaConf-style `${x.y}` interpolations lazily
    (only what is read, so unrelated `${oc.env:...}` / `${hydra:...}` values elsewhere do no harm)."""
    node: Any = root
    for part in dotted.split("."):
        node = _resolve(root, node, _seen)
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise CheckpointError(f"xp.cfg has no '{dotted}'")
            return default
        node = node[part]
    return _resolve(root, node, _seen, deep=True)


def _resolve(root: Mapping, value: Any, seen: frozenset, deep: bool = False) -> Any:
    if isinstance(value, str):
        whole = _INTERP.fullmatch(value.strip())
        if whole:
            return _lookup(root, whole.group(1).strip(), seen)
        return _INTERP.sub(lambda m: str(_lookup(root, m.group(1).strip(), seen)), value)
    if deep and isinstance(value, Mapping):
        return {k: _resolve(root, v, seen, deep=True) for k, v in value.items()}
    if deep and isinstance(value, list):
        return [_resolve(root, v, seen, deep=True) for v in value]
    return value


def _lookup(root: Mapping, key: str, seen: frozenset) -> Any:
    if ":" in key or key.startswith("."):
        raise UnsupportedConfig(f"xp.cfg interpolation '${{{key}}}' (resolver or relative) is not supported")
    if key in seen:
        raise CheckpointError(f"xp.cfg interpolation cycle through '{key}'")
    return _cfg_get(root, key, _seen=seen | {key})


def _unsupported(option: str, value: Any, why: str) -> UnsupportedConfig:
    return UnsupportedConfig(f"xp.cfg option {option}={value!r} cannot be expressed by transformers' "
                             f"EncodecModel ({why})")


_DECODER_ONLY = {"trim_right_ratio", "final_activation", "final_activation_params"}
# What audiocraft builds when xp.cfg lacks a key: the SEANetEncoder/Decoder and ResidualVectorQuantizer
# constructor defaults (`modules/seanet.py:91-96, 186-192`, `quantization/vq.py:35-47`). Note pad_mode
# 'reflect' and norm 'none' there; the shipped configs set pad_mode 'constant' and weight_norm explicitly.
_SEANET_DEFAULTS = {
    "dimension": 128, "n_filters": 32, "n_residual_layers": 3, "ratios": [8, 5, 4, 2], "activation": "ELU",
    "activation_params": {"alpha": 1.0}, "norm": "none", "norm_params": {}, "kernel_size": 7,
    "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2, "pad_mode": "reflect",
    "true_skip": True, "compress": 2, "lstm": 0, "disable_norm_outer_blocks": 0,
}
_RVQ_DEFAULTS = {"n_q": 8, "bins": 1024}


def encodec_config_from_xp_cfg(xp: Mapping) -> EncodecConfig:
    """The `EncodecConfig` that reproduces an audiocraft EnCodec, from its (yaml-loaded) xp.cfg.

    Every field is set (transformers' defaults are not audiocraft's); `pad_mode` comes from the file.
    Options transformers cannot express raise `UnsupportedConfig` naming the option.
    """
    def get(key: str, default: Any = _MISSING) -> Any:
        return _cfg_get(xp, key, default)

    for option, expected in (("compression_model", "encodec"), ("encodec.autoencoder", "seanet"),
                             ("encodec.quantizer", "rvq")):
        if (value := get(option)) != expected:
            raise _unsupported(option, value, f"only {expected!r} is supported")
    given = get("seanet", {})
    if not isinstance(given, Mapping):
        raise CheckpointError(f"xp.cfg 'seanet' must be a mapping, got {given!r}")
    seanet = {**_SEANET_DEFAULTS, **given}
    rvq = {**_RVQ_DEFAULTS, **(get("rvq", {}) or {})}
    channels = int(get("encodec.channels"))
    causal = bool(get("encodec.causal", False))

    if (lstm := int(seanet["lstm"])) < 1:
        raise _unsupported("seanet.lstm", lstm, "it always builds the LSTM")
    if (outer := int(seanet["disable_norm_outer_blocks"])) != 0:
        raise _unsupported("seanet.disable_norm_outer_blocks", outer, "it normalises every conv")
    if (norm := seanet["norm"]) not in ("weight_norm", "time_group_norm"):
        raise _unsupported("seanet.norm", norm, "only weight_norm and time_group_norm exist there")
    if seanet["norm_params"] not in (None, {}):
        raise _unsupported("seanet.norm_params", seanet["norm_params"], "no norm parameters")
    activation, act_params = seanet["activation"], seanet["activation_params"] or {}
    if activation != "ELU" or float(act_params.get("alpha", 1.0)) != 1.0 or set(act_params) - {"alpha"}:
        raise _unsupported("seanet.activation", f"{activation}({act_params})", "only ELU(alpha=1)")
    for side in ("encoder", "decoder"):
        for key, value in (seanet.get(side) or {}).items():
            if side == "decoder" and key in _DECODER_ONLY:
                continue
            if key not in seanet or seanet[key] != value:
                raise _unsupported(f"seanet.{side}.{key}", value, "no per-side overrides")
    dec = seanet.get("decoder") or {}
    if dec.get("final_activation") is not None:
        raise _unsupported("seanet.decoder.final_activation", dec["final_activation"], "no final activation")
    if int(seanet.get("channels", channels)) != channels:
        raise _unsupported("seanet.channels", seanet["channels"], f"differs from encodec.channels={channels}")
    if bool(seanet.get("causal", causal)) != causal:  # the convs follow seanet.causal (= ${encodec.causal})
        raise _unsupported("seanet.causal", seanet["causal"], f"differs from encodec.causal={causal}")
    trim = float(dec.get("trim_right_ratio", 1.0))
    if trim != 1.0 and not causal:
        raise _unsupported("seanet.decoder.trim_right_ratio", trim, "only for causal convolutions")
    dimension = int(seanet["dimension"])
    if rvq.get("codebook_dim") not in (None, dimension):
        raise _unsupported("rvq.codebook_dim", rvq["codebook_dim"], "no codebook projection")
    bins, n_q = int(rvq["bins"]), int(rvq["n_q"])
    if bins < 2 or bins & (bins - 1):
        raise _unsupported("rvq.bins", bins, "codebook size must be a power of 2")
    if n_q < 1:
        raise _unsupported("rvq.n_q", n_q, "at least one codebook")

    config = EncodecConfig(
        sampling_rate=int(get("encodec.sample_rate")),
        audio_channels=channels,
        normalize=bool(get("encodec.renormalize", False)),
        chunk_length_s=None,  # audiocraft encodes the whole signal
        overlap=None,
        hidden_size=dimension,
        codebook_dim=dimension,
        num_filters=int(seanet["n_filters"]),
        num_residual_layers=int(seanet["n_residual_layers"]),
        upsampling_ratios=[int(r) for r in seanet["ratios"]],  # decoder order, as audiocraft's
        norm_type=norm,
        kernel_size=int(seanet["kernel_size"]),
        residual_kernel_size=int(seanet["residual_kernel_size"]),
        last_kernel_size=int(seanet["last_kernel_size"]),
        dilation_growth_rate=int(seanet["dilation_base"]),
        use_causal_conv=causal,
        pad_mode=str(seanet["pad_mode"]),
        compress=int(seanet["compress"]),
        num_lstm_layers=lstm,
        trim_right_ratio=trim,
        use_conv_shortcut=not bool(seanet["true_skip"]),
        codebook_size=bins,
        target_bandwidths=[1.0],  # placeholder, set below once frame_rate is known
    )
    config.target_bandwidths = [_bandwidth_for(n_q, config)]
    return config


def _bandwidth_for(n_q: int, config: EncodecConfig) -> float:
    """`n_q * frame_rate * log2(bins) / 1000` (2.2 kbps for 4 x 2048 at 50 Hz), nudged up by a few ulps
    where float rounding would make transformers derive n_q - 1 codebooks from it."""
    per_q = config.frame_rate * config.codebook_nbits
    bw = n_q * per_q / 1000
    while int(1000 * bw // per_q) < n_q or math.floor(bw * 1000 / per_q) < n_q:
        bw = math.nextafter(bw, math.inf)
    return bw


def _build_model(config: EncodecConfig) -> EncodecModel:
    try:
        return EncodecModel(config).eval()
    except ValueError as e:
        raise UnsupportedConfig(f"transformers rejects the EnCodec config: {e}") from e


# audiocraft -> transformers renames (encodec-layout.md section 4), applied in order; the two `.norm.`
# rules cover time_group_norm (GroupNorm inside audiocraft's NormConv1d, beside the conv in transformers).
_RENAMES = [
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\."), r"\1.layers.\2."),
    (re.compile(r"\.convtr\.convtr\."), ".conv."),
    (re.compile(r"\.conv\.conv\."), ".conv."),
    (re.compile(r"\.(conv|convtr)\.norm\."), ".norm."),
    (re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\."), r"quantizer.layers.\1.codebook."),
    (re.compile(r"\.weight_g$"), ".parametrizations.weight.original0"),
    (re.compile(r"\.weight_v$"), ".parametrizations.weight.original1"),
]


def audiocraft_to_transformers_key(key: str) -> str:
    """One audiocraft EnCodec state-dict key -> the transformers `EncodecModel` key."""
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def _to_audiocraft_key(model: EncodecModel, key: str) -> str:
    """Inverse of `audiocraft_to_transformers_key` (needs the model to tell conv from transposed conv)."""
    m = re.match(r"^quantizer\.layers\.(\d+)\.codebook\.(.+)$", key)
    if m:
        return f"quantizer.vq.layers.{m.group(1)}._codebook.{m.group(2)}"
    key = key.replace(".parametrizations.weight.original0", ".weight_g")
    key = key.replace(".parametrizations.weight.original1", ".weight_v")
    m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$", key)
    if not m:
        return key
    side, idx, rest = m.groups()
    layer = model.get_submodule(f"{side}.layers.{idx}")
    head = f"{side}.model.{idx}"
    tr = "convtr" if type(layer).__name__ == "EncodecConvTranspose1d" else "conv"
    if rest.startswith("conv."):
        return f"{head}.{tr}.{tr}.{rest[len('conv.'):]}"
    if rest.startswith("norm."):
        return f"{head}.{tr}.{rest}"
    # resnet block convs / shortcut: "block.M.conv.X", "block.M.norm.X", "shortcut.conv.X"
    rest = re.sub(r"^(block\.\d+|shortcut)\.conv\.", r"\1.conv.conv.", rest)
    rest = re.sub(r"^(block\.\d+|shortcut)\.norm\.", r"\1.conv.norm.", rest)
    return f"{head}.{rest}"


def _load_audiocraft_state(model: EncodecModel, state: Any, file: Path) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{file}: 'best_state' must be a dict of tensors")
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: 'best_state' entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor")
        new = audiocraft_to_transformers_key(str(key))
        renamed[new], origin[new] = value, str(key)
    expected = model.state_dict()
    missing = sorted(_to_audiocraft_key(model, k) for k in expected.keys() - renamed.keys())
    unexpected = sorted(origin[k] for k in renamed.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not match the EnCodec described by its xp.cfg: "
                              f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    wrong = [f"'{origin[k]}' has shape {list(renamed[k].shape)}, expected {list(v.shape)}"
             for k, v in expected.items() if renamed[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{file}: {len(wrong)} tensor(s) with the wrong shape for its xp.cfg: "
                              + "; ".join(wrong[:8]))
    model.load_state_dict({k: v.to(torch.float32) for k, v in renamed.items()}, strict=True)


def _few(names: list[str], n: int = 8) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return f"{names[:n]}{more}"


# ---- checkpoint writing (tests, offline tiny-random model) ----------------------------------------------


def transformers_to_audiocraft_state(model: EncodecModel,
                                     state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`state` (default: the model's own weights) under audiocraft's full-weights key names
    (`weight_g`/`weight_v`); `model` supplies the structure (conv vs transposed conv)."""
    state = model.state_dict() if state is None else state
    return {_to_audiocraft_key(model, k): v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}


def audiocraft_xp_cfg(config: EncodecConfig, overrides: Mapping[str, Any] | None = None) -> str:
    """An xp.cfg YAML string, laid out like the real ones (global `sample_rate`/`channels`, the codec
    sections keep `${...}` interpolations unresolved), for an `EncodecConfig`. `overrides` maps dotted
    paths to values (e.g. `{"seanet.lstm": 0}`) to write unusual files."""
    n_q = config.num_quantizers
    xp: dict[str, Any] = {
        "device": "cuda",
        "dtype": "float32",
        "sample_rate": int(config.sampling_rate),
        "channels": int(config.audio_channels),
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": "${sample_rate}",
                    "channels": "${channels}", "causal": bool(config.use_causal_conv),
                    "renormalize": bool(config.normalize)},
        "seanet": {
            "dimension": int(config.hidden_size), "channels": "${channels}", "causal": "${encodec.causal}",
            "n_filters": int(config.num_filters), "n_residual_layers": int(config.num_residual_layers),
            "ratios": [int(r) for r in config.upsampling_ratios], "activation": "ELU",
            "activation_params": {"alpha": 1.0}, "norm": config.norm_type, "norm_params": {},
            "kernel_size": int(config.kernel_size), "residual_kernel_size": int(config.residual_kernel_size),
            "last_kernel_size": int(config.last_kernel_size),
            "dilation_base": int(config.dilation_growth_rate), "pad_mode": config.pad_mode,
            "true_skip": not config.use_conv_shortcut, "compress": int(config.compress),
            "lstm": int(config.num_lstm_layers), "disable_norm_outer_blocks": 0,
            "decoder": {"trim_right_ratio": float(config.trim_right_ratio), "final_activation": None,
                        "final_activation_params": None},
            "encoder": {},
        },
        "rvq": {"n_q": n_q, "q_dropout": False, "bins": int(config.codebook_size), "decay": 0.99,
                "kmeans_init": True, "kmeans_iters": 50, "threshold_ema_dead_code": 2,
                "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False},
        "no_quant": {},
        # Unrelated sections of a real xp.cfg use resolvers a plain YAML reader cannot evaluate.
        "dora": {"dir": "/checkpoint/${oc.env:USER}/experiments/audiocraft/outputs", "exclude": []},
    }
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = xp
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return yaml.safe_dump(xp, sort_keys=False)


def write_audiocraft_compression_checkpoint(path: str | Path, model_or_state: EncodecModel | Mapping,
                                            xp_cfg_yaml: str, version: str = "1.3.0") -> Path:
    """Write the full-weights `compression_state_dict.bin` layout audiocraft's exporter produces:
    `{'best_state': <audiocraft keys>, 'xp.cfg': <yaml str>, 'version', 'exported': True}`.

    `model_or_state` is a transformers `EncodecModel` or its state dict (then the model structure is
    rebuilt from `xp_cfg_yaml`). A folder `path` gets `compression_state_dict.bin` inside it."""
    file = Path(path)
    if file.is_dir():
        file = file / CHECKPOINT_NAME
    if isinstance(model_or_state, nn.Module):
        state = transformers_to_audiocraft_state(model_or_state)
    else:  # the structure (which layers are transposed convs) comes from the xp.cfg
        with torch.device("meta"):
            skeleton = EncodecModel(encodec_config_from_xp_cfg(yaml.safe_load(xp_cfg_yaml)))
        state = transformers_to_audiocraft_state(skeleton, model_or_state)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"best_state": state, "xp.cfg": xp_cfg_yaml, "version": version, "exported": True}, file)
    return file


def write_pointer_checkpoint(path: str | Path, name: str, version: str = "1.3.0") -> Path:
    """Write audiocraft's pointer form `{'pretrained': name, 'exported': True, 'version'}`."""
    file = Path(path)
    if file.is_dir():
        file = file / CHECKPOINT_NAME
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"pretrained": str(name), "exported": True, "version": version}, file)
    return file


# ---- small random models ----------------------------------------------------------------------------------


def random_encodec_config(sample_rate: int = 32000, ratios: tuple[int, ...] = (8, 5, 4, 4),
                          n_filters: int = 4, dimension: int = 16, lstm_layers: int = 1,
                          card: int = 2048, n_q: int = 4, channels: int = 1,
                          pad_mode: str = "constant") -> EncodecConfig:
    """A small EnCodec with audiocraft's architecture choices (SEANet, non-causal, identity skips,
    weight norm, `pad_mode` constant). Keep `sample_rate / prod(ratios) == 50` for MAGNeT's frame rate."""
    config = EncodecConfig(
        sampling_rate=sample_rate, audio_channels=channels, normalize=False, chunk_length_s=None,
        overlap=None, hidden_size=dimension, codebook_dim=dimension, num_filters=n_filters,
        num_residual_layers=1, upsampling_ratios=list(ratios), norm_type="weight_norm", kernel_size=7,
        residual_kernel_size=3, last_kernel_size=7, dilation_growth_rate=2, use_causal_conv=False,
        pad_mode=pad_mode, compress=2, num_lstm_layers=lstm_layers, trim_right_ratio=1.0,
        use_conv_shortcut=False, codebook_size=card, target_bandwidths=[1.0],
    )
    config.target_bandwidths = [_bandwidth_for(n_q, config)]
    return config


@torch.no_grad()
def random_encodec_model(config: EncodecConfig, seed: int = 0) -> EncodecModel:
    """An `EncodecModel` with seeded random weights (global RNG untouched) whose codes are varied.

    Weight-norm g ~ U(0.5, 1.5), v ~ N(0, 1), biases 0.05 N(0, 1), LSTM U(-0.1, 0.1). Codebook q is
    N(0, 1) scaled to the std of the residual it quantizes on a noise input, so codes spread over the
    codebook instead of collapsing onto a few entries."""
    gen = torch.Generator().manual_seed(seed)
    model = EncodecModel(config).eval()
    for name, tensor in model.state_dict().items():
        shape = tensor.shape
        if name.endswith("original0"):
            new = torch.rand(shape, generator=gen) + 0.5
        elif ".lstm." in name:
            new = torch.rand(shape, generator=gen) * 0.2 - 0.1
        elif name.endswith(".bias"):
            new = torch.randn(shape, generator=gen) * 0.05
        elif name.startswith("quantizer."):
            continue
        else:
            new = torch.randn(shape, generator=gen)
        tensor.copy_(new)
    probe = torch.randn(1, config.audio_channels, 2 * config.sampling_rate, generator=gen) * 0.3
    residual = model.encoder(probe)  # [1, D, T]
    for vq in model.quantizer.layers:
        book = vq.codebook
        scale = residual.std().clamp_min(1e-6)
        book.embed.copy_(torch.randn(book.embed.shape, generator=gen) * scale)
        book.embed_avg.copy_(book.embed)
        book.cluster_size.copy_(torch.rand(book.cluster_size.shape, generator=gen) * 10)
        book.inited.fill_(1.0)
        residual = residual - vq.decode(vq.encode(residual))
    return model
