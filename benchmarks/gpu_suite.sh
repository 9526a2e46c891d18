#!/usr/bin/env bash
# Issue 5's GPU measurements and checks in one call, for a CUDA machine that has torch but not our venv
# (the device machines lent here: no network, their python3 holds torch and transformers).
#
#   make gpu-carry                  # here: the wheels and the shared fixture it needs, into .gpu/
#   bash benchmarks/gpu_suite.sh    # there, from the repo root; results in $OUT (or out/bench-gpu)
#
# Writes at most 6 files: gpu.txt (the machine), test-gpu.txt (`pytest tests_gpu`), small-live.json and
# small-reference.json (p50/p95 of the served fast path against the reference path, LM + codec, 10 s,
# batch 1 with CFG), small-sweep.json and medium-sweep.json (latency, throughput and peak memory per batch).
set -u
PY=${PY:-python3}
DEST=${OUT:-out/bench-gpu}
mkdir -p "$DEST"
if ls .gpu/wheels/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps .gpu/wheels/*.whl
fi
if [ ! -e ../shared ] && [ -d .gpu/shared ]; then
  ln -s "$PWD/.gpu/shared" ../shared  # tests resolve the fixtures beside the repository root
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())'
  git log --oneline -1 2> /dev/null
} > "$DEST/gpu.txt" 2>&1
"$PY" -m pytest -q -p no:cacheprovider tests_gpu > "$DEST/test-gpu.txt" 2>&1
for preset in live reference; do
  "$PY" -m benchmarks.latency --shape small --device cuda --preset "$preset" --repeats 20 --codec \
    --json "$DEST/small-$preset.json" > /dev/null 2>> "$DEST/test-gpu.txt"
done
"$PY" -m benchmarks.latency --shape small --device cuda --preset reference --repeats 5 --codec \
  --batch-sweep 1,2,4,8,16 --json "$DEST/small-sweep.json" > /dev/null 2>> "$DEST/test-gpu.txt"
"$PY" -m benchmarks.latency --shape medium --device cuda --preset reference --repeats 3 --codec \
  --batch-sweep 1,16 --json "$DEST/medium-sweep.json" > /dev/null 2>> "$DEST/test-gpu.txt"
ls -l "$DEST"
