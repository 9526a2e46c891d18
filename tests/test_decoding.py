"""Decoding behaviour on small random models: schedule, pinned tokens, locality, determinism,
batching and cancellation."""

import math

import pytest
import torch
from conftest import random_text, small_lm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magnet_rt import DecodeParams, decoding
from magnet_rt.decoding import DecodePath, RowGroup, decode, decode_single, mask_fractions
from magnet_rt.errors import InvalidParams
from magnet_rt.lm import Attention
from magnet_rt.sampling import span_scores, step_temperature
from magnet_rt.selection import units_to_mask

PATHS = [DecodePath.REFERENCE, DecodePath.DYNAMIC]

LM = small_lm()
TEXT = random_text(2, 5, 16, lengths=[5, 3])


def params(**kw):
    base = dict(decoding_steps=(4, 2, 2, 2))
    base.update(kw)
    return DecodeParams(**base)


# ---- schedule -------------------------------------------------------------------------------------
def test_schedule_matches_the_release_numbers():
    """Chunks re-masked per step for 10 s nonoverlap in the release (N = 166; magnet-reference §3)."""
    n20 = [int(units_to_mask(p, torch.tensor([166]))) for p in mask_fractions(20)]
    assert n20 == [166, 165, 163, 160, 157, 152, 145, 138, 130, 122, 112, 101, 90, 79, 66, 53, 40, 27, 13, 1]
    n10 = [int(units_to_mask(p, torch.tensor([166]))) for p in mask_fractions(10)]
    assert n10 == [166, 163, 155, 143, 127, 106, 82, 56, 28, 1]
    assert float(mask_fractions(1)[0]) == 1.0  # a 1-step stage masks everything once
    temps = [step_temperature(3.0, True, 20 - 1 - i, 20) for i in range(20)]
    assert temps[0] == pytest.approx(2.85) and temps[-1] == 0.0
    coefs = [decoding.cfg_coef(p, DecodeParams(), 0) for p in mask_fractions(20)]
    assert coefs[0] == 10.0 and coefs[1] == pytest.approx(9.97, abs=0.01) and coefs[-1] == pytest.approx(1.0, abs=1e-6)
    assert [decoding.cfg_coef(p, DecodeParams(), 3) for p in mask_fractions(20)] == coefs  # released: one CFG
    split = DecodeParams(higher_cfg_coef=3.0)
    assert decoding.cfg_coef(mask_fractions(10)[0], split, 0) == 10.0
    higher = [decoding.cfg_coef(p, split, 1) for p in mask_fractions(10)]
    assert higher[0] == 3.0 and higher[-1] == pytest.approx(1.0, abs=1e-6) and higher == sorted(higher, reverse=True)


def test_higher_cfg_coef_changes_only_the_higher_codebooks():
    """Same seed: codebook 1 is identical whatever higher_cfg_coef is; the higher codebooks differ."""
    text = random_text(1, 4, 16)
    a = decode_single(LM, *text, 30, params(decoding_steps=(3, 2, 2, 2)), seed=4)
    b = decode_single(LM, *text, 30, params(decoding_steps=(3, 2, 2, 2), higher_cfg_coef=1.0), seed=4)
    assert torch.equal(a[:, 0], b[:, 0]) and not torch.equal(a[:, 1:], b[:, 1:])
    with pytest.raises(InvalidParams, match="higher_cfg_coef"):
        DecodeParams(higher_cfg_coef=-1.0)


def test_masked_span_counts_in_a_real_decode(monkeypatch):
    """Every step of a real 500-frame decode masks exactly max(int(cos(pi/2 t) N), 1) chunks, N = 167:
    no frame is dropped (the release would cut to 498)."""
    lm = small_lm(segment_duration=10.0)
    seen = []
    real = decoding.top_units

    def spy(scores, num):
        m = real(scores, num)
        seen.append((m.sum(-1).tolist(), num.tolist(), scores.shape[-1]))
        return m

    monkeypatch.setattr(decoding, "top_units", spy)
    steps = (6, 3, 2, 1)
    codes = decode_single(lm, *random_text(1, 4, 16), 500, params(decoding_steps=steps), seed=3)
    assert codes.shape == (1, 4, 500) and int((codes == lm.card).sum()) == 0
    expected = [max(int(math.cos(math.pi / 2 * (i / (n - 1 if n > 1 else 1))) * 167 + 1e-9), 1) if n > 1 else 167
                for n in steps for i in range(n)]
    assert [s[2] for s in seen] == [167] * sum(steps)
    assert [s[0][0] for s in seen] == [s[1][0] for s in seen]
    assert [s[1][0] for s in seen] == expected


def test_short_last_chunk_is_scored_on_its_own_tokens():
    conf = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.8]])
    assert torch.allclose(span_scores(conf, 3, "max"), torch.tensor([[0.1, 0.2]]))
    want = torch.tensor([[-math.log(0.9) - math.log(0.1) - math.log(0.2), -math.log(0.3) - math.log(0.8)]])
    assert torch.allclose(span_scores(conf, 3, "prod"), want)


# ---- pinned tokens ---------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.integers(4, 40), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31),
       arrangement=st.sampled_from(["nonoverlap", "stride1"]), path=st.sampled_from(PATHS),
       sampling=st.booleans())
def test_pinned_tokens_never_change(frames, density, seed, arrangement, path, sampling):
    g = torch.Generator().manual_seed(seed)
    fixed = torch.rand(2, 4, frames, generator=g) < density
    init = torch.randint(0, LM.card, (2, 4, frames), generator=g)
    p = params(span_arrangement=arrangement, use_sampling=sampling)
    out = decode_single(LM, *TEXT, frames, p, seed=seed, fixed=fixed, init_codes=init, path=path)
    assert torch.equal(out[fixed], init[fixed])
    assert int((out == LM.card).sum()) == 0  # everything else was generated


def test_inpainting_a_middle_region_and_a_prefix_continuation_use_one_mechanism():
    T = 30
    init = torch.randint(0, LM.card, (1, 4, T), generator=torch.Generator().manual_seed(0))
    middle = torch.ones(1, 4, T, dtype=torch.bool)
    middle[..., 10:19] = False
    prefix = torch.zeros(1, 4, T, dtype=torch.bool)
    prefix[..., :12] = True
    for fixed in (middle, prefix):
        out = decode_single(LM, *random_text(1, 5, 16), T, params(), seed=1, fixed=fixed, init_codes=init)
        assert torch.equal(out[fixed], init[fixed])
        assert not torch.equal(out[~fixed], init[~fixed])


# ---- the forward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", list(Attention))
def test_stage_ge_1_is_local(form):
    """With L layers and context c, a change farther than L*c frames away changes nothing for stages
    >= 1, and does change stage 0."""
    lm = small_lm(num_layers=2, subcodes_context=5, segment_duration=2.0)
    h, m = random_text(1, 4, 16)
    cross = lm.cross_inputs(lm.project_text(h, m))
    codes = torch.randint(0, lm.card, (1, 4, 40), generator=torch.Generator().manual_seed(0))
    far, near = codes.clone(), codes.clone()
    far[0, 0, 11] = (far[0, 0, 11] + 1) % lm.card  # 11 > 2 * 5 frames from t = 0
    near[0, 0, 10] = (near[0, 0, 10] + 1) % lm.card  # exactly at the receptive field's edge
    with torch.inference_mode():
        for stage in (1, 2, 3):
            base = lm(codes, cross, stage, form)[..., 0, :]
            assert torch.equal(lm(far, cross, stage, form)[..., 0, :], base)
            assert not torch.allclose(lm(near, cross, stage, form)[..., 0, :], base)
        stage0 = lm(codes, cross, 0, form)[..., 0, :]
        assert not torch.allclose(lm(far, cross, 0, form)[..., 0, :], stage0)


def test_fast_and_reference_paths_agree():
    lm = small_lm(seed=5)
    h, m = random_text(2, 6, 16, lengths=[6, 2])
    codes = torch.randint(0, lm.card + 1, (2, 4, 33), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cond = lm.project_text(h, m)
        for stage in range(4):
            ref = lm(torch.cat([codes, codes]), lm.cross_inputs(torch.cat([cond, torch.zeros_like(cond)])), stage)
            for form in Attention:
                fast = lm.stage_logits(torch.cat([codes, codes]), lm.cross_inputs(cond), stage, form)
                assert (ref[:, stage] - fast).abs().max().item() < 1e-5
    for arrangement in ("nonoverlap", "stride1"):
        p = params(span_arrangement=arrangement, use_sampling=False)
        a = decode_single(lm, h, m, 33, p, seed=0, path=DecodePath.REFERENCE)
        b = decode_single(lm, h, m, 33, p, seed=0, path=DecodePath.DYNAMIC)
        assert torch.equal(a, b)


def test_bf16_blocks_stay_close_to_fp32():
    lm = small_lm(seed=2)
    h, m = random_text(1, 4, 16)
    codes = torch.randint(0, lm.card, (1, 4, 30), generator=torch.Generator().manual_seed(2))
    ref = lm.logits(codes, h, m, 1)
    half = small_lm(seed=2).set_precision(torch.bfloat16)
    got = half.logits(codes, h, m, 1)
    assert got.dtype == torch.float32
    err = (got - ref).abs().max().item()
    assert 0 < err < 0.1 * ref.abs().max().item()


# ---- determinism, batching, cancellation -------------------------------------------------------------
def test_same_seed_same_codes_and_seeds_matter():
    p = params()
    a = decode_single(LM, *TEXT, 24, p, seed=7)
    assert torch.equal(a, decode_single(LM, *TEXT, 24, p, seed=7))
    assert not torch.equal(a, decode_single(LM, *TEXT, 24, p, seed=8))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_a_request_decodes_the_same_alone_or_batched():
    """Per-group generators and per-row text lengths make a request independent of its batch mates."""
    ha, ma = random_text(1, 3, 16, seed=1)
    hb, mb = random_text(1, 7, 16, seed=2)
    p = params()
    cond_a = LM.project_text(ha, ma)
    alone = decode(LM, cond_a, 24, p, [RowGroup(1, _gen(11))])[0]
    cond_b = LM.project_text(hb, mb)
    cond = torch.cat([torch.nn.functional.pad(cond_a, (0, 0, 0, 4)), cond_b])
    both = decode(LM, cond, 24, p, [RowGroup(1, _gen(11)), RowGroup(1, _gen(12))], cross_len=torch.tensor([3, 7]))
    assert torch.equal(both[0], alone)


def test_cancelled_group_leaves_at_the_next_step_and_others_finish():
    p = params()
    cond = LM.project_text(*random_text(3, 4, 16))
    steps_seen = []
    cancel_after = 3

    def on_step(ev):
        steps_seen.append(ev.step)

    def is_cancelled(gi):
        return gi == 1 and len(steps_seen) >= cancel_after

    out = decode(LM, cond, 24, p, [RowGroup(1, _gen(1)), RowGroup(1, _gen(2)), RowGroup(1, _gen(3))],
                 on_step=on_step, is_cancelled=is_cancelled)
    assert out[1] is None and out[0] is not None and out[2] is not None
    alone = decode(LM, cond[:1], 24, p, [RowGroup(1, _gen(1))])[0]
    assert torch.equal(out[0], alone)
    assert steps_seen == list(range(1, p.total_steps + 1))


def test_cancel_raises_and_progress_reports_each_step_and_stage_codes():
    events = []
    out = decode_single(LM, *TEXT, 24, params(), seed=0, progress=events.append)
    assert [e.step for e in events] == list(range(1, 11)) and events[-1].total_steps == 10
    ends = [e for e in events if e.codes is not None]
    assert [e.stage for e in ends] == [0, 1, 2, 3]
    assert torch.equal(ends[-1].codes[0], out)
    assert int((ends[0].codes[0][:, 1:] == LM.card).all()) == 1  # after stage 0 only codebook 0 is known
    from magnet_rt.errors import DecodeCancelled
    with pytest.raises(DecodeCancelled):
        decode_single(LM, *TEXT, 24, params(), seed=0, cancelled=lambda: True)


def test_one_step_stages_and_fully_pinned_codebooks():
    init = torch.randint(0, LM.card, (1, 4, 20), generator=_gen(0))
    fixed = torch.zeros(1, 4, 20, dtype=torch.bool)
    fixed[:, 2] = True  # codebook 2 entirely given
    out = decode_single(LM, *random_text(1, 4, 16), 20, params(decoding_steps=(3, 1, 1, 1)), seed=0,
                        fixed=fixed, init_codes=init)
    assert torch.equal(out[:, 2], init[:, 2]) and int((out == LM.card).sum()) == 0


def test_frames_beyond_the_segment_are_refused():
    from magnet_rt.errors import InvalidParams
    with pytest.raises(InvalidParams, match="segment"):
        decode_single(LM, *TEXT, LM.cfg.segment_frames + 1, params(), seed=0)


def test_each_path_is_deterministic_for_a_seed():
    """Each path is reproducible for a seed and leaves no mask token. The reference path samples every
    position (as released), the fast path only re-masked ones; both read the one uniform drawn for each
    position, so their sampled codes agree too (tests/test_graphs.py)."""
    lm = small_lm(seed=6)
    h, m = random_text(1, 5, 16)
    for arrangement in ("nonoverlap", "stride1"):
        p = params(span_arrangement=arrangement, decoding_steps=(5, 2, 2, 2))
        for path in PATHS:
            a = decode_single(lm, h, m, 36, p, seed=42, path=path)
            assert torch.equal(a, decode_single(lm, h, m, 36, p, seed=42, path=path))
            assert int((a == lm.card).sum()) == 0


def test_inverse_cdf_draws_follow_the_distribution():
    from magnet_rt.sampling import inverse_cdf, sample_top_p, truncate_top_k

    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).expand(40000, 4)
    counts = torch.bincount(inverse_cdf(probs, torch.rand(40000, generator=g)), minlength=4) / 40000
    assert counts[1] == 0 and torch.allclose(counts, probs[0], atol=0.01)
    top_p = torch.bincount(sample_top_p(probs, 0.6, torch.rand(40000, generator=g)), minlength=4) / 40000
    assert torch.allclose(top_p, torch.tensor([0.5 / 0.8, 0.0, 0.3 / 0.8, 0.0]), atol=0.01)  # mass before <= p
    top_k = torch.bincount(inverse_cdf(truncate_top_k(probs, 1), torch.rand(40000, generator=g)), minlength=4)
    assert top_k.tolist() == [40000, 0, 0, 0]


def test_int8_error_after_guidance_is_within_3_percent_of_the_logit_range():
    """int8 (one module swap, per-channel scales, KEEP_FLOAT in float) against the same fp32 weights: the
    CFG-combined logits at guidance 10 differ by at most 3 % of their range, for every stage; decoding works.
    Measured on a small random model and on the shipped demo LM (benchmarks/RESULTS.md has magnet-small)."""
    import copy
    import warnings

    from magnet_rt.bundle import load_lm
    from magnet_rt.int8 import KEEP_BLOCKS, KEEP_FLOAT, guided_logit_error, quantize_int8
    from magnet_rt.registry import demo_dir

    warnings.filterwarnings("ignore", category=UserWarning)  # torch's note on quantized tensor creation
    for lm in (small_lm(seed=2, dim=64, num_heads=4, num_layers=6), load_lm(demo_dir()).eval()):
        q = quantize_int8(copy.deepcopy(lm))
        n = len(lm.layers)
        for i, (float_block, block) in enumerate(zip(lm.layers, q.layers, strict=True)):  # swapped, nothing added
            kept = i in KEEP_BLOCKS or i - n in KEEP_BLOCKS
            for name, child in block.named_children():
                same = type(child) is type(getattr(float_block, name))
                assert same == (kept or name in KEEP_FLOAT or name.startswith("norm")), (i, name)
        g = torch.Generator().manual_seed(2)
        cond = lm.project_text(torch.randn(2, 6, lm.cfg.text_dim, generator=g), torch.ones(2, 6))
        for stage in range(lm.n_q):
            codes = torch.randint(0, lm.card, (2, 4, 90), generator=g)
            codes[:, stage + 1:] = lm.card
            codes[:, stage][torch.rand(2, 90, generator=g) < 0.5] = lm.card
            err = guided_logit_error(lm, q, codes, cond, stage, coef=10.0)
            assert 0 < err <= 0.03, (lm.cfg.dim, stage, err)
    h, m = random_text(1, 4, q.cfg.text_dim)
    out = decode_single(q, h, m, 24, params(), seed=1)
    assert out.shape == (1, 4, 24) and int((out == q.card).sum()) == 0


def test_sort_descending_matches_torch_sort():
    from magnet_rt.sampling import sort_descending

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 2048, generator=g) * 3, dim=-1)
    values, idx = sort_descending(probs)
    ref_values, ref_idx = torch.sort(probs, dim=-1, descending=True)
    assert torch.equal(values, ref_values) and torch.equal(torch.gather(probs, -1, idx), values)
    assert torch.equal(idx.sort(-1).values, torch.arange(2048).expand(64, -1))  # a permutation per row
    unique = torch.ones_like(values, dtype=torch.bool)  # float32 softmax values do tie; elsewhere same order
    unique[:, 1:] &= values[:, 1:] != values[:, :-1]
    unique[:, :-1] &= values[:, :-1] != values[:, 1:]
    assert unique.float().mean() > 0.9 and torch.equal(idx[unique], ref_idx[unique])
    tied = torch.tensor([[0.25, 0.5, 0.25, 0.0]])
    v, i = sort_descending(tied)
    assert v.tolist() == [[0.5, 0.25, 0.25, 0.0]] and i[0, 0] == 1 and sorted(i[0, 1:3].tolist()) == [0, 2]
