"""Hybrid-MAGNeT: MusicGen's AR prefix (delay pattern, KV cache, seeded draws) pinned into a MAGNeT job on
the tiny-random pipeline; the rescorer through the pipeline's hook; the hybrid training objective."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magnet_rt import decoding
from magnet_rt.hybrid import generate_hybrid, musicgen_generate, prepare_hybrid
from magnet_rt.presets import resolve_params
from magnet_rt.rescoring import MusicgenRescorer, build_tiny_random_musicgen, delay
from magnet_rt.train.hybrid import IGNORE, hybrid_attention_bias, hybrid_loss, make_hybrid_batch

FAST = resolve_params("live", {"decoding_steps": [2, 1, 1, 1]})


@pytest.fixture(scope="module")
def musicgen(tmp_path_factory):
    return MusicgenRescorer.from_pretrained(build_tiny_random_musicgen(tmp_path_factory.mktemp("mg")))


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_greedy_ar_with_kv_cache_agrees_with_the_teacher_forced_rescorer(musicgen):
    """Each greedy token is the argmax of the one-forward (delayed, teacher-forced) logits at its place:
    the AR loop and the rescorer undo the same delay pattern, and the KV cache changes nothing."""
    h = torch.randn(2, 5, 32)
    m = torch.ones(2, 5, dtype=torch.long)
    codes = musicgen_generate(musicgen, 9, _gens(0, 1), text_hidden=h, text_mask=m, greedy=True, guidance_scale=1.0)
    assert codes.shape == (2, 4, 9)
    bound = musicgen.bind(h, m)
    for k in range(4):
        assert torch.equal(bound.logits(codes, k).argmax(-1), codes[:, k])


def test_sampled_rows_depend_only_on_their_own_seed(musicgen):
    h = torch.randn(1, 4, 32).expand(2, 4, 32)
    m = torch.ones(2, 4, dtype=torch.long)
    both = musicgen_generate(musicgen, 8, _gens(5, 6), text_hidden=h, text_mask=m)
    alone = musicgen_generate(musicgen, 8, _gens(6), text_hidden=h[:1], text_mask=m[:1])
    assert torch.equal(both[1:], alone) and not torch.equal(both[0], both[1])


def test_prepare_hybrid_pins_the_ar_prefix_and_magnet_completes(pipe, musicgen):
    prep = prepare_hybrid(pipe, musicgen, "warm pads", 1.0, 0.3, FAST, seed=11, variations=2)
    assert prep.ar_frames == 15 and len(prep.jobs) == 2 and prep.job is prep.jobs[0]
    assert [j.seed for j in prep.jobs] == [11, 12]
    assert all(j.fixed[:, :15].all() and not j.fixed[:, 15:].any() for j in prep.jobs)
    res = prep.finish_all(pipe.run_batch(prep.jobs))  # the variations share one batch
    assert res.codes.shape == (2, 4, 50) and res.audio.shape == (2, 1, 32000) and res.seeds == [11, 12]
    assert "hybrid_ar" in res.timings and res.batch_size == 2
    for v in range(2):
        assert torch.equal(res.codes[v, :, :15], prep.jobs[v].init_codes[:, :15])  # pinned = MusicGen's codes
    assert not torch.equal(res.codes[0, :, :15], res.codes[1, :, :15])
    alone = generate_hybrid(pipe, musicgen, "warm pads", 1.0, 0.3, FAST, seed=12)  # variation 1 == seed + 1
    assert torch.equal(alone.codes[0], res.codes[1])
    import pyloudnorm  # the take is finished like generate's: no DC, -14 LUFS (or the -1 dBFS peak ceiling)

    take = alone.audio[0, 0].astype(np.float64)
    level = pyloudnorm.Meter(32000, block_size=0.2).integrated_loudness(take)
    assert abs(take.mean()) < 1e-3 and (abs(level + 14.0) < 0.5 or np.abs(take).max() >= 10 ** (-1 / 20) - 1e-3)


def test_hybrid_arguments_are_checked(pipe, musicgen):
    from magnet_rt.errors import InvalidParams

    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(InvalidParams):
            prepare_hybrid(pipe, musicgen, "x", 1.0, bad, FAST)


def test_pipeline_rescorer_hook_with_the_bound_musicgen(pipe, musicgen, monkeypatch):
    """`pipe.rescorer` = the tiny MusicGen bound to the request's text: called once per decoding step with
    the stage being decoded, and its scores enter the span ranking (Eq. 5) from the second step on."""
    text = pipe.text_encoder.encode(["slow strings"])
    bound, calls, scores = musicgen.bind(text.hidden, text.mask), [], []
    real_top = decoding.top_units
    monkeypatch.setattr(decoding, "top_units", lambda s, n: scores.append(s.clone()) or real_top(s, n))

    def counting(codes, stage):
        calls.append(stage)
        return bound(codes, stage)

    params = resolve_params("live", {"decoding_steps": [3, 1, 1, 1], "rescore_weight": 0.8})
    pipe.rescorer = counting
    try:
        pipe.generate("slow strings", 1.0, params, seed=2)
        assert calls == [0, 0, 0, 1, 2, 3]
        pipe.generate("slow strings", 1.0, params.with_overrides({"rescore_weight": 0.0}), seed=2)
    finally:
        pipe.rescorer = None
    assert len(calls) == 6 and len(scores) == 12  # weight 0: never called
    assert torch.equal(scores[0], scores[6]) and not torch.equal(scores[1], scores[7])


# ---- the training objective ------------------------------------------------------------------------------------
CARD = 16


def _codes(B=3, K=4, T=12, seed=0):
    return torch.randint(0, CARD, (B, K, T), generator=torch.Generator().manual_seed(seed))


def test_attention_bias_is_causal_before_the_split_and_full_after():
    split = torch.tensor([3, 6])
    bias = hybrid_attention_bias(split, 8)
    allowed = bias[:, 0] == 0
    q, k = torch.arange(8)[:, None], torch.arange(8)[None]
    for b, s in enumerate(split.tolist()):
        assert torch.equal(allowed[b, :s], (k <= q)[:s])
        assert allowed[b, s:].all()
    win = hybrid_attention_bias(split, 8, context=1)[0, 0] == 0
    assert torch.equal(win[3:], ((q - k).abs() <= 1)[3:])


def test_prefix_outputs_never_see_later_inputs_under_the_bias():
    """One attention layer with the bias: perturbing the input at position p changes no prefix query < p."""
    torch.manual_seed(0)
    B, S, D = 1, 10, 8
    x = torch.randn(B, S, D, dtype=torch.float64)
    wq, wk, wv = (0.3 * torch.randn(D, D, dtype=torch.float64) for _ in range(3))
    bias = hybrid_attention_bias(torch.tensor([6]), S, dtype=torch.float64)

    def attend(x):
        return F.scaled_dot_product_attention((x @ wq)[:, None], (x @ wk)[:, None], (x @ wv)[:, None],
                                              attn_mask=bias)[:, 0]

    y = attend(x)
    for p in range(S):
        x2 = x.clone()
        x2[:, p] += 1.0
        changed = (attend(x2) - y).abs().amax(-1)[0] > 0
        expect = torch.tensor([q >= 6 or q >= p for q in range(S)])
        assert torch.equal(changed, expect), p


def test_hybrid_batch_layout_targets_and_masks():
    codes = _codes()
    B, K, T = codes.shape
    split = torch.tensor([1, 7, 14])
    hb = make_hybrid_batch(codes, CARD, span_len=3, generator=torch.Generator().manual_seed(1), stage=1, split=split)
    D = delay(codes, CARD)
    S = T + K - 1
    assert hb.inputs.shape == (B, K, S) and torch.equal(hb.targets, D) and torch.equal(hb.codes(), codes)
    for b, s in enumerate(split.tolist()):
        assert torch.equal(hb.inputs[b, :, :s], D[b, :, :s])  # AR part: every codebook is input
        assert (hb.inputs[b, 2:, s:] == CARD).all()  # MAGNeT part: codebooks above the stage masked
        assert torch.equal(hb.inputs[b, 0, s:], D[b, 0, s:])  # and below kept
        assert not hb.mask[b, :s].any() and (hb.inputs[b, 1][hb.mask[b]] == CARD).all()
        kept = ~hb.mask[b, s:]
        assert torch.equal(hb.inputs[b, 1, s:][kept], D[b, 1, s:][kept])
        for k in range(K):
            for t in range(S):
                nxt = D[b, k, t + 1] if t + 1 < S else CARD
                want = nxt if (t < s and nxt != CARD) else IGNORE
                assert hb.ar_targets[b, k, t] == want
    assert hb.mask.any() and not (hb.mask & (D[:, 1] == CARD)).any()  # pad positions are never targets


def test_hybrid_loss_by_hand_and_gradients_only_at_targets():
    codes = _codes(B=2)
    hb = make_hybrid_batch(codes, CARD, 3, torch.Generator().manual_seed(2), stage=0, split=torch.tensor([5, 9]))
    logits = torch.randn(*hb.inputs.shape, CARD, requires_grad=True)
    loss, parts = hybrid_loss(logits, hb, ar_weight=0.5)
    logp = logits.log_softmax(-1)
    sel = hb.ar_targets != IGNORE
    ar = -logp[sel].gather(-1, hb.ar_targets[sel][:, None]).mean()
    mag = -logp[:, 0][hb.mask].gather(-1, hb.targets[:, 0][hb.mask][:, None]).mean()
    torch.testing.assert_close(loss, mag + 0.5 * ar)
    torch.testing.assert_close(parts["ar"], ar.detach())
    loss.backward()
    used = sel.clone()
    used[:, 0] |= hb.mask
    assert (logits.grad.abs().sum(-1)[~used] == 0).all() and (logits.grad.abs().sum(-1)[used] > 0).all()


def test_magnet_lm_trains_the_hybrid_objective_through_its_attn_mask():
    """MagnetLM.forward(attn_mask=HybridBatch.allowed): the causal part never sees later inputs, and
    the hybrid loss back-propagates through the real model."""
    from conftest import random_text, small_lm

    from magnet_rt.train.hybrid import hybrid_loss, make_hybrid_batch

    lm = small_lm(seed=3)
    codes = torch.randint(0, lm.card, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    hb = make_hybrid_batch(codes, lm.card, lm.cfg.span_len, torch.Generator().manual_seed(1), stage=1,
                           context=lm.cfg.subcodes_context)
    cross = lm.cross_inputs(lm.project_text(*random_text(2, 4, 16)))
    logits = lm(hb.inputs, cross, hb.stage, attn_mask=hb.allowed)
    loss, parts = hybrid_loss(logits, hb)
    loss.backward()
    assert torch.isfinite(loss) and lm.linears[1].weight.grad.abs().sum() > 0
    s = int(hb.split[0])
    assert s >= 2
    later = hb.inputs.clone()
    later[0, :, s - 1] = (later[0, :, s - 1] + 1) % lm.card  # change the last causal position
    with torch.no_grad():
        a = lm(hb.inputs, cross, hb.stage, attn_mask=hb.allowed)[0, :, : s - 1]
        b = lm(later, cross, hb.stage, attn_mask=hb.allowed)[0, :, : s - 1]
    assert torch.equal(a, b)
