"""The benchmark scripts keep their contracts (run small, on the CPU; the figures are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import sigint_default

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, tmp_path: Path) -> dict:
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, "-m", "benchmarks.latency", *args, "--threads", "1", "--json", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300, preexec_fn=sigint_default)
    return json.loads(out.read_text())


def test_latency_json_contract(tmp_path):
    r = bench("--shape", "tiny", "--device", "cpu", "--preset", "live", "--repeats", "2", "--frames", "30",
              tmp_path=tmp_path)
    for path in ("fast", "baseline", "fast_static"):
        assert 0 < r[path]["p50_s"] <= r[path]["p95_s"] and r[path]["runs"] == 2
    assert r["speedup"] == r["baseline"]["p50_s"] / r["fast"]["p50_s"]
    assert r["fast_form"] == "dynamic" and r["static_vs_dynamic"] > 0
    assert r["decoding_steps"] == [10, 1, 1, 1] and r["forwards"] == 13 and r["peak_memory_bytes"] > 0
    assert "benchmarks.latency" in r["command"]


def test_latency_batch_sweep(tmp_path):
    r = bench("--shape", "tiny", "--preset", "live", "--repeats", "1", "--frames", "30", "--batch-sweep", "1,2",
              tmp_path=tmp_path)
    assert [s["batch"] for s in r["sweep"]] == [1, 2]
    assert all(s["audio_s_per_s"] > 0 for s in r["sweep"])


def test_attention_forms_json_contract(tmp_path):
    """Both forms timed side by side per (precision, rows, frames), and the device's chosen form named."""
    out = tmp_path / "att.json"
    subprocess.run([sys.executable, "-m", "benchmarks.attention_forms", "--shape", "tiny", "--frames", "30",
                    "--repeats", "1", "--int8", "--threads", "1", "--json", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300, preexec_fn=sigint_default)
    r = json.loads(out.read_text())
    assert r["chosen"] == "dense" and [c["precision"] for c in r["cases"]] == ["fp32", "int8"]
    for c in r["cases"]:
        assert c["dense"]["p50_s"] > 0 and c["banded"]["p50_s"] > 0
        assert c["chosen_not_slower"] == (c["dense"]["p50_s"] <= c["banded"]["p50_s"])
    assert r["chosen_never_slower"] == all(c["chosen_not_slower"] for c in r["cases"])


def test_int8_error_json_contract(tmp_path):
    """The demo LM's error after guidance 10, per stage, within the 3 % bound."""
    out = tmp_path / "int8.json"
    subprocess.run([sys.executable, "-m", "benchmarks.int8_error", "--model", "demo", "--frames", "60",
                    "--json", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=300,
                   preexec_fn=sigint_default)
    r = json.loads(out.read_text())
    assert len(r["error_per_stage"]) == 4 and 0 < r["max_error"] <= 0.03 and r["coef"] == 10.0


def test_memory_table_covers_every_released_shape(tmp_path):
    from benchmarks import memory
    from magnet_rt.lm import RELEASED_SHAPES

    out = tmp_path / "mem.json"
    memory.main(["--batch", "1,16", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == set(RELEASED_SHAPES) and len(rows) == 2 * len(RELEASED_SHAPES)
    small = next(r for r in rows if r["model"] == "facebook/magnet-small-10secs" and r["batch"] == 1)
    assert small["lm_params"] == 420_371_456  # the count benchmarks/latency.py reports for the built model


def test_codec_precision_reports_fp16_error(tmp_path, monkeypatch):
    from benchmarks import codec_precision

    monkeypatch.setenv("MAGNET_RT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "codec.json"
    codec_precision.main(["--model", "tiny-random", "--json", str(out)])
    r = json.loads(out.read_text())
    assert len(r["fp16"]["snr_db"]) == r["takes"] == 3 and r["fp16"]["finite"]
    assert min(r["fp16"]["snr_db"]) > min(r["bf16"]["snr_db"])  # 10 mantissa bits against 7
