"""The static-shape decode step (`magnet_rt.graphs`): the same codes as the dynamic step, no data-dependent
shapes or host reads (checked by tracing it whole with torch.compile), buckets and their buffers.
The CUDA graph capture itself runs in tests_gpu/."""

import pytest
import torch
from conftest import random_text, small_lm

from magnet_rt import DecodeParams
from magnet_rt.decoding import DecodePath, RowGroup, choose_path, decode
from magnet_rt.graphs import Buffers, StepForm, StepGraphs, static_step, text_bucket
from magnet_rt.lm import Attention
from magnet_rt.selection import least_probable_spans, least_probable_spans_static

PATHS = {"reference": DecodePath.REFERENCE, "dynamic": DecodePath.DYNAMIC, "static": DecodePath.STATIC}

LM = small_lm(seed=3, segment_duration=1.0)  # 50 frames: 16 units of 3 + 1 of 2


def params(**kw):
    base = dict(decoding_steps=(5, 2, 2, 2))
    base.update(kw)
    return DecodeParams(**base)


def run(lm, p, *, path, frames=50, seeds=(11,), lengths=(4,), fixed=None, init=None, graphs=None,
        is_cancelled=None):
    """Decode one group per seed (one row each) through `path`: reference, dynamic or static."""
    h, m = random_text(len(seeds), max(lengths), lm.cfg.text_dim, lengths=list(lengths), seed=5)
    with torch.inference_mode():
        cond = lm.project_text(h, m)
        groups = [RowGroup(1, torch.Generator().manual_seed(s)) for s in seeds]
        if path == "static" and graphs is None:
            graphs = StepGraphs(lm)
        return decode(lm, cond, frames, p, groups, cross_len=m.sum(-1), fixed=fixed, init_codes=init,
                      path=PATHS[path], graphs=graphs if path == "static" else None,
                      is_cancelled=is_cancelled)


@pytest.mark.parametrize("kw", [
    dict(use_sampling=False),
    dict(),  # top-p 0.9, the release's default
    dict(top_p=1.0, top_k=7),
    dict(top_p=1.0, top_k=0, span_scoring="prod"),
    dict(max_cfg_coef=1.0, min_cfg_coef=1.0),  # CFG off: the null half is skipped
    dict(decoding_steps=(1, 1, 1, 1)),
    dict(span_arrangement="stride1"),  # least-probable spans, searched on device by the static step
    dict(span_arrangement="stride1", use_sampling=False),
])
def test_static_dynamic_and_reference_paths_give_the_same_codes(kw):
    """Every path reads the uniform of the position it samples, so sampled codes agree too."""
    p = params(**kw)
    ref, fast, static = (run(LM, p, path=path, seeds=(11, 12), lengths=(4, 2)) for path in
                         ("reference", "dynamic", "static"))
    for r, f, s in zip(ref, fast, static, strict=True):
        assert torch.equal(f, s)
        assert torch.equal(r, f)
        assert int((s == LM.card).sum()) == 0


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
def test_static_path_keeps_pinned_tokens_and_matches_dynamic(arrangement):
    g = torch.Generator().manual_seed(1)
    init = torch.randint(0, LM.card, (1, 4, 50), generator=g)
    fixed = torch.zeros(1, 4, 50, dtype=torch.bool)
    fixed[..., :20] = True
    fixed[..., 35:] = True
    fixed[0, 2, :] = True  # a whole codebook pinned: its stage has nothing to generate
    fast = run(LM, params(span_arrangement=arrangement), path="dynamic", fixed=fixed, init=init)[0][0]
    static = run(LM, params(span_arrangement=arrangement), path="static", fixed=fixed, init=init)[0][0]
    assert torch.equal(fast, static)
    assert torch.equal(static[fixed[0]].view(-1), init[0][fixed[0]].view(-1))


def test_a_request_decodes_the_same_alone_and_in_a_batch_with_longer_text():
    """Alone its text pads to bucket 16; beside a 20-token prompt to 32. Same codes either way."""
    assert text_bucket(3) == text_bucket(16) == 16 and text_bucket(17) == 32
    g = torch.Generator().manual_seed(9)
    text = [torch.randn(n, LM.cfg.text_dim, generator=g) for n in (3, 20)]
    graphs = StepGraphs(LM)

    def decode_rows(rows, path):
        S = max(len(text[r]) for r in rows)
        h = torch.zeros(len(rows), S, LM.cfg.text_dim)
        m = torch.zeros(len(rows), S, dtype=torch.long)
        for i, r in enumerate(rows):
            h[i, :len(text[r])], m[i, :len(text[r])] = text[r], 1
        with torch.inference_mode():
            groups = [RowGroup(1, torch.Generator().manual_seed(40 + r)) for r in rows]
            return decode(LM, LM.project_text(h, m), 50, params(), groups, cross_len=m.sum(-1),
                          graphs=graphs if path == "static" else None)

    alone = decode_rows([0], "static")[0]
    together = decode_rows([0, 1], "static")
    assert torch.equal(alone, together[0])
    assert all(torch.equal(a, b) for a, b in zip(together, decode_rows([0, 1], "dynamic"), strict=True))
    assert set(graphs.buckets) == {(1, 50, 16, 3), (2, 50, 32, 3)}


def test_results_are_not_views_of_the_bucket_buffers():
    graphs = StepGraphs(LM)
    first = run(LM, params(), path="static", seeds=(1,), graphs=graphs)[0]
    kept = first.clone()
    second = run(LM, params(), path="static", seeds=(2,), graphs=graphs)[0]
    assert len(graphs.buckets) == 1  # same shape: the same buffers were reused
    assert torch.equal(first, kept) and not torch.equal(first, second)


def test_cancelled_group_leaves_and_the_rest_decode_as_on_the_dynamic_path():
    steps = {"n": 0}

    def cancelled(gi):
        steps["n"] += 1
        return gi == 1 and steps["n"] > 6  # group 1 leaves during stage 0

    graphs = StepGraphs(LM)
    out = run(LM, params(), path="static", seeds=(3, 4, 5), lengths=(4, 4, 4), graphs=graphs,
              is_cancelled=cancelled)
    fast = run(LM, params(), path="dynamic", seeds=(3, 4, 5), lengths=(4, 4, 4))
    assert out[1] is None
    assert torch.equal(out[0], fast[0]) and torch.equal(out[2], fast[2])
    assert (2, 50, 16, 3) in graphs.buckets  # rebound to a two-row bucket


def test_lru_keeps_at_most_capacity_buckets():
    graphs = StepGraphs(LM, capacity=2)
    for frames in (20, 30, 40):
        run(LM, params(), path="static", frames=frames, graphs=graphs)
    assert list(graphs.buckets) == [(1, 30, 16, 3), (1, 40, 16, 3)]


@pytest.mark.parametrize("stage,cfg,kind,chunked", [(0, True, "top_p", True), (2, True, "greedy", True),
                                                    (1, False, "top_k", True), (1, True, "top_p", False)])
def test_static_step_traces_whole_without_host_reads(stage, cfg, kind, chunked):
    """torch.compile(fullgraph=True) refuses any graph break: `.item()`, `bool(tensor)`, boolean
    indexing or a numpy call would raise here. What traces whole can be captured as a CUDA graph."""
    torch._dynamo.reset()
    unit = 3 if chunked else 1
    buf = Buffers(LM, rows=2, frames=50, text=16, unit=unit)
    buf.gen.fill_(LM.card)
    buf.n_units.fill_(17)
    buf.mask_p.fill_(0.7)
    buf.coef.fill_(3.0)
    buf.temp.fill_(1.0)
    buf.top_p.fill_(0.9)
    buf.u.copy_(torch.rand(2, 50, generator=torch.Generator().manual_seed(0)))
    form = StepForm(kind, 5 if kind == "top_k" else 0, "max", unit, chunked, 3, Attention.BANDED)
    eager = Buffers(LM, rows=2, frames=50, text=16, unit=unit)
    for a, b in zip(vars(eager).values(), vars(buf).values(), strict=True):
        if isinstance(a, torch.Tensor):
            a.copy_(b)
    eager.cross = buf.cross
    step = torch.compile(static_step, backend="eager", fullgraph=True)
    with torch.inference_mode():
        step(LM, buf, stage, cfg, form)
        static_step(LM, eager, stage, cfg, form)
    assert torch.equal(buf.gen, eager.gen) and torch.equal(buf.scores, eager.scores)
    assert int((buf.gen[:, stage] == LM.card).sum()) < 100  # it sampled into the masked units


def test_static_least_probable_spans_equal_the_release_search_row_by_row():
    """The fixed-round, all-rows search returns the per-row binary search's mask, ties included
    (frozen tokens score DONT_REMASK, so many windows tie)."""
    g = torch.Generator().manual_seed(4)
    for T, span in ((50, 3), (37, 3), (20, 2), (64, 5)):
        scores = torch.rand(6, T, generator=g)
        scores[1, ::2] = -1e4
        scores[2] = -1e4
        scores[3, 10:] = -1e4
        scores[4] = torch.randint(0, 3, (T,), generator=g).float()  # many exact ties
        for target in range(T + 1):
            tgt = torch.full((6,), target)
            got = least_probable_spans_static(scores, tgt, span)
            for b in range(6):
                want = least_probable_spans(scores[b], target, span) if target else torch.zeros(T, dtype=torch.bool)
                assert torch.equal(got[b], want), (T, span, target, b)


def test_the_path_is_chosen_once_with_its_reason():
    cpu, stride1 = torch.device("cpu"), params(span_arrangement="stride1")
    chosen = choose_path(cpu, stride1, rescoring=False, graphs=True)
    assert chosen.path is DecodePath.STATIC and "stride1" in chosen.reason  # no longer dropped for stride1
    chosen = choose_path(cpu, params(), rescoring=True, graphs=True)
    assert chosen.path is DecodePath.DYNAMIC and "rescorer" in chosen.reason
    chosen = choose_path(cpu, params(), rescoring=False, graphs=False)
    assert chosen.path is DecodePath.DYNAMIC and "measured faster" in chosen.reason
    assert chosen.attention is Attention.DENSE  # the CPU's measured faster form (benchmarks/RESULTS.md)
    ref = choose_path(cpu, params(), rescoring=False, graphs=True, requested=DecodePath.REFERENCE)
    assert ref.path is DecodePath.REFERENCE and ref.attention is Attention.DENSE
