#!/usr/bin/env bash
# On a GPU machine: the CUDA cells of the default matrix with their benchmarks, plus the CUDA tests.
# Writes results.jsonl, report.html, summary.md, junit.xml, figures.txt and log.txt under $OUT.
# Wheels the machine lacks (bitsandbytes, grokadamw, pydantic) may be carried in .whl/.
set -uo pipefail
OUT=${OUT:-reports/cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HARNESS_LOCK_DIR=/tmp/harness-locks
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
  timeout 420 python3 -m harness run matrix.yaml -k cuda -n "${WORKERS:-8}" --out "$OUT" --baselines "$OUT"
  echo "harness run exit status: $?"
  python3 benchmarks/bench_figures.py "$OUT" | tee "$OUT/figures.txt"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_bench.py tests/test_execute.py -k cuda
  echo "cuda tests exit status: $?"
} 2>&1 | tee "$OUT/log.txt"
