"""EnCodec audio codec at run time: `Codec` over transformers' `EncodecModel`.

MAGNeT's LM works on EnCodec tokens `[B, K, T]` (K codebooks of `card` entries, 50 frames/s). `Codec`
encodes audio -> codes and decodes codes -> audio (partial-RVQ preview decode, optional fp16 decoder).
Reading and writing audiocraft's checkpoint files (and their conversion to transformers' layout) lives in
`encodec_checkpoints`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import EncodecModel

from .audio import as_float32, downmix, resample, validate_sample_rate
from .devices import codec_device
from .errors import CheckpointError, InvalidAudio, InvalidParams, UnsupportedConfig

log = logging.getLogger(__name__)

__all__ = ["Codec", "check_codes", "prepare_audio"]


class Codec:
    """An EnCodec model with the audiocraft (MAGNeT) calling conventions.

    `encode` mirrors audiocraft's `HFEncodecCompressionModel.encode` (`model.encode(x, bandwidth)`,
    `audio_codes[0]`) and `decode` its `model.decode(codes[None], [None])` (untrimmed: T * hop samples).
    """

    def __init__(self, model: EncodecModel, device: str | torch.device = "cpu", half: bool = False):
        cfg = model.config
        # The codes-only API cannot carry per-chunk scales or overlap-add chunks; MAGNeT's codecs use neither.
        if cfg.normalize:
            raise UnsupportedConfig("EnCodec 'normalize' (audiocraft renormalize) is not supported: "
                                    "decoding would need the per-input scale, which codes do not carry")
        if cfg.chunk_length_s is not None:
            raise UnsupportedConfig("EnCodec 'chunk_length_s' (chunked encoding) is not supported")
        self.device = codec_device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        self.sample_rate: int = int(cfg.sampling_rate)
        self.channels: int = int(cfg.audio_channels)
        self.hop_length: int = int(cfg.hop_length)
        self.frame_rate: int = int(cfg.frame_rate)
        self.card: int = int(cfg.codebook_size)
        # Same choice as audiocraft's HF wrapper: the bandwidth that uses the most codebooks.
        quantizer = self.model.quantizer
        self.bandwidth: float = max(cfg.target_bandwidths, key=quantizer.get_num_quantizers_for_bandwidth)
        self.n_q: int = quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)
        # fp16 decoding: a half copy of the decoder beside the fp32 model, which encodes, and decodes again
        # whenever the half output is not finite (fp16 overflows at 65504; its rounding is ~63 dB below the
        # signal on the demo codec: benchmarks/RESULTS.md). Default on CUDA (devices.codec_half).
        self.half = bool(half)
        self._half_decoder = copy.deepcopy(self.model.decoder).half() if self.half else None
        self.half_fallbacks = 0  # decodes redone in fp32 because the fp16 output overflowed

    # ---- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu",
                        half: bool = False) -> Codec:
        """Load a transformers-format EnCodec (a `save_pretrained` folder or a hub id, resolved by
        huggingface_hub: local folder, cache, `HF_HUB_OFFLINE` respected)."""
        try:
            model = EncodecModel.from_pretrained(str(name_or_dir), dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load EnCodec {str(name_or_dir)!r}: {e}") from e
        return cls(model, device=device, half=half)

    # ---- encode / decode -------------------------------------------------------------------------------

    def encode(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio `[N]`, `[C, N]` or `[B, C, N]` (channels first, any sample rate) -> codes `[B, K, T]`
        int64 on `self.device`, T = ceil(N' / hop) where N' is the length at the codec's rate."""
        x = prepare_audio(audio, sample_rate, self.channels, self.sample_rate, self.device)
        with torch.inference_mode():
            out = self.model.encode(x, bandwidth=self.bandwidth)
        return out.audio_codes[0]  # [B, K, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, K', T]` with 1 <= K' <= n_q -> float32 audio `[B, C, T * hop]` on `self.device`.

        K' < n_q decodes the sum of the first K' codebooks only (a low-fidelity preview, e.g. after
        MAGNeT's first stage)."""
        codes = check_codes(codes, self.n_q, self.card).to(self.device)
        with torch.inference_mode():
            if self._half_decoder is not None:
                emb = self.model.quantizer.decode(codes.transpose(0, 1))  # [B, D, T]
                audio = self._half_decoder(emb.half()).float()
                if bool(torch.isfinite(audio).all()):  # the caller reads the audio back right after anyway
                    return audio
                self.half_fallbacks += 1
                log.warning("fp16 EnCodec decode overflowed; decoded again in fp32 (%d so far)", self.half_fallbacks)
            audio = self.model.decode(codes[None], [None]).audio_values
        return audio.float()  # [B, C, T * hop]



def prepare_audio(audio: np.ndarray | torch.Tensor, sample_rate: int, channels: int, codec_rate: int,
                  device: torch.device) -> torch.Tensor:
    """Audio `[N]`, `[C, N]` or `[B, C, N]` at any rate -> float32 `[B, channels, N']` at the codec's rate."""
    x = as_float32(audio)
    if x.ndim not in (1, 2, 3):
        raise InvalidAudio(f"audio must be [N], [C, N] or [B, C, N], got shape {x.shape}")
    x = x.reshape((1,) * (3 - x.ndim) + x.shape)  # [B, C, N]
    x = downmix(x, channels)
    sr = validate_sample_rate(sample_rate)
    if sr != codec_rate:
        x = resample(x, sr, codec_rate)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def check_codes(codes: torch.Tensor, n_q: int, card: int) -> torch.Tensor:
    """Codes `[B, K', T]` with B, T >= 1, 1 <= K' <= n_q, entries in [0, card) -> int64, else InvalidParams."""
    if codes.ndim != 3:
        raise InvalidParams(f"codes must be [B, K, T], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise InvalidParams(f"codes must be integers, got {codes.dtype}")
    b, k, t = codes.shape
    if not 1 <= k <= n_q or b == 0 or t == 0:
        raise InvalidParams(f"codes shape {tuple(codes.shape)}: need B, T >= 1 and 1 <= K <= {n_q}")
    codes = codes.to(torch.long)
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= card:
        raise InvalidParams(f"codes must lie in [0, {card}), got [{lo}, {hi}]")
    return codes
