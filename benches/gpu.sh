#!/usr/bin/env bash
# Everything measured on a GPU host, in one run of at most about 9.5 minutes:
#   1. a smoke run of `apscore run --device cuda` on a fixture model;
#   2. the CUDA tests (worker/tests/cuda.rs): every fixture model, policy and reward, f32 and
#      bf16, a row per response and packed pairs, against the transformers goldens;
#   3. throughput against transformers (bf16, sdpa, TRL-style batches) on Llama-3-8B layer
#      shapes, both packings, each run twice (the first compiles and autotunes the kernels),
#      with the GPU's peak memory;
#   4. the command line's sums against transformers bf16 on the same GPU (two fixture models);
#   5. the start-up refusal of a batch the GPU cannot hold, with the driver's free memory.
#
# The GPU host needs CUDA (driver, NVRTC, headers) and python3 with torch, transformers,
# tokenizers and pyarrow; no Rust. Build on a machine with Rust and carry the binaries over:
#
#   export CUDARC_CUDA_VERSION=12080
#   cargo build --release --features cuda
#   cargo test --release -p apscore-worker --features cuda --test cuda --no-run   # prints its path
#   mkdir -p .gpu && cp target/release/apscore .gpu/apscore && cp <that path> .gpu/cuda-tests
#   bash benches/gpu.sh            # on the GPU host, from the repository root
#
# Binaries may be carried gzipped (.gpu/apscore.gz, .gpu/cuda-tests.gz). Each step has its own
# time limit, so one that hangs or fails leaves the others' figures; GPU_STEPS picks the steps,
# their order and limits (below). A fresh GPU spends its first minutes tuning kernels: carry the
# last host's tuning as .gpu/kernels.tgz (this run leaves its own as $OUT/kernels.tgz). Writes
# its log to ${OUT:-/tmp}/gpu-bench.log as well as stdout.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
LOG=${OUT:-/tmp}/gpu-bench.log
WORK=${GPU_WORK:-/tmp/apscore-gpu}
mkdir -p "$WORK"

# The binaries, unpacked where they were carried gzipped.
for name in apscore cuda-tests; do
  if [ -f ".gpu/$name.gz" ]; then
    gzip -dc ".gpu/$name.gz" > "$WORK/$name" && chmod +x "$WORK/$name"
  elif [ -f ".gpu/$name" ]; then
    cp ".gpu/$name" "$WORK/$name"
  fi
done
BIN=${APSCORE:-$WORK/apscore}
TESTS=$WORK/cuda-tests

# CUDA's headers (CubeCL compiles its kernels with NVRTC at run time and includes them) and
# NVRTC itself, which cudarc opens by its unversioned name or the major version it was built
# for: a newer toolkit's versioned file gets a link of that name in a folder of our own.
if [ -z "${CUDA_PATH:-}" ]; then
  for dir in /usr/local/cuda /usr/local/cuda-* "$(dirname "$(dirname "$(command -v nvcc)")")"; do
    [ -f "$dir/include/cuda.h" ] && { export CUDA_PATH=$dir; break; }
  done
fi
find_nvrtc() { find "$@" -name 'libnvrtc.so*' -not -name '*builtins*' -not -path '*/stubs/*' 2>/dev/null | sort -V | tail -1; }
nvrtc=$(find_nvrtc "${CUDA_PATH:-/usr/local/cuda}/")
[ -n "$nvrtc" ] || nvrtc=$(find_nvrtc /usr/lib/x86_64-linux-gnu /usr/local/lib /opt)
mkdir -p "$WORK/lib"
if [ -n "$nvrtc" ]; then
  ln -sf "$nvrtc" "$WORK/lib/libnvrtc.so"
  LD_LIBRARY_PATH=$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# cudarc opens `libcuda.so` first: where that name is the toolkit's stub (its calls fail with
# CUDA_ERROR_STUB_LIBRARY), the driver's own libcuda.so.1 must come first.
driver=$(ls /usr/local/nvidia/lib64/libcuda.so.1 2>/dev/null || ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
[ -n "$driver" ] && ln -sf "$driver" "$WORK/lib/libcuda.so"
export LD_LIBRARY_PATH=$WORK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The kernel tuning (autotune results: apscore's --kernel-cache) is kept in one folder for
# every step, so each starts with what the steps before it measured; an earlier host's
# results, carried as .gpu/kernels.tgz, start the first.
export APSCORE_KERNEL_CACHE=$WORK/kernels
mkdir -p "$APSCORE_KERNEL_CACHE"
[ -f .gpu/kernels.tgz ] && tar xzf .gpu/kernels.tgz -C "$APSCORE_KERNEL_CACHE"
# The tests read the fixtures where they were built (CARGO_MANIFEST_DIR: /work/main/worker by
# default); a link puts this checkout there.
built_at=${APSCORE_BUILT_AT:-/work/main}
if [ ! -e "$built_at/tests/fixtures" ]; then
  mkdir -p "$(dirname "$built_at")" && ln -sfn "$PWD" "$built_at"
fi

# The steps, in order, each as name or name:seconds (GPU_STEPS="bench:480 tests:60" spends a
# short lease on throughput first); the bench's pairs and packings.
GPU_STEPS=${GPU_STEPS:-smoke tests bench parity refusal}
BENCH_PAIRS=${BENCH_PAIRS:-256}
BENCH_PACKING=${BENCH_PACKING:-separate,shared-prefix}
limit_of() {
  local planned=$1
  if [ "${planned#*:}" != "$planned" ]; then echo "${planned#*:}"; return; fi
  case $planned in smoke) echo 50 ;; tests) echo 110 ;; bench) echo 300 ;; parity) echo 50 ;; *) echo 30 ;; esac
}

# transformers' progress bars would fill the log.
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1

step() {
  local limit=$1; shift
  echo
  echo "== $* (limit ${limit} s)"
  local started=$SECONDS
  timeout "$limit" "$@"
  local status=$?
  echo "== exit $status after $((SECONDS - started)) s"
}

# One step by name, under its time limit.
run_step() {
  local name=$1 limit=$2
  case $name in
    smoke)
      step "$limit" env RUST_LOG=apscore=info,apscore_worker::scorer=debug "$BIN" run -i tests/fixtures/pairs.parquet \
        -m tests/fixtures/models/llama-gqa -o "$WORK/smoke" --overwrite --device cuda --max-length 128 --max-prompt-length 96 ;;
    tests)
      # Correctness only: coarser shape rounding, so fewer shapes are tuned (the same results).
      step "$limit" env CUBECL_AUTOTUNE_LEVEL=minimal "$TESTS" --include-ignored --test-threads 1 --nocapture ;;
    bench)
      # Each forward batch's shape and time is logged: a process's tuning shows apart from
      # its steady batches.
      step "$limit" python3 benches/model_bench.py --apscore "$BIN" --device cuda --dtype bf16 \
        --shape llama3-8b-4l --pairs "$BENCH_PAIRS" --batch-tokens 32768 --reference-batch-pairs 8 \
        --peak-gflops 989000 --packing "$BENCH_PACKING" --apscore-runs 2 --work "$WORK/bench" \
        --apscore-log apscore=warn,apscore_worker::scorer=debug ;;
    parity)
      step "$limit" python3 benches/gpu_parity.py --apscore "$BIN" --models llama-gqa,gemma2-tiny ;;
    refusal)
      # A batch no GPU holds: refused at start-up with the arithmetic and the driver's free
      # memory (on the bench's checkpoint, made by the bench step).
      if [ -f "$WORK/bench/llama3-8b-4l-bf16/config.json" ]; then
        step "$limit" "$BIN" run -i "$WORK/bench/pairs-$BENCH_PAIRS.parquet" -m "$WORK/bench/llama3-8b-4l-bf16" \
          -o "$WORK/refused" --overwrite --device cuda --dtype bf16 --batch-tokens 40000000
      else
        echo "== refusal skipped: the bench step made no checkpoint"
      fi ;;
    *) echo "== unknown step $name (smoke, tests, bench, parity, refusal)" ;;
  esac
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv,noheader
  echo "driver ${driver:-not found}; CUDA_PATH=${CUDA_PATH:-unset} NVRTC=${nvrtc:-not found}; $(ls -d "${CUDA_PATH:-/none}"/include/cccl 2>/dev/null || echo 'no include/cccl')"
  "$BIN" --version
  # The GPU's use every 15 s, between the steps' lines: tuning shows as short bursts, steady
  # scoring as a busy GPU.
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 15 | sed -u 's/^/   gpu use, memory: /' &
  sampler=$!
  for planned in $GPU_STEPS; do
    run_step "${planned%%:*}" "$(limit_of "$planned")"
  done
  kill "$sampler" 2>/dev/null
  date -u
} 2>&1 | tee "$LOG"
# The kernel tuning, for the next host: carry it back as .gpu/kernels.tgz.
tar czf "${OUT:-/tmp}/kernels.tgz" -C "$APSCORE_KERNEL_CACHE" .
