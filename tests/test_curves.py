"""Training curves (magnet_rt/train/curves.py): runs that restart their step count (a new run from --init) are
drawn after the run before them; resumed runs keep their own steps."""

from __future__ import annotations

import json

from magnet_rt.train.curves import chained, plot


def write_run(path, steps, stage_loss=5.0):
    path.mkdir()
    rows = [{"step": s, "loss": stage_loss, "stage": s % 4} for s in steps]
    rows.append({"eval": {"step": steps[-1], **{f"loss_stage{k}": stage_loss for k in range(4)}}})
    (path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_runs_from_init_continue_the_step_axis_and_the_png_is_written(tmp_path):
    base = write_run(tmp_path / "lm4", list(range(10, 4810, 10)))
    resumed = write_run(tmp_path / "lm4b", list(range(4810, 5000, 10)))  # a resume: its own steps
    beat = write_run(tmp_path / "beat", list(range(10, 1210, 10)))  # from --init: counts from 0 again
    got = [(run.split("/")[-1], offset, train[0]["step"]) for run, train, _, offset in chained([base, resumed, beat])]
    assert got == [("lm4", 0, 10), ("lm4b", 0, 4810), ("beat", 4990, 10)]
    cut = [(offset, train[-1]["step"]) for _, train, _, offset in chained([base, beat + ":600", base])]
    assert cut == [(0, 4800), (4800, 600), (4800 + 600, 4800)]  # the beat run drawn to step 600 only
    out = plot([], [base, beat], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
