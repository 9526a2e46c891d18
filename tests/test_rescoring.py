"""Rescoring (Eq. 5): MusicGen's delay pattern and causality, the combination in the decode loop (an oracle
rescorer whose probabilities are known), loading, text binding, and the pipeline hook."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import random_text, small_lm
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

from magnet_rt import decoding
from magnet_rt.decoding import RowGroup, decode
from magnet_rt.interfaces import Rescorer
from magnet_rt.params import DecodeParams
from magnet_rt.rescoring import (
    MusicgenRescorer,
    build_tiny_random_musicgen,
    delay,
    load_rescorer,
    musicgen_input,
    undelay,
)

CARD, K = 64, 4


@pytest.fixture(scope="module")
def tiny_musicgen():
    cfg = MusicgenDecoderConfig(vocab_size=CARD, num_codebooks=K, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, ffn_dim=64, dropout=0.0, pad_token_id=CARD, bos_token_id=CARD)
    torch.manual_seed(0)
    model = MusicgenForCausalLM(cfg).eval()
    return MusicgenRescorer(model, torch.nn.Linear(16, 32))


def _codes(B=2, T=10, seed=0):
    return torch.randint(0, CARD, (B, K, T), generator=torch.Generator().manual_seed(seed))


def test_delay_matches_transformers_and_inverts(tiny_musicgen):
    codes = _codes()
    B, _, T = codes.shape
    prompt = torch.cat([torch.full((B, K, 1), CARD), codes], -1).reshape(B * K, -1)  # [BOS, codes...]
    _, pattern = tiny_musicgen.model.build_delay_pattern_mask(prompt, pad_token_id=CARD, max_length=T + K)
    assert torch.equal(musicgen_input(codes, CARD, CARD), pattern.reshape(B, K, T + K))
    assert torch.equal(undelay(delay(codes, CARD), T), codes)
    masked = codes.clone()
    masked[:, 2:] = CARD  # MAGNeT's mask id (codebooks not decoded yet) enters as MusicGen's pad id
    assert (musicgen_input(masked, CARD, CARD)[:, 2:] == CARD).all()


def test_probabilities_are_the_teacher_forced_forward(tiny_musicgen):
    """The stage-only, truncated forward equals transformers' full forward on the delayed sequence."""
    codes = _codes()
    B, _, T = codes.shape
    m = musicgen_input(codes, CARD, CARD)[:, :, :-1]
    with torch.no_grad():
        full = tiny_musicgen.model(input_ids=m.reshape(B * K, -1)).logits.reshape(B, K, T + K - 1, CARD)
    probs = torch.softmax(undelay(full, T), -1)  # [B, K, T, C]: position t + k -> codes[k, t]
    for stage in range(K):
        expect = probs[:, stage].gather(-1, codes[:, stage, :, None]).squeeze(-1)
        torch.testing.assert_close(tiny_musicgen(codes, stage), expect, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("j, tp", [(0, 3), (2, 4), (3, 1)])
def test_perturbing_one_code_changes_only_causally_later_scores(tiny_musicgen, j, tp):
    """codes[j, t'] sits at delayed position t' + j + 1; p(codes[k, t]) is read at position t + k and sees
    positions <= t + k. So it changes iff t + k >= t' + j + 1, or (k, t) == (j, t') (the scored token)."""
    r = MusicgenRescorer(copy.deepcopy(tiny_musicgen.model).double())  # fp64: tiny effects stay visible
    codes = _codes(B=1, T=9, seed=1)
    other = codes.clone()
    other[0, j, tp] = (codes[0, j, tp] + 7) % CARD
    T = codes.shape[-1]
    t = torch.arange(T)
    for k in range(K):
        diff = (r(codes, k) - r(other, k))[0].abs()
        expect = (t + k >= tp + j + 1) | ((k == j) & (t == tp))
        assert (diff[~expect] == 0).all() and (diff[expect] > 0).all(), (k, diff)


def test_bound_text_conditions_rows_and_null_rows_are_unconditional(tiny_musicgen):
    codes = _codes(B=2)
    hidden, mask = random_text(2, 5, 16, lengths=[5, 0])  # row 1: the null condition
    bound = tiny_musicgen.bind(hidden, mask)
    free = tiny_musicgen(codes, 1)
    cond = bound(codes, 1)
    assert not torch.allclose(cond[0], free[0])
    torch.testing.assert_close(cond[1], free[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bound(codes[1:], 1, rows=torch.tensor([1])), cond[1:], rtol=1e-5, atol=1e-7)
    assert tiny_musicgen._cond is None  # binding does not touch the shared rescorer
    with pytest.raises(Exception, match="text states"):
        tiny_musicgen.bind(torch.zeros(1, 3, 7), torch.ones(1, 3))


def test_save_load_and_tiny_random_name(tmp_path, monkeypatch):
    d = build_tiny_random_musicgen(tmp_path / "mg", hidden_size=32, heads=2)
    a, b = MusicgenRescorer.from_pretrained(d), MusicgenRescorer.from_pretrained(d)
    codes = torch.randint(0, 2048, (1, 4, 6))
    h, m = random_text(1, 3, 32)
    torch.testing.assert_close(a.bind(h, m)(codes, 2), b.bind(h, m)(codes, 2))
    monkeypatch.setenv("MAGNET_RT_CACHE", str(tmp_path / "cache"))
    r = load_rescorer("tiny-random")
    assert r.name == "tiny-random" and (r.n_q, r.card, r.text_dim) == (4, 2048, 32)


# ---- the combination in the decode loop (Eq. 5) ------------------------------------------------------------
class Oracle(Rescorer):
    """Known probabilities per (row, frame), independent of the codes; records what it was shown."""

    name = "oracle"

    def __init__(self, B, T, seed=0):
        self.p = torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) * 0.98 + 0.01
        self.seen = []

    def __call__(self, codes, stage):
        self.seen.append((codes.clone(), stage))
        return self.p.clone()


def _decode_observed(monkeypatch, params, B=2, seed=3):
    lm = small_lm(card=CARD)
    hidden, mask = random_text(B, 4, 16)
    cond = lm.project_text(hidden, mask)
    calls = {"top_units": [], "choose": [], "spans": []}
    real_top, real_choose, real_spans = decoding.top_units, decoding.choose_tokens, decoding.least_probable_spans

    def top_units(scores, num):
        out = real_top(scores, num)
        calls["top_units"].append((scores.clone(), num.clone(), out.clone()))
        return out

    def choose_tokens(*a, **kw):
        tok, conf = real_choose(*a, **kw)
        calls["choose"].append(conf.clone())
        return tok, conf

    def spans(scores, target, span_len):
        out = real_spans(scores, target, span_len)
        calls["spans"].append((scores.clone(), target, out.clone()))
        return out

    monkeypatch.setattr(decoding, "top_units", top_units)
    monkeypatch.setattr(decoding, "choose_tokens", choose_tokens)
    monkeypatch.setattr(decoding, "least_probable_spans", spans)
    T = lm.cfg.segment_frames
    oracle = Oracle(B, T)
    with torch.inference_mode():
        decode(lm, cond, T, params, [RowGroup(B, torch.Generator().manual_seed(seed))], rescorer=oracle)
    return lm, oracle, calls, T


def test_oracle_rescorer_remasks_exactly_the_spans_eq5_ranks_lowest(monkeypatch):
    w = 0.8
    params = DecodeParams(decoding_steps=(3, 1, 1, 1), span_arrangement="nonoverlap", span_scoring="max",
                          rescore_weight=w)
    lm, oracle, calls, T = _decode_observed(monkeypatch, params)
    B, L = 2, lm.cfg.span_len
    codes0, stage0 = oracle.seen[0]
    assert stage0 == 0 and (codes0[:, 0] < CARD).all() and (codes0[:, 1:] == CARD).all()  # samples in place
    p_m = calls["choose"][0].view(B, T)  # step 0 of stage 0: every position was sampled
    p = (w * oracle.p + (1 - w) * p_m).numpy()
    U = math.ceil(T / L)
    padded = np.zeros((B, U * L), dtype=np.float32)
    padded[:, :T] = p
    by_hand = 1 - padded.reshape(B, U, L).max(-1)  # 'max' span scoring: 1 - most confident token of the span
    scores, num, chosen = calls["top_units"][1]  # step 1 of stage 0
    np.testing.assert_allclose(scores.numpy(), by_hand, rtol=1e-6)
    n = int(math.cos(math.pi / 4) * U)  # mask_p = cos(pi/2 * 0.5) at step 1 of 3
    assert num.tolist() == [n] * B
    for b in range(B):
        expect = set(np.argsort(-by_hand[b], kind="stable")[:n].tolist())
        assert set(chosen[b].nonzero().squeeze(1).tolist()) == expect
        # without the rescorer the ranking differs: the oracle changed the re-masked set
        magnet_only = 1 - np.pad(p_m[b].numpy(), (0, U * L - T)).reshape(U, L).max(-1)
        assert set(np.argsort(-magnet_only, kind="stable")[:n].tolist()) != expect
    assert [s for _, s in oracle.seen] == [0, 0, 0, 1, 2, 3]  # once per step, with the stage being decoded


def test_oracle_rescorer_stride1_scores_are_minus_log_of_the_mix(monkeypatch):
    w = 0.5
    params = DecodeParams(decoding_steps=(2, 1, 1, 1), span_arrangement="stride1", rescore_weight=w)
    lm, oracle, calls, T = _decode_observed(monkeypatch, params)
    p_m = calls["choose"][0].view(2, T)
    expect = -torch.log(w * oracle.p + (1 - w) * p_m)
    for b in range(2):
        scores, target, mask = calls["spans"][2 + b]  # step 1 of stage 0, row b (step 0 made calls 0, 1)
        torch.testing.assert_close(scores, expect[b])
        assert torch.equal(mask, decoding.least_probable_spans(expect[b], target, lm.cfg.span_len))


def test_zero_weight_never_calls_the_rescorer(monkeypatch):
    params = DecodeParams(decoding_steps=(2, 1, 1, 1), rescore_weight=0.0)
    _, oracle, _, _ = _decode_observed(monkeypatch, params)
    assert oracle.seen == []

