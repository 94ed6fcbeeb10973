#!/usr/bin/env bash
# Benchmark, not a test: `apscore rank` on ROWS (default 10 million) generated rows that carry
# precomputed log-probs and no text. Prints end-to-end rows/s and peak memory per row for each
# run, their medians, and — when python3 has pyarrow and numpy — the same figures for the
# reference selection (benches/reference_rank.py) on the same files, with the ratio.
#
#   bash benches/rank-10m.sh            # ROWS=1000000 RUNS=5 bash benches/rank-10m.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
RUNS=${RUNS:-3}
cargo build --release --quiet
bin=$PWD/target/release/apscore
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "generating $ROWS rows (10 files, 100k-row groups) in $work ..."
"$bin" -q sample --output "$work/data" --rows "$ROWS" --files 10 --row-group-rows 100000 --with-logps --no-text >/dev/null

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# time_runs NAME COMMAND... : runs the command RUNS times, prints each run and the medians.
time_runs() {
  local name=$1; shift
  : > "$work/$name.times"
  for i in $(seq "$RUNS"); do
    rm -rf "$work/out-$name"
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
    read -r seconds kib < "$work/time"
    awk -v s="$seconds" -v k="$kib" -v n="$ROWS" -v name="$name" -v i="$i" 'BEGIN {
      printf "%-10s run %d: %6.2f s  %10.0f rows/s  peak %6.0f MiB = %5.1f bytes/row\n",
             name, i, s, n / s, k / 1024, k * 1024 / n }'
    echo "$seconds $kib" >> "$work/$name.times"
  done
  local s k
  s=$(cut -d' ' -f1 "$work/$name.times" | median)
  k=$(cut -d' ' -f2 "$work/$name.times" | median)
  awk -v s="$s" -v k="$k" -v n="$ROWS" -v name="$name" 'BEGIN {
    printf "%-10s median: %6.2f s  %10.0f rows/s  peak %6.0f MiB = %5.1f bytes/row\n",
           name, s, n / s, k / 1024, k * 1024 / n }'
  echo "$s" > "$work/$name.median"
}

time_runs apscore "$bin" -q rank --input "$work/data" --output "$work/out-apscore"
if python3 -c 'import pyarrow, numpy' 2>/dev/null; then
  time_runs reference python3 benches/reference_rank.py "$work/data" "$work/out-reference"
  awk -v a="$(cat "$work/apscore.median")" -v r="$(cat "$work/reference.median")" \
    'BEGIN { printf "apscore / reference wall time: %.2f (below 1: apscore is faster)\n", a / r }'
else
  echo "(python3 with pyarrow and numpy not found: no reference run)"
fi
