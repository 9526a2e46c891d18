"""The MAGNeT training objective, trainer, resume and export (magnet_rt/train)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from conftest import small_lm

from magnet_rt.conditioning import EncodedText
from magnet_rt.train.masking import expected_coverage, make_masked_batch, masked_inputs, span_count_lut, span_mask
from magnet_rt.train.objective import masked_stage_loss
from magnet_rt.train.trainer import EMA, LMTrainer, TrainConfig, cosine_with_warmup


class WordHashEncoder:
    """A deterministic stand-in text encoder: one fixed random vector per word; None/"" -> null row."""

    def __init__(self, dim: int = 16):
        self.dim = dim

    def _vec(self, word: str) -> torch.Tensor:
        seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, prompts):
        words = [(p or "").split() for p in prompts]
        S = max(1, max(len(w) for w in words))
        hidden = torch.zeros(len(prompts), S, self.dim)
        mask = torch.zeros(len(prompts), S, dtype=torch.long)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                hidden[i, j], mask[i, j] = self._vec(w), 1
        return EncodedText(hidden, mask)


def tiny(seed=0):
    return small_lm(seed, dim=32, num_heads=2, num_layers=2, card=16, text_dim=16, segment_duration=0.6)


def fixed_batch(B=4, T=30, card=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(card, (B, 4, T), generator=g)
    return codes, ["funk bass", "sad piano", "fast drums", None][:B]


# ---- masking -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [500, 1500, 60])
def test_lut_expected_coverage_matches_rate(T):
    """The LUT's span counts give (Monte Carlo) coverage within 3 points of every rate, k >= 1, monotone."""
    lut = span_count_lut(T, 3)
    assert lut.shape == (101,) and lut.min() >= 1 and np.all(np.diff(lut) >= 0)
    # analytic: the chosen k is the first whose expected coverage reaches the rate
    for m in range(1, 101):
        assert expected_coverage(T, 3, lut[m])[0] >= m / 100 - 1e-12
        if lut[m] > 1:
            assert expected_coverage(T, 3, lut[m] - 1)[0] < m / 100
    g = torch.Generator().manual_seed(0)
    tol = 0.03 if T >= 500 else 0.06
    for rate in (0.05, 0.2, 0.5, 0.8, 0.95):
        cov = span_mask(torch.full((400,), rate), T, 3, g).float().mean().item()
        assert abs(cov - rate) < tol, (T, rate, cov)


def test_coverage_product_form_equals_binomial_ratio():
    T, L = 40, 3
    for k in (1, 5, 20, 37, 38):
        exact = 1 - math.comb(T - L, k) / math.comb(T, k)
        assert expected_coverage(T, L, k)[0] == pytest.approx(exact, abs=1e-12)


def test_span_mask_structure():
    """Exactly k distinct starts, spans of 3 clipped at the end, possibly overlapping."""
    g = torch.Generator().manual_seed(1)
    m = span_mask(torch.tensor([0.0, 0.3, 1.0]), 50, 3, g)
    lut = span_count_lut(50, 3)
    assert m[0].sum() >= 1 and m[0].sum() <= 3  # rate 0 still masks one span (k >= 1)
    assert m[2].all()  # rate 1 covers everything
    assert m[1].sum() <= 3 * lut[30]
    # every masked run has length >= min(3, distance to the end)
    row = m[1].tolist()
    runs, n = [], 0
    for v in row + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert all(r >= 3 for r in runs[:-1]) or row[-1]


def test_masked_batch_layout_and_rate():
    """Earlier codebooks given, stage masked on the span mask at ~rate, later ones all mask id."""
    card, T = 16, 500
    codes = torch.randint(card, (256, 4, T), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    b = make_masked_batch(codes, card, 3, g, stage=2)
    assert torch.equal(b.inputs[:, :2], codes[:, :2])
    assert (b.inputs[:, 3] == card).all()
    assert torch.equal(b.inputs[:, 2] == card, b.mask)
    assert torch.equal(b.inputs[:, 2][~b.mask], codes[:, 2][~b.mask])
    per_row = b.mask.float().mean(-1)
    assert (per_row - b.rates).abs().mean() < 0.03  # each row masked at its own drawn rate
    assert abs(b.rates.mean().item() - 2 / math.pi) < 0.06  # E[cos(pi/2 u)] = 2/pi
    stages = {make_masked_batch(codes[:1], card, 3, g).stage for _ in range(200)}
    assert stages == {0, 1, 2, 3}
    valid = torch.ones(256, T, dtype=torch.bool)
    valid[:, 400:] = False
    assert not make_masked_batch(codes, card, 3, g, valid=valid).mask[:, 400:].any()


# ---- loss --------------------------------------------------------------------------------------------
def test_loss_counts_only_masked_positions_of_the_stage():
    g = torch.Generator().manual_seed(0)
    B, K, T, C = 3, 4, 20, 16
    logits = torch.randn(B, K, T, C, generator=g)
    targets = torch.randint(C, (B, K, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.4
    stage = 1
    loss = masked_stage_loss(logits, targets, mask, stage)
    changed = logits.clone()
    changed[:, [0, 2, 3]] = torch.randn(B, 3, T, C, generator=g) * 10  # other codebooks
    changed[:, stage][~mask] = torch.randn(int((~mask).sum()), C, generator=g) * 10  # unmasked frames
    assert masked_stage_loss(changed, targets, mask, stage) == loss
    changed[:, stage][mask] += torch.randn(int(mask.sum()), C, generator=g)
    assert masked_stage_loss(changed, targets, mask, stage) != loss
    ref = torch.nn.functional.cross_entropy(logits[:, stage][mask], targets[:, stage][mask])
    assert torch.allclose(loss, ref)
    assert torch.equal(masked_stage_loss(logits[:, stage], targets, mask, stage), loss)  # stage-head form


def test_loss_gradient_only_reaches_masked_stage_logits():
    logits = torch.randn(2, 4, 10, 8, requires_grad=True)
    targets = torch.randint(8, (2, 4, 10))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3:6] = True
    masked_stage_loss(logits, targets, mask, 2).backward()
    nz = logits.grad.abs().sum(-1) > 0
    expect = torch.zeros(2, 4, 10, dtype=torch.bool)
    expect[:, 2] = mask
    assert torch.equal(nz, expect)


# ---- optimisation ------------------------------------------------------------------------------------
def test_ema_update_math():
    lin = torch.nn.Linear(3, 2)
    ema = EMA(lin, 0.9, warmup=False)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], 0.9 * w0 + 0.1 * (w0 + 1.0))
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], 0.9 * (0.9 * w0 + 0.1 * (w0 + 1)) + 0.1 * (w0 + 1))
    other = torch.nn.Linear(3, 2)
    ema.copy_to(other)
    assert torch.equal(other.weight, ema.shadow["weight"])


def test_ema_warmup_follows_early_weights_then_settles_at_decay():
    lin = torch.nn.Linear(3, 2)
    ema = EMA(lin, 0.999)  # warm-up on: update n uses min(0.999, (1 + n) / (10 + n))
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)  # d_0 = 0.1: the shadow moves 90 % of the way at once
    assert torch.allclose(ema.shadow["weight"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    for _ in range(20000):
        ema.update(lin)
    assert ema.updates == 20001 and min(ema.decay, 20001 / 20010) == 0.999
    restored = EMA(torch.nn.Linear(3, 2), 0.5)
    restored.load_state_dict(ema.state_dict())
    assert (restored.decay, restored.warmup, restored.updates) == (0.999, True, 20001)


def test_cosine_schedule_with_warmup():
    f = cosine_with_warmup(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_overfit_fixed_batch_reduces_loss():
    """A few steps on one fixed batch, fixed stage masks drawn anew each step: the loss falls a lot."""
    torch.manual_seed(0)
    lm = tiny()
    trainer = LMTrainer(lm, WordHashEncoder(), TrainConfig(lr=5e-3, warmup_steps=5, total_steps=150, cfg_dropout=0.0,
                                                           ema_decay=0.9))
    codes, caps = fixed_batch()
    g = torch.Generator().manual_seed(5)

    def eval_loss():
        with torch.no_grad():
            trainer.generator = torch.Generator().manual_seed(99)
            return sum(float(trainer.compute_loss(codes, caps, stage=s, drop=False)[0]) for s in range(4)) / 4

    before = eval_loss()
    trainer.generator = g
    for _ in range(150):
        info = trainer.train_step(codes, caps)
        assert math.isfinite(info.loss) and info.grad_norm >= 0
    after = eval_loss()
    assert before > math.log(16) * 0.9
    assert after < 0.5 * before, (before, after)


def test_cfg_dropout_is_batchwise_null_condition():
    lm = tiny()
    trainer = LMTrainer(lm, WordHashEncoder(), TrainConfig(cfg_dropout=1.0))
    codes, caps = fixed_batch()
    cross = trainer.condition(caps, drop=True)  # every layer's text k/v: all zero, one position each
    assert all(torch.count_nonzero(k) == 0 and torch.count_nonzero(v) == 0 for k, v in cross.kv)
    assert (cross.bias[:, 0, 0, 0] == 0).all() and torch.isinf(cross.bias[:, 0, 0, 1:]).all()
    keys = trainer.condition(caps, drop=False).kv[0][0]
    assert torch.count_nonzero(keys[0]) > 0 and torch.count_nonzero(keys[3]) == 0  # None row is null anyway
    drops = [trainer.compute_loss(codes, caps)[1]["dropped"] for _ in range(5)]
    assert all(drops)
    trainer.cfg.cfg_dropout = 0.3
    drops = [trainer.compute_loss(codes, caps)[1]["dropped"] for _ in range(60)]
    assert 5 < sum(drops) < 35


def test_resume_reproduces_next_step(tmp_path):
    """N steps, checkpoint, fresh process state, load, one step == the uninterrupted run's step N+1."""
    codes, caps = fixed_batch()
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, total_steps=20, cfg_dropout=0.5, ema_decay=0.9, seed=3)

    def run(trainer, n):
        return [trainer.train_step(codes, caps) for _ in range(n)]

    a = LMTrainer(tiny(), WordHashEncoder(), cfg)
    full = run(a, 4)
    b = LMTrainer(tiny(), WordHashEncoder(), cfg)
    run(b, 3)
    b.save_checkpoint(tmp_path / "trainer.pt")
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint restores it
    c = LMTrainer(tiny(seed=7), WordHashEncoder(), cfg)  # different init: everything comes from the file
    c.load_checkpoint(tmp_path / "trainer.pt")
    nxt = c.train_step(codes, caps)
    assert c.step == 4
    assert (nxt.loss, nxt.stage, nxt.dropped, nxt.lr) == (full[3].loss, full[3].stage, full[3].dropped, full[3].lr)
    for k, v in a.lm.state_dict().items():
        assert torch.equal(v, c.lm.state_dict()[k]), k
    for k, v in a.ema.shadow.items():
        assert torch.equal(v, c.ema.shadow[k]), k
    blob = torch.load(tmp_path / "trainer.pt", weights_only=True)  # plain tensors and data only
    assert blob["step"] == 3


def test_export_roundtrip_through_released_loader(tmp_path):
    from magnet_rt.checkpoints import load_audiocraft_lm, save_audiocraft_lm

    trainer = LMTrainer(tiny(), WordHashEncoder(), TrainConfig(lr=1e-3, warmup_steps=1, total_steps=5))
    codes, caps = fixed_batch()
    for _ in range(3):
        trainer.train_step(codes, caps)
    ema = trainer.ema_model()
    path = save_audiocraft_lm(ema, tmp_path / "exp", dtype=torch.float32, text_encoder="minilm-test")
    back = load_audiocraft_lm(path)
    assert back.cfg == ema.cfg and back.text_encoder_name == "minilm-test"
    for k, v in ema.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    text = WordHashEncoder().encode(caps)
    x = masked_inputs(codes, torch.ones(4, 30, dtype=torch.bool), 1, 16)
    assert torch.equal(ema.logits(x, text.hidden, text.mask, 1), back.logits(x, text.hidden, text.mask, 1))
    (tmp_path / "exp16").mkdir()
    half = load_audiocraft_lm(save_audiocraft_lm(ema, tmp_path / "exp16" / "state_dict.bin"))  # fp16 release form
    assert torch.allclose(half.emb[0].weight, ema.emb[0].weight, atol=1e-2)


def test_hybrid_option_of_the_trainer_reduces_both_losses():
    """TrainConfig(hybrid=True): the trainer runs the Hybrid-MAGNeT objective (causal AR part + MAGNeT
    part) through the real model, and a few steps on a fixed batch lower both of its losses."""
    torch.manual_seed(0)
    lm = tiny()
    trainer = LMTrainer(lm, WordHashEncoder(), TrainConfig(lr=5e-3, warmup_steps=5, total_steps=80, cfg_dropout=0.0,
                                                           ema_decay=0.9, hybrid=True))
    codes, caps = fixed_batch()

    def losses():
        with torch.no_grad():
            trainer.generator = torch.Generator().manual_seed(99)
            infos = [trainer.compute_loss(codes, caps, stage=s, drop=False)[1] for s in range(4)]
        return (sum(i["magnet_loss"] for i in infos) / 4, sum(i["ar_loss"] for i in infos) / 4)

    mag0, ar0 = losses()
    trainer.generator = torch.Generator().manual_seed(5)
    for _ in range(80):
        assert math.isfinite(trainer.train_step(codes, caps).loss)
    mag1, ar1 = losses()
    assert mag1 < 0.8 * mag0 and ar1 < 0.8 * ar0, (mag0, mag1, ar0, ar1)


# ---- counterfactual captions (train/contrast.py) -----------------------------------------------------------
def test_counterfactual_captions_change_only_the_key_or_the_tempo():
    from magnet_rt.train.contrast import KEY_PHRASE, TEMPO_PHRASE, contrast_hinge, counterfactual

    cap = "upbeat funk with slap bass and drums at 112 bpm in E minor"
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        new = counterfactual(cap, g)
        key, tempo = KEY_PHRASE.search(new), TEMPO_PHRASE.search(new)
        assert key and tempo and new != cap
        if key.group(0) != "E minor":
            seen.add("key")
            assert key.group(3) == "minor" and tempo.group(0) == "112 bpm"
        else:
            seen.add("tempo")
            ratio = int(tempo.group(1)) / 112
            assert 1.29 <= max(ratio, 1 / ratio) <= 1.61  # never near the same, half or double time
    assert seen == {"key", "tempo"}
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [counterfactual(cap, a) for _ in range(5)] == [counterfactual(cap, b) for _ in range(5)]
    assert counterfactual("sad piano", g) is None and counterfactual(None, g) is None
    from magnet_rt.train.contrast import with_key_moved  # any spelling the key input reads, moved in the datagen's

    assert with_key_moved("lofi in D-flat Major", 2) == "lofi in Eb Major" and with_key_moved("a major hit", 1) is None
    assert counterfactual("ambient, 70 bpm", g).endswith(" bpm")
    assert counterfactual("folk in F# major", g) != "folk in F# major"
    true, counter = torch.tensor([5.0, 5.0, 5.0]), torch.tensor([5.1, 6.0, 4.0])
    hinge = contrast_hinge(true, counter, torch.tensor([True, True, False]), 0.5)
    assert float(hinge) == pytest.approx((0.4 + 0.0) / 2)  # row 3 has no counterfactual: left out
    assert float(contrast_hinge(true, counter, torch.tensor([False] * 3), 0.5)) == 0.0


def test_near_key_counterfactuals_are_the_keys_an_estimate_confuses():
    from magnet_rt.train.contrast import counterfactual, near_key

    assert [near_key(4, "minor", i) for i in range(4)] == [(11, "minor"), (9, "minor"), (7, "major"), (4, "major")]
    assert near_key(0, "major", 2) == (9, "minor") and near_key(11, "major", 0) == (6, "major")
    cap = "upbeat funk with slap bass and drums at 112 bpm in E minor"
    g = torch.Generator().manual_seed(0)
    keys = {counterfactual(cap, g, near_keys=1.0) for _ in range(80)}
    assert {c for c in keys if "112 bpm" in c} == {cap.replace("E minor", k) for k in
                                                    ("B minor", "A minor", "G major", "E major")}
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)  # near_keys 0 draws as before
    assert [counterfactual(cap, a, 0.0) for _ in range(20)] == [counterfactual(cap, b) for _ in range(20)]


def test_drums_counterfactuals_turn_the_drums_over_and_nothing_else():
    from magnet_rt.train.contrast import counterfactual, with_drums_turned

    cap = "funk, happy, clavinet melody, slap bass, with drums, Bb major, 110 bpm"
    assert with_drums_turned(cap) == cap.replace("with drums", "no drums")
    assert with_drums_turned("jazz featuring piano and drums, 150 bpm") == "jazz featuring piano, 150 bpm"
    assert with_drums_turned("a sad piano") is None
    g = torch.Generator().manual_seed(0)
    seen = {counterfactual(cap, g, kinds=("drums",)) for _ in range(5)}
    assert seen == {cap.replace("with drums", "no drums")}
    mixed = {counterfactual(cap, g, kinds=("key", "tempo", "drums")) for _ in range(60)}
    assert cap.replace("with drums", "no drums") in mixed and any("Bb major" not in c for c in mixed)
    assert counterfactual("a sad piano", g, kinds=("key", "tempo", "drums")) is None


def test_the_contrast_term_only_on_the_stages_asked_for():
    captions = ["funk at 112 bpm in E minor", "rock at 150 bpm in A major"]
    codes, _ = fixed_batch()
    cfg = TrainConfig(cfg_dropout=0.0, contrast_weight=1.0, contrast_stages=(0,), contrast_near_keys=0.5,
                      contrast_kinds=("key", "tempo", "drums"))
    trainer = LMTrainer(tiny(), WordHashEncoder(), cfg)
    assert "contrast" in trainer.compute_loss(codes[:2], captions, stage=0)[1]
    assert "contrast" not in trainer.compute_loss(codes[:2], captions, stage=2)[1]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_the_contrast_term_is_added_and_reaches_the_text_path():
    captions = ["funk at 112 bpm in E minor", "rock at 150 bpm in A major", "sad piano", None]
    codes, _ = fixed_batch()
    plain = LMTrainer(tiny(), WordHashEncoder(), TrainConfig(cfg_dropout=0.0))
    both = LMTrainer(tiny(), WordHashEncoder(), TrainConfig(cfg_dropout=0.0, contrast_weight=1.0, contrast_margin=0.5))
    plain.generator, both.generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    loss0, info0 = plain.compute_loss(codes, captions, stage=0)
    loss1, info1 = both.compute_loss(codes, captions, stage=0)
    assert "contrast" not in info0 and 0.0 < info1["contrast"] <= 0.5 + 1e-6  # an untrained LM: ~the margin
    assert float(loss1.detach()) == pytest.approx(float(loss0.detach()) + info1["contrast"], rel=1e-5)
    loss1.backward()
    text_proj = [p for n, p in both.lm.named_parameters() if "output_proj" in n or "cross" in n]
    assert text_proj and any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in text_proj)
    step = both.train_step(codes, captions)
    assert "contrast" in step.extra and math.isfinite(step.loss)
    _, info = both.compute_loss(codes, ["sad piano", "calm folk", None, None], stage=1)
    assert info["contrast"] == 0.0  # nothing to contrast
    held = [(codes, captions)]  # evaluation reports the masked CE alone, as without the term
    plain.lm.load_state_dict(both.lm.state_dict())
    plain.ema.shadow = {k: v.clone() for k, v in both.ema.shadow.items()}
    assert both.evaluate(held) == plain.evaluate(held)
