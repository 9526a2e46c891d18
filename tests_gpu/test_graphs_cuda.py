"""The static decode step captured as CUDA graphs (`magnet_rt.graphs`): `make test-gpu` on a CUDA machine.

On the CPU (tests/test_graphs.py) the static step runs eagerly and gives exactly the dynamic step's codes.
Here cuBLAS may pick different kernels for the head over all positions (static) and over the re-masked
ones (dynamic), so the two can round differently: codes are compared as a fraction that agrees."""

import pytest
import torch

from magnet_rt import DecodeParams
from magnet_rt.decoding import RowGroup, decode
from magnet_rt.graphs import StepGraphs
from magnet_rt.lm import MagnetConfig, MagnetLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="run with `make test-gpu` on a CUDA machine")


def lm_on_cuda(dtype=torch.float32) -> MagnetLM:
    cfg = MagnetConfig(dim=256, num_heads=4, num_layers=4, card=2048, text_dim=64, segment_duration=10.0)
    lm = MagnetLM(cfg).init_weights(0).to("cuda").eval()
    return lm.set_precision(dtype) if dtype != torch.float32 else lm


def decode_on(lm, p, graphs=None, rows=2, seed=0):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(rows, 9, lm.cfg.text_dim, generator=g).cuda()
    m = torch.ones(rows, 9, dtype=torch.long, device="cuda")
    m[1:, 6:] = 0
    with torch.inference_mode():
        groups = [RowGroup(1, torch.Generator(device="cuda").manual_seed(seed + r)) for r in range(rows)]
        out = decode(lm, lm.project_text(h, m), 500, p, groups, cross_len=m.sum(-1), graphs=graphs)
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sampling", [False, True])
def test_graphs_agree_with_the_dynamic_fast_path(dtype, sampling):
    lm = lm_on_cuda(dtype)
    p = DecodeParams(decoding_steps=(10, 3, 3, 3), use_sampling=sampling)
    graphs = StepGraphs(lm)
    static = decode_on(lm, p, graphs)
    assert graphs.captured() == 4  # one graph per stage, CFG on
    again = decode_on(lm, p, graphs)  # replays only
    dynamic = decode_on(lm, p)
    assert torch.equal(static, again)
    assert int((static == lm.card).sum()) == 0
    assert (static == dynamic).float().mean().item() > 0.99


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
def test_replays_never_synchronise_with_the_host(arrangement):
    """stride1's least-probable-span search runs inside the graph too (a fixed number of rounds)."""
    lm = lm_on_cuda(torch.float16)
    p = DecodeParams(decoding_steps=(20, 10, 10, 10), span_arrangement=arrangement)
    graphs = StepGraphs(lm)
    decode_on(lm, p, graphs, rows=1)  # captures (capture itself synchronises)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        codes = decode_on(lm, p, graphs, rows=1, seed=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert codes.shape == (1, 4, 500)


def test_pipeline_uses_graphs_on_cuda_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGNET_RT_CACHE", str(tmp_path))
    from magnet_rt.registry import load_pipeline

    pipe = load_pipeline("tiny-random", device="cuda")
    r = pipe.generate("warm pad", duration_s=2.0, params=DecodeParams(decoding_steps=(4, 2, 2, 2)), seed=1)
    assert pipe.graphs is not None and pipe.graphs.captured() >= 4
    assert r.audio.shape == (1, 1, 64000)
