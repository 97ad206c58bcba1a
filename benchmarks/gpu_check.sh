#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): run from anywhere on a machine with an NVIDIA GPU,
# its own python3 and torch, no network, no Jupyter. The package runs from this checkout
# (PYTHONPATH), nothing is installed. Writes benchmarks/gpu_check.json (or --out FILE).
#   bash benchmarks/gpu_check.sh             # the real run, on cuda:0, about 5 minutes
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps at a tiny size, on the CPU
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONHASHSEED=0
missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["torch", "torchvision", "numpy", "yaml", "PIL", "matplotlib", "tqdm", "onnx",
          "onnxruntime"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check: $PYTHON lacks: $missing" >&2
  exit 1
fi
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
