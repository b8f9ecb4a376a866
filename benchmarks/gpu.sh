#!/usr/bin/env bash
# The GPU check for a lent CUDA machine, at most 8 minutes: the CUDA tests (tests/test_cuda.py), then, in one
# benchmarks run, the SAE step against the GPU's own bfloat16 and float32 GEMM, harvest tokens/s (float32 and
# bfloat16) against the whole model and the blocks' FLOP bound, and — where eai-sparsify installs (from PyPI, or
# from wheels in .whl/) — sparsify's tokens/s on the same planted rows. Results: $OUT/RESULTS.md (default
# /tmp/superpos-gpu). Usage: bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/superpos-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "gpu.sh: no NVIDIA GPU"; exit 2; }
python -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA'; print('torch', torch.__version__)" || exit 2
echo "== CUDA tests"
timeout 150 python -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
echo "== SAE step and harvest"
timeout 200 python benchmarks/run.py --only sae,harvest --device cuda --out "$OUT"
echo "== sparsify on the same rows"
if timeout 60 python -m pip install -q --retries 0 --timeout 10 eai-sparsify 2>/dev/null || { [ -d .whl ] && python -m pip install -q --no-index --find-links .whl eai-sparsify; }; then
  timeout 100 python benchmarks/run.py --quick --only peers --peers sparsify --device cuda --merge --out "$OUT"
else
  echo "gpu.sh: eai-sparsify does not install here; sparsify's tokens/s skipped"
fi
cat "$OUT/RESULTS.md"
