"""Training data: a folder of captioned audio -> codec tokens (cached) -> batches.

Captions, per audio file (wav/flac/ogg/mp3/aiff, searched recursively):
- a `captions.jsonl` in the folder, one object per line with the file (`file`, `path` or `audio`,
  relative to the folder) and the caption (`caption`, `text` or `description`); other keys are kept
  as labels (the datagen writes this file);
- otherwise a `.txt` beside the audio file with the same stem.
Files without a caption are skipped (and counted).

`encode_folder` runs the codec once per file and stores `{codes: [K, T] int16 per file, captions, files}`
in one `torch.save` file (reloaded with `weights_only=True`), keyed by the codec's fingerprint so a
different codec never reuses stale tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
_FILE_KEYS = ("file", "path", "audio")
_CAPTION_KEYS = ("caption", "text", "description")


@dataclass
class CaptionedFile:
    path: Path
    caption: str
    labels: dict = field(default_factory=dict)


def find_captioned_audio(folder: str | Path) -> list[CaptionedFile]:
    """Every captioned audio file under `folder`, sorted by path (deterministic)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    jsonl: dict[Path, tuple[str, dict]] = {}
    for cj in sorted(root.rglob("captions.jsonl")):
        for n, line in enumerate(cj.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                f = next(row[k] for k in _FILE_KEYS if k in row)
                cap = next(row[k] for k in _CAPTION_KEYS if k in row)
            except (json.JSONDecodeError, StopIteration) as e:
                raise ValueError(f"{cj}:{n}: need a file key {_FILE_KEYS} and a caption key {_CAPTION_KEYS}") from e
            labels = {k: v for k, v in row.items() if k not in _FILE_KEYS and k not in _CAPTION_KEYS}
            jsonl[(cj.parent / f).resolve()] = (str(cap), labels)
    items, skipped = [], 0
    for p in sorted(q for q in root.rglob("*") if q.suffix.lower() in AUDIO_EXTS and q.is_file()):
        key = p.resolve()
        if key in jsonl:
            items.append(CaptionedFile(p, *jsonl[key]))
        elif p.with_suffix(".txt").is_file():
            items.append(CaptionedFile(p, p.with_suffix(".txt").read_text().strip()))
        else:
            skipped += 1
    if skipped:
        log.warning("%s: %d audio file(s) without a caption skipped", root, skipped)
    return items


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """-> float32 [C, N], sample rate."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    return np.ascontiguousarray(data.T), int(sr)


def load_codec_any(path: str | Path, device="cpu"):
    """A codec from a bundle, a codec folder (codec.safetensors) or a released compression checkpoint."""
    from ..bundle import is_bundle, load_codec
    from ..encodec_checkpoints import load_audiocraft_codec

    return load_codec(path, device=device) if is_bundle(path) or (Path(path) / "codec.safetensors").is_file() \
        else load_audiocraft_codec(path, device=device)


TOKEN_PARTS = ("encoder.", "quantizer.")  # what maps audio to tokens; the decoder does not
SYNTHESIS_ONLY = ("griffin_lim",)  # config fields of the spectral codec's phase reconstruction: not in the tokens


def codec_fingerprint(codec) -> str:
    """A short hash of the config and of the weights that determine the tokens (encoder + quantizer), so
    tokens stay valid while only the decoder is fine-tuned (`train.codec --decoder-only`)."""
    config = {k: v for k, v in codec.model.config.to_dict().items() if not k.startswith(SYNTHESIS_ONLY)}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for k, v in sorted(codec.model.state_dict().items()):
        if not k.startswith(TOKEN_PARTS):
            continue
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TokenSet:
    codes: list[Tensor]  # per file [K, T] int64 (stored as int16)
    captions: list[str]
    files: list[str]

    def __len__(self) -> int:
        return len(self.codes)

    def split(self, n_valid: int) -> tuple[TokenSet, TokenSet]:
        """The last `n_valid` files are held out (the datagen's order is random, so this is a random split)."""
        n = len(self) - n_valid
        return (TokenSet(self.codes[:n], self.captions[:n], self.files[:n]),
                TokenSet(self.codes[n:], self.captions[n:], self.files[n:]))

    def batch(self, indices: list[int], frames: int, generator: torch.Generator | None = None,
              pad_id: int = 0) -> tuple[Tensor, list[str], Tensor, Tensor]:
        """Random `frames`-long crops of the given files -> codes [B, K, frames], captions, valid [B, frames],
        first_frames [B] (each crop's first frame in its file: the beat grid's phase). Files shorter than
        `frames` are right-padded; padding is marked invalid."""
        K = self.codes[0].shape[0]
        out = torch.full((len(indices), K, frames), pad_id, dtype=torch.long)
        valid = torch.zeros(len(indices), frames, dtype=torch.bool)
        first = torch.zeros(len(indices), dtype=torch.long)
        for b, i in enumerate(indices):
            c = self.codes[i].long()
            T = c.shape[-1]
            start = int(torch.randint(T - frames + 1, (1,), generator=generator)) if T > frames else 0
            n = min(frames, T)
            out[b, :, :n] = c[:, start:start + n]
            valid[b, :n] = True
            first[b] = start
        return out, [self.captions[i] for i in indices], valid, first

    def sample(self, batch_size: int, frames: int, generator: torch.Generator | None = None):
        idx = torch.randint(len(self), (batch_size,), generator=generator).tolist()
        return self.batch(idx, frames, generator)


def _encode_files(codec, paths: list[Path], max_seconds: float | None, progress_every: int = 0,
                  total: int = 0) -> list[Tensor]:
    codes = []
    for n, path in enumerate(paths, 1):
        audio, sr = load_audio(path)
        if max_seconds:
            audio = audio[:, : int(max_seconds * sr)]
        c = codec.encode(audio, sr)[0].cpu()  # [K, T]
        codes.append(c.to(torch.int16) if codec.card <= 32767 else c)
        if progress_every and n % progress_every == 0:
            log.info("encoded %d/%d files", n, total or len(paths))
    return codes


def _encode_shard(codec_path: str, paths: list[Path], max_seconds: float | None) -> list[Tensor]:
    """Worker (spawned process, one thread): load the codec from its folder and encode a shard."""
    torch.set_num_threads(1)
    return _encode_files(load_codec_any(codec_path, "cpu"), paths, max_seconds)


def encode_folder(codec, folder: str | Path, cache: str | Path | None = None, max_seconds: float | None = None,
                  progress_every: int = 100, workers: int = 1, codec_path: str | Path | None = None) -> TokenSet:
    """Codec tokens of every captioned file in `folder`, cached in `cache` (default FOLDER/tokens-<fp>.pt).

    `workers` > 1 encodes contiguous shards in that many spawned processes (one thread each), each loading
    the codec from `codec_path` (required then; checked to have the same fingerprint)."""
    items = find_captioned_audio(folder)
    if not items:
        raise CheckpointError(f"{folder}: no captioned audio (a .txt beside each file or a captions.jsonl)")
    fp = codec_fingerprint(codec)
    cache = Path(cache) if cache else Path(folder) / f"tokens-{fp}.pt"
    if cache.is_file():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        if blob.get("fingerprint") == fp and blob.get("files") == [str(it.path) for it in items]:
            return TokenSet(list(blob["codes"]), list(blob["captions"]), list(blob["files"]))
        log.info("%s is stale (different codec or files); re-encoding", cache)
    paths = [it.path for it in items]
    if workers > 1 and len(paths) > 1:
        if codec_path is None:
            raise ValueError("encode_folder: workers > 1 needs codec_path (each worker loads the codec itself)")
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if codec_fingerprint(load_codec_any(str(codec_path), "cpu")) != fp:
            raise ValueError(f"encode_folder: {codec_path} is not the codec passed in")
        bounds = np.linspace(0, len(paths), workers + 1).astype(int)
        log.info("encoding %d files in %d processes", len(paths), workers)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_encode_shard, str(codec_path), paths[a:b], max_seconds)
                       for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
            codes = [c for f in futures for c in f.result()]
    else:
        codes = _encode_files(codec, paths, max_seconds, progress_every, len(paths))
    blob = {"fingerprint": fp, "files": [str(it.path) for it in items], "captions": [it.caption for it in items],
            "codes": codes}
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(cache)
    return TokenSet(codes, blob["captions"], blob["files"])
