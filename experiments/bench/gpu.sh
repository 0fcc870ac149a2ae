#!/usr/bin/env bash
# The GPU benchmark in one line, from any directory:  bash experiments/bench/gpu.sh OUT_DIR [more bench options]
# Needs python3 with jax (CUDA), flax, optax and torch (CUDA). Writes OUT_DIR/gpu.json and gpu.md, rewritten after
# every case; stops starting cases after --deadline-s (default 420 s on a GPU) so the run fits in 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: bash experiments/bench/gpu.sh OUT_DIR [bench options]}"
shift
python3 -c "import jax, sys; b = jax.default_backend(); sys.exit(0 if b == 'gpu' else f'JAX backend is {b}, not gpu')"
PYTHONPATH=. exec python3 -m jinterp.bench --out "$out" "$@"
