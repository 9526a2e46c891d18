"""Text conditioning: prompts -> T5 hidden states + mask, padded exactly as audiocraft's T5Conditioner.

audiocraft (`conditioners.py:490-515`): `None` -> `""`; tokenize the whole batch with `padding=True`
(longest in the batch, null rows included; no truncation; EOS appended); zero the mask rows of empty
entries (the all-zero null condition of classifier-free guidance); run T5 in fp32; then the LM applies
`output_proj` and multiplies by the mask. `EncodedText.hidden` is the T5 output *before* `output_proj`.

Since real-token hidden states do not depend on padding (attention mask), each prompt's unpadded hidden
states are cached (LRU) and batches are assembled from them; padded positions are left at zero, which is
harmless because the LM multiplies by the mask after its projection.
"""

from __future__ import annotations

import io
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from transformers import AutoTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from magnet_rt.errors import CheckpointError, InvalidParams

log = logging.getLogger(__name__)

__all__ = ["CacheInfo", "EncodedText", "T5TextEncoder", "TextEncoder", "build_random_t5"]


@dataclass
class EncodedText:
    hidden: torch.Tensor  # [B, S, D_text] float32, text-encoder output before the LM's output_proj
    mask: torch.Tensor  # [B, S] int64, 1 = token; all-zero rows are null conditions

    def to(self, device: str | torch.device) -> EncodedText:
        return EncodedText(self.hidden.to(device), self.mask.to(device))


@runtime_checkable
class TextEncoder(Protocol):
    """What the LM needs from a text encoder (T5 here; a MiniLM sentence encoder can plug in)."""

    @property
    def dim(self) -> int: ...

    def encode(self, prompts: Sequence[str | None]) -> EncodedText: ...


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    maxsize: int
    currsize: int


class CachedTextEncoder:
    """A frozen transformers encoder + tokenizer with the `TextEncoder` interface: the release's padding
    (longest entry of the batch, nulls count as "" and get a zero mask row) and a per-prompt LRU cache of
    unpadded hidden states. Subclasses set `dim` and the tokenizer's keyword arguments."""

    tokenizer_kwargs: dict = {}

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", cache_size: int = 256):
        if cache_size < 0:
            raise InvalidParams(f"cache_size must be >= 0, got {cache_size}")
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()  # text encoders run in fp32
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> [S_p, D]
        self._hits = self._misses = 0
        self._lock = threading.Lock()
        self._null_len = len(tokenizer("").input_ids)  # "" -> [EOS] (T5) or [CLS] [SEP] (BERT)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, self.cache_size, len(self._cache))

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    def encode(self, prompts: Sequence[str | None]) -> EncodedText:
        """Prompts (None or "" = null condition) -> `EncodedText` `[B, S, D]` / `[B, S]`, S = the longest
        tokenized entry of the batch (nulls count as `""`, their mask row is zero)."""
        if isinstance(prompts, str) or not len(prompts):
            raise InvalidParams("prompts must be a non-empty list of str or None")
        entries = ["" if p is None else p for p in prompts]
        if not all(isinstance(p, str) for p in entries):
            raise InvalidParams("prompts must be str or None")
        states = self._states({p for p in entries if p})
        lengths = [states[p].shape[0] if p else self._null_len for p in entries]
        hidden = torch.zeros(len(entries), max(lengths), self.dim, device=self.device)  # [B, S, D]
        mask = torch.zeros(len(entries), max(lengths), dtype=torch.int64, device=self.device)  # [B, S]
        for i, p in enumerate(entries):
            if p:
                hidden[i, : lengths[i]] = states[p]
                mask[i, : lengths[i]] = 1
        return EncodedText(hidden, mask)

    def _states(self, prompts: set[str]) -> dict[str, torch.Tensor]:
        """Unpadded hidden states `[S_p, D]` per distinct non-empty prompt, from the cache or the model."""
        found: dict[str, torch.Tensor] = {}
        with self._lock:
            for p in prompts:
                if p in self._cache:
                    self._cache.move_to_end(p)
                    found[p] = self._cache[p]
                    self._hits += 1
                else:
                    self._misses += 1
        todo = sorted(prompts - found.keys())
        if todo:
            found.update(self._run(todo))
            with self._lock:
                for p in todo:
                    self._cache[p] = found[p]
                    self._cache.move_to_end(p)
                while len(self._cache) > self.cache_size:  # also empties it when caching is off
                    self._cache.popitem(last=False)
        return found

    def _run(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, **self.tokenizer_kwargs).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state.float()  # [n, S, D]
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return {p: hidden[i, :n].clone() for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))}


class T5TextEncoder(CachedTextEncoder):
    """Frozen T5 encoder + tokenizer (no truncation, as released)."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        cache_size: int = 256) -> T5TextEncoder:
        """Load `T5EncoderModel` + tokenizer from a folder or hub id (huggingface_hub resolution: local
        folder, cache, `HF_HUB_OFFLINE`). Works for t5-base / t5-large and `build_random_t5` folders."""
        name = str(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = T5EncoderModel.from_pretrained(name, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load T5 text encoder {name!r}: {e}") from e
        log.info("loaded T5 encoder %s (d_model %d, %d layers)", name, model.config.d_model,
                 model.config.num_layers)
        return cls(model, tokenizer, device=device, cache_size=cache_size)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)


# ---- tiny random T5 (tests, offline "tiny-random" model) -----------------------------------------------

_WORDS = [  # genres, instruments, moods, tempo words, glue
    "rock", "pop", "jazz", "blues", "funk", "soul", "disco", "house", "techno", "trance", "dubstep",
    "ambient", "drone", "lofi", "hiphop", "trap", "reggae",
    "metal", "punk", "folk", "country", "classical", "orchestral", "cinematic", "electronic", "acoustic",
    "synthwave", "chillout", "bossa",
    "guitar", "bass", "drums", "piano", "synth", "violin", "cello", "strings", "brass", "trumpet",
    "saxophone", "flute", "organ", "choir", "vocals",
    "percussion", "kick", "snare", "hihat", "pads", "arpeggio", "melody", "chords", "riff", "groove",
    "beat", "loop",
    "happy", "sad", "calm", "energetic", "dark", "bright", "dreamy", "epic", "melancholic", "uplifting",
    "aggressive", "relaxing", "warm",
    "slow", "fast", "upbeat", "mid", "tempo", "bpm", "allegro", "andante", "adagio", "moderato",
    "with", "and", "a", "the", "of", "for", "in", "on", "at", "to", "by", "an", "no",
]


def _sentences(seed: int, n: int = 2000):
    rng = random.Random(seed)
    yield "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 , . - ' ! ? : ; ( ) / & + %"
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
        if rng.random() < 0.3:
            words.append(f"{rng.randrange(60, 181)} bpm")
        yield " ".join(words)


def build_random_t5(directory: str | Path, d_model: int = 32, layers: int = 2, heads: int = 4,
                    d_ff: int = 64, vocab_size: int = 256, seed: int = 0) -> Path:
    """Write a tiny random T5 encoder and a real T5 tokenizer into `directory`; deterministic in `seed`.

    The tokenizer is a sentencepiece unigram model trained here on musical words (pad 0, EOS 1, unk 2,
    as T5), wrapped in transformers' `T5Tokenizer` (no sentinel ids); `vocab_size` is an upper bound.
    Load it back with `T5TextEncoder.from_pretrained(directory)`, the same path as real T5."""
    import sentencepiece as spm

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(seed), model_writer=proto, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(out)

    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=max(1, d_model // heads), d_ff=d_ff,
                      num_layers=layers, num_heads=heads, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="relu",
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    model.save_pretrained(out)
    return out
