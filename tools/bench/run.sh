#!/usr/bin/env bash
# make bench: prints the machine, then each benchmark with its baseline from the same run.
# REF_PYTHON: a Python with the reference libraries (tools/golden/requirements.txt) for the
# benchmarks that compare against diffusers/torch; they are skipped, with a line, without one.
set -eu
build=${1:-build}
REF_PYTHON=${REF_PYTHON:-python3}
# As the supervisor does for its stages: idle OpenMP threads sleep instead of spinning on the
# cores the next GEMM needs.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "== tensor handoff"
"$build/bench/bench_handoff"
echo
"$build/bench/bench_handoff" --cold
for b in bench_ops bench_load; do
  if [ -x "$build/bench/$b" ]; then echo; echo "== $b"; "$build/bench/$b"; fi
done
echo
echo "== transformer forward against the reference"
if "$REF_PYTHON" -c "import torch, diffusers" 2>/dev/null; then
  "$REF_PYTHON" tools/bench/bench_dit.py "$build"
else
  echo "skipped: $REF_PYTHON cannot import torch and diffusers (set REF_PYTHON to a Python with tools/golden/requirements.txt)"
fi
echo
echo "== text encoder forward against the reference"
if "$REF_PYTHON" -c "import torch, transformers" 2>/dev/null; then
  "$REF_PYTHON" tools/bench/bench_text_encoder.py "$build"
else
  echo "skipped: $REF_PYTHON cannot import torch and transformers (set REF_PYTHON to a Python with tools/golden/requirements.txt)"
fi
echo
echo "== tokenizer against HF tokenizers (one thread each, tests/golden/tokenizer/corpus.json)"
if "$REF_PYTHON" -c "import tokenizers" 2>/dev/null; then
  "$REF_PYTHON" tools/bench/bench_tokenizer.py "$build"
else
  "$build/bench/bench_tokenizer"
  echo "reference skipped: $REF_PYTHON cannot import tokenizers (set REF_PYTHON to a Python with tools/golden/requirements.txt)"
fi
echo
echo "== VAE convolution: direct kernel against im2col + sgemm"
"$build/bench/bench_vae" --conv
echo
echo "== VAE decode and encode against the reference, and the 1024x1024 decode's peak memory"
if "$REF_PYTHON" -c "import torch, diffusers" 2>/dev/null; then
  "$REF_PYTHON" tools/bench/bench_vae.py "$build"
else
  echo "skipped: $REF_PYTHON cannot import torch and diffusers (set REF_PYTHON to a Python with tools/golden/requirements.txt)"
fi
echo
echo "== the service under load against the one-process pipeline"
"${REF_PYTHON}" -c "import sys" 2>/dev/null && py="$REF_PYTHON" || py=python3
"$py" tools/bench/bench_service.py "$build"
