"""The engine against the reference implementation's own outputs (../shared/fixtures/audiocraft-tiny)."""

import json

import numpy as np
import pytest
import torch

from magnet_rt import DecodeParams
from magnet_rt.checkpoints import load_audiocraft_lm
from magnet_rt.decoding import DecodePath, decode_single
from magnet_rt.graphs import StepGraphs
from magnet_rt.lm import Attention


@pytest.fixture(scope="module")
def ref(fixture_dir):
    z = np.load(fixture_dir / "vectors.npz")
    meta = json.loads((fixture_dir / "meta.json").read_text())
    return load_audiocraft_lm(fixture_dir), z, meta


@pytest.mark.parametrize("stage", range(4))
def test_logits_match_reference(ref, stage):
    lm, z, _ = ref
    h, m = torch.from_numpy(z["t5_hidden"]), torch.from_numpy(z["t5_mask"])
    got = lm.logits(torch.from_numpy(z[f"codes_stage{stage}"]), h, m, stage)
    assert got.shape == (2, 4, 60, 2048)
    want = torch.from_numpy(z[f"logits_stage{stage}"])
    assert (got[:, stage] - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("form", list(Attention))
@pytest.mark.parametrize("stage", range(4))
def test_fast_forward_matches_reference(ref, stage, form):
    """Banded local attention, stage-only head and precomputed text k/v give the same logits."""
    lm, z, _ = ref
    h, m = torch.from_numpy(z["t5_hidden"]), torch.from_numpy(z["t5_mask"])
    with torch.inference_mode():
        cross = lm.cross_inputs(lm.project_text(h, m))
        got = lm.stage_logits(torch.from_numpy(z[f"codes_stage{stage}"]), cross, stage, form)
    assert (got - torch.from_numpy(z[f"logits_stage{stage}"])).abs().max().item() <= 1e-4


@pytest.mark.parametrize("path", [DecodePath.REFERENCE, DecodePath.DYNAMIC, DecodePath.STATIC],
                         ids=["reference-path", "dynamic-path", "static-path"])
def test_greedy_decodes_identical(ref, path):
    lm, z, meta = ref
    h, m = torch.from_numpy(z["t5_hidden"]), torch.from_numpy(z["t5_mask"])
    assert len(meta["greedy"]) >= 2
    for run in meta["greedy"]:
        params = DecodeParams(
            decoding_steps=tuple(run["decoding_steps"]), span_arrangement=run["span_arrangement"],
            span_scoring=run["span_scoring"], use_sampling=run["use_sampling"], temperature=run["temperature"],
            anneal_temperature=run["anneal_temperature"], top_p=run["top_p"],
            max_cfg_coef=run["max_cfg_coef"], min_cfg_coef=run["min_cfg_coef"])
        for seed in (0, 1234):
            graphs = StepGraphs(lm) if path is DecodePath.STATIC else None
            codes = decode_single(lm, h, m, run["requested_frames"], params, seed=seed, path=path, graphs=graphs)
            want = z[run["name"]]
            assert codes.shape == want.shape == (2, 4, run["returned_frames"])
            assert np.array_equal(codes.numpy(), want), run["name"]
