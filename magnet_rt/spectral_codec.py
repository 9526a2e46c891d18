"""The spectral codec: the demo model's audio codec, a magnitude codec with Griffin-Lim phase.

Same contract as EnCodec's `Codec` (encode -> codes `[B, 4, T]`, 50 frames/s, 2048 entries; decode -> audio
`[B, 1, T * hop]`), a different design, chosen by measurement (docs/TRAINING.md §3.2): a waveform decoder
trained without adversarial losses on a 2-core machine learnt to replace pitch with the 50 Hz frame-rate
harmonic series, so this one never generates a waveform. It codes the log-magnitude STFT frame at the frame
rate (Hann window 4 x hop = 80 ms, 12.5 Hz bins, so a bass note's harmonics stay resolved) and rebuilds
the phase with the fast Griffin-Lim algorithm (Perraudin, Balazs & Søndergaard 2013), which keeps pitch,
chords and onsets; what it loses is the phase coherence of transients ("phasiness"), not the notes.

    audio -> |STFT| -> log -> encoder (convs over time) -> RVQ (4 x 2048) -> decoder -> log|STFT| -> Griffin-Lim

The encoder/decoder are 1-D convolutions over frames (each frame sees +-8 frames of context); the RVQ is
transformers' `EncodecResidualVectorQuantizer`, trained by `magnet_rt.train.codec` exactly like EnCodec's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .codec import check_codes, prepare_audio
from .devices import codec_device

__all__ = ["SPECTRAL_KIND", "SpectralCodec", "SpectralCodecConfig", "SpectralCodecModel", "griffin_lim"]

SPECTRAL_KIND = "spectral"
LOG_FLOOR = 1e-3  # magnitudes below this (-60 dB under a full-scale bin) are noise floor: log(mag + floor)
MAX_LOG = 9.0
LOG_SHIFT, LOG_SCALE = 3.0, 3.0  # log(mag + floor) in about [-7, 6] -> about [-1.3, 3] for the networks


@dataclass(frozen=True)
class SpectralCodecConfig:
    sampling_rate: int = 32000
    hop_length: int = 640  # 50 frames/s
    n_fft: int = 2560  # Hann window of 4 hops: overlap-adds to a constant
    codebook_size: int = 2048
    num_quantizers: int = 4
    latent_dim: int = 128
    hidden: int = 256
    layers: int = 4  # residual blocks in the encoder and in the decoder
    kernel_size: int = 5
    griffin_lim_iters: int = 16  # 16 and 32 measured alike on held-out clips (chroma 0.917/0.918, note F1 0.54/0.51)
    griffin_lim_momentum: float = 0.99

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict:
        return {"kind": SPECTRAL_KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> SpectralCodecConfig:
        fields = {k: v for k, v in d.items() if k != "kind"}
        return cls(**fields)

    def quantizer_config(self):
        """The transformers EncodecConfig whose RVQ has this codec's codebooks (only the quantizer is built)."""
        from transformers import EncodecConfig

        bandwidth = self.num_quantizers * math.log2(self.codebook_size) * self.frame_rate / 1000
        return EncodecConfig(sampling_rate=self.sampling_rate, upsampling_ratios=[self.hop_length],
                             target_bandwidths=[bandwidth], codebook_size=self.codebook_size,
                             hidden_size=self.latent_dim, codebook_dim=self.latent_dim)


class ResidualBlock(nn.Module):
    """x + conv1x1(gelu(conv_k(norm(x)))); the last conv starts at zero, so a new block is the identity."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(nn.functional.gelu(self.conv1(self.norm(x))))


def conv_stack(c_in: int, hidden: int, c_out: int, layers: int, kernel_size: int) -> nn.Sequential:
    """1x1 projection in, residual blocks, 1x1 projection out: linear at initialisation (see `pca_init`)."""
    return nn.Sequential(nn.Conv1d(c_in, hidden, 1), *[ResidualBlock(hidden, kernel_size) for _ in range(layers)],
                         nn.Conv1d(hidden, c_out, 1))


class SpectralCodecModel(nn.Module):
    """Log-magnitude frames `[B, F, T]` <-> latents `[B, D, T]`; `quantizer` holds the 4 codebooks."""

    def __init__(self, config: SpectralCodecConfig):
        from transformers.models.encodec.modeling_encodec import EncodecResidualVectorQuantizer

        super().__init__()
        self.config = config
        c = config
        self.encoder = conv_stack(c.bins, c.hidden, c.latent_dim, c.layers, c.kernel_size)
        self.quantizer = EncodecResidualVectorQuantizer(c.quantizer_config())
        self.decoder = conv_stack(c.latent_dim, c.hidden, c.bins, c.layers, c.kernel_size)
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)

    @torch.no_grad()
    def pca_init(self, features: Tensor) -> None:
        """Start as PCA: the encoder projects frames onto their top principal components (the first
        `latent_dim` of `hidden` become the latent), the decoder maps them back, so the untrained codec already
        reconstructs like a rank-`latent_dim` PCA of `features` `[B, F, T]` and training refines from there
        (from a random start, plain gradient descent needs thousands of steps to get that far)."""
        c = self.config
        frames = features.transpose(1, 2).reshape(-1, c.bins).double()
        mean = frames.mean(0)
        _, _, v = torch.linalg.svd(frames - mean, full_matrices=False)
        pcs = v[: c.hidden].float()  # [hidden, F]
        enc_in, enc_out = self.encoder[0], self.encoder[-1]
        dec_in, dec_out = self.decoder[0], self.decoder[-1]
        enc_in.weight.copy_(pcs[..., None])
        enc_in.bias.copy_(-(pcs @ mean.float()))
        select = torch.eye(c.hidden)[: c.latent_dim]  # [latent, hidden]
        enc_out.weight.copy_(select[..., None])
        enc_out.bias.zero_()
        dec_in.weight.copy_(select.t()[..., None])
        dec_in.bias.zero_()
        dec_out.weight.copy_(pcs.t()[..., None])
        dec_out.bias.copy_(mean.float())

    def spectrum(self, audio: Tensor) -> Tensor:
        """`[B, N]` -> complex STFT `[B, F, N // hop + 1]` (centred frames, reflect padding)."""
        c = self.config
        return stft(audio, c.n_fft, c.hop_length, self.window)

    def features(self, audio: Tensor) -> Tensor:
        """`[B, N]` with N = T * hop -> normalised log-magnitudes `[B, F, T]` (frame t centred on t * hop)."""
        mag = self.spectrum(audio).abs()[..., :-1]
        return (torch.log(mag + LOG_FLOOR) + LOG_SHIFT) / LOG_SCALE

    @staticmethod
    def magnitude(features: Tensor) -> Tensor:
        """Normalised log-magnitudes -> magnitudes, capped at e^9 (a full-scale sine is ~e^6.5 in a bin)."""
        return (torch.exp((features * LOG_SCALE - LOG_SHIFT).clamp(max=MAX_LOG)) - LOG_FLOOR).clamp_min(0.0)

    def synthesize(self, features: Tensor, generator_seed: int = 0) -> Tensor:
        """Normalised log-magnitudes `[B, F, T]` -> audio `[B, T * hop]` by fast Griffin-Lim. Row b's phase
        starts from its own generator (seed `generator_seed`), so a row's audio does not depend on its batch."""
        c = self.config
        mag = self.magnitude(features)
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # frame T, centred on the last sample's edge
        rows = [griffin_lim(m, c.n_fft, c.hop_length, self.window, c.griffin_lim_iters, c.griffin_lim_momentum,
                            length=features.shape[-1] * c.hop_length, seed=generator_seed) for m in mag]
        return torch.stack(rows)


def stft(x: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Centred frames, reflect-padded (zero-padded when the signal is shorter than half a window)."""
    pad_mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"
    return torch.stft(x, n_fft, hop, window=window, center=True, pad_mode=pad_mode, return_complex=True)


def griffin_lim(mag: Tensor, n_fft: int, hop: int, window: Tensor, iters: int, momentum: float, length: int,
                seed: int = 0) -> Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013, the algorithm of librosa.griffinlim and torchaudio's
    GriffinLim, in torch for speed and batching): magnitude `[F, frames]` -> signal `[length]`."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(mag.shape, generator=g).to(mag.device) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(mag), phase)
    previous = torch.zeros_like(angles)
    alpha = momentum / (1 + momentum)
    for _ in range(iters):
        y = torch.istft(mag * angles, n_fft, hop, window=window, center=True, length=length)
        rebuilt = stft(y, n_fft, hop, window)
        angles = rebuilt - alpha * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return torch.istft(mag * angles, n_fft, hop, window=window, center=True, length=length)


class SpectralCodec:
    """`SpectralCodecModel` with the `Codec` calling conventions (encode/decode, partial-codebook previews)."""

    half = False  # Griffin-Lim's FFTs stay in fp32
    half_fallbacks = 0

    def __init__(self, model: SpectralCodecModel, device: str | torch.device = "cpu", half: bool = False):
        cfg = model.config
        self.device = codec_device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        self.sample_rate: int = cfg.sampling_rate
        self.channels: int = 1
        self.hop_length: int = cfg.hop_length
        self.frame_rate: int = cfg.frame_rate
        self.card: int = cfg.codebook_size
        self.n_q: int = cfg.num_quantizers

    def encode(self, audio: np.ndarray | Tensor, sample_rate: int) -> Tensor:
        """Audio `[N]`, `[C, N]` or `[B, C, N]` (any rate) -> codes `[B, K, T]`, T = ceil(N' / hop)."""
        x = prepare_audio(audio, sample_rate, self.channels, self.sample_rate, self.device)[:, 0]
        t = math.ceil(x.shape[-1] / self.hop_length)
        x = nn.functional.pad(x, (0, t * self.hop_length - x.shape[-1]))
        with torch.inference_mode():
            z = self.model.encoder(self.model.features(x))
            return self.model.quantizer.encode(z).transpose(0, 1)  # [B, K, T]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes `[B, K', T]`, 1 <= K' <= n_q -> float32 audio `[B, 1, T * hop]` (K' < n_q: a preview)."""
        codes = check_codes(codes, self.n_q, self.card).to(self.device)
        with torch.inference_mode():
            features = self.model.decoder(self.model.quantizer.decode(codes.transpose(0, 1)))
            return self.model.synthesize(features)[:, None]
