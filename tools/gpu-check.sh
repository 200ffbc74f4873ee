#!/usr/bin/env bash
# One short run on a lent GPU machine: build with CUDA, run the unit tests (the CUDA pool test
# among them: a device allocation exported by one process and written by another), the process
# tests, and the benchmarks. Prints the GPU, then each step's result; exits non-zero on failure.
set -u
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null ||
  echo "gpu-check: nvidia-smi not found"
status=0
step() { echo "== $*"; "$@" || { echo "gpu-check: FAILED: $*"; status=1; }; }
step tools/install-deps.sh
step make -j"$(nproc)" all
for t in build/tests/test_*; do step "$t"; done
step tests/run-tests.sh build
step make bench
exit $status
