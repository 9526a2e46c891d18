"""Text conditioning: tiny real-format T5 + tokenizer, padding exactly as audiocraft, LRU cache."""

from __future__ import annotations

import pytest
import torch

from magnet_rt.conditioning import EncodedText, T5TextEncoder, TextEncoder, build_random_t5
from magnet_rt.errors import InvalidParams

PROMPTS = ["upbeat jazz with piano and brass, 120 bpm", None, "dark techno", "", "calm ambient pads"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_random_t5(tmp_path_factory.mktemp("t5"), d_model=32, layers=2, heads=4, seed=0)


@pytest.fixture(scope="module")
def encoder(t5_dir):
    return T5TextEncoder.from_pretrained(t5_dir, cache_size=8)


def released(encoder: T5TextEncoder, prompts):
    """audiocraft T5Conditioner.tokenize + forward (conditioners.py:490-515), before output_proj."""
    entries = [p if p is not None else "" for p in prompts]
    inputs = encoder.tokenizer(entries, return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    empty = [i for i, p in enumerate(entries) if p == ""]
    mask[empty, :] = 0
    with torch.no_grad():
        hidden = encoder.model(**inputs).last_hidden_state
    return hidden, mask


def test_build_is_deterministic_and_loads_as_t5(t5_dir, tmp_path, encoder):
    again = build_random_t5(tmp_path / "again", d_model=32, layers=2, heads=4, seed=0)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (t5_dir / name).read_bytes(), name
    other = build_random_t5(tmp_path / "other", d_model=32, layers=2, heads=4, seed=1)
    assert (other / "model.safetensors").read_bytes() != (t5_dir / "model.safetensors").read_bytes()
    assert type(encoder.model).__name__ == "T5EncoderModel" and "T5Tokenizer" in type(encoder.tokenizer).__name__
    assert encoder.dim == 32 and isinstance(encoder, TextEncoder)
    assert next(encoder.model.parameters()).dtype == torch.float32


def test_tokenizer_round_trip(encoder):
    tok = encoder.tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)  # T5's layout
    assert 100 < len(tok) <= 256
    text = "melancholic cello and piano, 72 bpm"
    ids = tok(text).input_ids
    assert ids[-1] == 1 and 2 not in ids  # EOS appended, every character covered
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("").input_ids == [1]
    pieces = tok.convert_ids_to_tokens(tok("jazz guitar").input_ids)
    assert pieces == ["\u2581jazz", "\u2581guitar", "</s>"]  # musical words are whole pieces
    assert 2 in tok("ジャズ").input_ids  # unseen script -> <unk>


def test_padding_semantics_match_release(encoder):
    out = encoder.encode(PROMPTS)
    _, ref_mask = released(encoder, PROMPTS)
    lengths = [len(encoder.tokenizer(p or "").input_ids) for p in PROMPTS]
    assert out.hidden.shape == (5, max(lengths), 32) and out.hidden.dtype == torch.float32
    assert out.mask.dtype == torch.int64 and torch.equal(out.mask, ref_mask)
    assert out.mask[1].sum() == 0 and out.mask[3].sum() == 0  # None and "" are the null condition
    assert out.mask[2].tolist() == [1] * lengths[2] + [0] * (max(lengths) - lengths[2])
    nulls = encoder.encode([None, None])  # longest in batch counts the nulls: "" -> [EOS] -> 1
    assert nulls.hidden.shape == (2, 1, 32) and nulls.mask.sum() == 0
    short = encoder.encode(["rock", None])
    assert short.mask.shape == (2, 2) and short.mask.tolist() == [[1, 1], [0, 0]]


def test_cached_and_batched_equal_uncached_release(t5_dir, encoder):
    encoder.cache_clear()
    ref_hidden, ref_mask = released(encoder, PROMPTS)
    m = ref_mask[..., None].float()
    first = encoder.encode(PROMPTS)  # computed by T5 (misses)
    second = encoder.encode(PROMPTS)  # assembled from the cache (hits)
    nocache = T5TextEncoder.from_pretrained(t5_dir, cache_size=0).encode(PROMPTS)
    for got in (first, second, nocache):
        assert (got.hidden * m - ref_hidden * m).abs().max().item() < 1e-5
        assert got.hidden[got.mask == 0].abs().max() == 0  # padded and null positions left at zero
    assert torch.equal(first.hidden, second.hidden)
    alone = encoder.encode(["dark techno"])  # its own length, no padding at all
    n = int(alone.mask.sum())
    assert (alone.hidden[0, :n] - ref_hidden[2, :n]).abs().max().item() < 1e-5
    assert ref_hidden[2, n:].abs().max() > 0.1  # the release leaves T5 output at padding; we zero it


def test_cache_hits_misses_and_lru(t5_dir):
    enc = T5TextEncoder.from_pretrained(t5_dir, cache_size=2)
    enc.encode(["rock", "jazz", None])
    info = enc.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (0, 2, 2, 2)
    enc.encode(["rock", None])
    assert enc.cache_info().hits == 1
    enc.encode(["funk"])  # evicts the least recently used: "jazz"
    enc.encode(["jazz", "rock"])  # jazz: miss, rock: hit
    info = enc.cache_info()
    assert (info.hits, info.misses, info.currsize) == (2, 4, 2)
    enc.encode(["rock", "rock"])  # duplicates in a batch are computed once
    assert enc.cache_info().hits == 3
    off = T5TextEncoder.from_pretrained(t5_dir, cache_size=0)
    off.encode(["rock"])
    off.encode(["rock"])
    assert off.cache_info().currsize == 0 and off.cache_info().hits == 0 and off.cache_info().misses == 2


def test_encoded_text_to_and_errors(encoder):
    out = encoder.encode(["rock"])
    moved = out.to("cpu")
    assert isinstance(moved, EncodedText) and torch.equal(moved.hidden, out.hidden)
    for bad in ([], "rock", [3]):
        with pytest.raises(InvalidParams):
            encoder.encode(bad)
    with pytest.raises(InvalidParams):
        T5TextEncoder(encoder.model, encoder.tokenizer, cache_size=-1)
