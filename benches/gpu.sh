#!/usr/bin/env bash
# Everything measured on a GPU host, in one run of a few minutes: parity of apscore's CUDA
# forward pass (f32 and bf16) with transformers, then throughput of apscore against
# transformers (bf16, sdpa, TRL-style batches) on Llama-3-8B layer shapes.
#
# The GPU host needs CUDA (driver, NVRTC, headers), python3 with torch, transformers,
# tokenizers and pyarrow; no Rust. Build the binary on a machine with Rust and carry it over:
#
#   CUDARC_CUDA_VERSION=12080 cargo build --release --features cuda
#   mkdir -p .gpu && cp target/release/apscore .gpu/apscore
#   bash benches/gpu.sh            # on the GPU host, from the repository root
#
# Writes its log to ${OUT:-/tmp}/gpu-bench.log as well as stdout.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${APSCORE:-.gpu/apscore}
LOG=${OUT:-/tmp}/gpu-bench.log
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$BIN" --version
  echo "== parity (fixture models, pairs at max_length 128)"
  timeout 150 python3 benches/gpu_parity.py --apscore "$BIN"
  echo "== throughput: Llama-3-8B layer shapes, 4 layers, bf16"
  timeout 240 python3 benches/model_bench.py --apscore "$BIN" --device cuda --dtype bf16 \
    --shape llama3-8b-4l --pairs 512 --batch-tokens 32768 --reference-batch-pairs 8 --peak-gflops 989000 \
    --work /tmp/apscore-gpu-bench
} 2>&1 | tee "$LOG"
