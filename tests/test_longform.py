"""Long-form and endless generation on the tiny-random pipeline (10 s segment): exact lengths, pinned
overlaps, streaming order, seamless joins, endless windows with a live prompt and cancellation."""


import numpy as np
import pytest
import torch

from magnet_rt.errors import InvalidParams
from magnet_rt.longform import PromptHolder, endless, generate_long, plan_windows, stream_long, window_seed
from magnet_rt.presets import resolve_params

FAST = resolve_params("live", {"decoding_steps": [1, 1, 1, 1]})


@pytest.fixture(scope="module")
def long25(pipe):
    """A 25 s request, with a log of decode steps and chunk arrivals in the order they happened."""
    log = []
    chunks = []
    for c in stream_long(pipe, "ambient drones", 25.0, FAST, seed=4, overlap_s=3.0,
                         on_step=lambda i, ev: log.append(("step", i))):
        log.append(("chunk", c.window))
        chunks.append(c)
    return chunks, log


def test_plan_windows():
    assert list(plan_windows(1250, 500, 150)) == [(0, 500), (350, 850), (700, 1200), (1050, 1250)]
    assert list(plan_windows(None, 100, 25, count=3)) == [(0, 100), (75, 175), (150, 250)]
    assert list(plan_windows(80, 500, 150)) == [(0, 80)]
    with pytest.raises(InvalidParams):
        list(plan_windows(1000, 100, 100))


def test_25_s_on_a_10_s_model_is_exactly_25_s(pipe, long25):
    chunks, _ = long25
    audio = np.concatenate([c.audio for c in chunks], -1)
    assert audio.shape == (1, 25 * pipe.sample_rate) and np.isfinite(audio).all()
    assert [c.frames for c in chunks] == [(0, 500), (350, 850), (700, 1200), (1050, 1250)]
    assert [c.final for c in chunks] == [False, False, False, True]
    starts = np.cumsum([0] + [c.audio.shape[-1] for c in chunks[:-1]])
    assert [c.start for c in chunks] == starts.tolist()  # contiguous, no gap, no overlap


def test_overlap_codes_are_pinned_to_the_previous_window(long25):
    chunks, _ = long25
    assert chunks[0].pinned == 0
    for prev, cur in zip(chunks, chunks[1:], strict=False):
        assert cur.pinned == 150
        assert torch.equal(cur.codes[:, :150], prev.codes[:, -150:])
    assert len({c.seed for c in chunks}) == 4 and chunks[1].seed == window_seed(4, 1)


def test_windows_stream_in_order_as_soon_as_decoded(long25):
    _, log = long25
    order = [x for i, x in enumerate(log) if i == 0 or log[i - 1] != x]  # collapse runs of steps
    assert order == [("step", 0), ("chunk", 0), ("step", 1), ("chunk", 1), ("step", 2), ("chunk", 2),
                     ("step", 3), ("chunk", 3)]


def test_joins_have_no_discontinuity(pipe, long25):
    """Both sides of a join render the same codes, centred in the overlap, so they agree (join_error);
    through the crossfade the stream is the new window's own (continuous) rendering to within 1e-3 of
    the signal's RMS; and the steps where chunks meet are no larger than the signal's own nearby steps."""
    chunks, _ = long25
    x = np.concatenate([c.audio for c in chunks], -1)[0]
    d = np.abs(np.diff(x))  # d[n] = |x[n + 1] - x[n]|
    fade, sr, hop = round(0.1 * pipe.sample_rate), pipe.sample_rate, pipe.sample_rate // pipe.frame_rate
    for c in chunks[1:]:
        assert c.join_error < 1e-3
        j = c.start
        own = pipe.codec.decode(c.codes[None, :, :100])[0, 0].numpy()  # the window alone, its first 2 s
        k = j - c.frames[0] * hop
        rms = np.sqrt(np.mean(x[j - sr:j + sr] ** 2))
        assert np.abs(x[j - 1:j + fade + 1] - own[k - 1:k + fade + 1]).max() < 1e-3 * rms
        around = np.concatenate([d[j - sr:j - 1], d[j + fade + 1:j + fade + sr]])
        assert max(d[j - 1], d[j + fade - 1]) <= np.percentile(around, 99.9)  # where chunks / fades meet


def test_generate_long_collects_and_within_a_segment_is_one_window(pipe):
    r = generate_long(pipe, "x", 1.0, FAST, seed=9)
    assert r.audio.shape == (1, pipe.sample_rate) and len(r.chunks) == 1 and r.codes.shape == (4, 50)
    plain = pipe.generate("x", 1.0, FAST, seed=window_seed(9, 0))
    assert torch.equal(plain.codes[0], r.codes) and r.time_to_first_audio > 0


def test_endless_until_cancelled_with_a_live_prompt(pipe, monkeypatch):
    seen = []
    real = pipe.text_encoder.encode
    monkeypatch.setattr(pipe.text_encoder, "encode", lambda prompts: seen.append(list(prompts)) or real(prompts))
    holder, stop = PromptHolder("soft piano"), []
    chunks = []
    for c in endless(pipe, holder, FAST, seed=1, window_s=1.0, overlap_s=0.3, fade_s=0.05,
                     is_cancelled=lambda: bool(stop)):
        chunks.append(c)
        if c.window == 1:
            holder.set("hard techno")  # applies from the next window
        if c.window == 2:
            stop.append(True)
        assert len(chunks) < 10
    windows = [c.window for c in chunks]
    assert windows == [0, 1, 2, -1]  # three windows, then the held-back tail is flushed on cancel
    assert [c.prompt for c in chunks[:3]] == ["soft piano", "soft piano", "hard techno"]
    assert [p for p in seen] == [["soft piano"], ["soft piano"], ["hard techno"]]
    assert chunks[-1].final and all(c.start == p.start + p.audio.shape[-1] for p, c in zip(chunks, chunks[1:],
                                                                                              strict=False))
    total = sum(c.audio.shape[-1] for c in chunks)
    hop = pipe.sample_rate // pipe.frame_rate
    assert total == chunks[2].frames[1] * hop  # everything decoded was played, once
