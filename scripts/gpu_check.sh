#!/usr/bin/env bash
# The package on one CUDA GPU in at most five minutes: verify (float64 proofs, extremes in float32 and bf16),
# the gradient identity on the GPU in float32 and bf16, log-probs of a ~100M-parameter model against float64,
# and DPO and GRPO for 50 steps in bf16 and in float32, compared within stated tolerances
# (scripts/gpu_check.py says which). Writes report.md and report.json; exits non-zero if a check fails.
#
#   bash scripts/gpu_check.sh [OUT]          OUT defaults to runs/gpu_check
#   bash scripts/gpu_check.sh OUT --dry-run  the same checks on the CPU with a tiny model (no GPU needed)
#
# Runs as is on a machine with one GPU and Python 3.11+: it creates .venv with `pip install -e .` when the
# package is not installed there yet (that install is not counted in the five minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu_check}"
shift || true
PYTHON=.venv/bin/python
if ! "$PYTHON" -c "import unified_rlhf, torch, transformers, accelerate" 2>/dev/null; then
    echo "setting up .venv: pip install -e ."
    "${PYTHON_FOR_VENV:-python3}" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e .
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
# 300 s for the checks themselves; timeout exits with 124 if they run over
exec timeout 300 "$PYTHON" scripts/gpu_check.py --out "$OUT" "$@"
