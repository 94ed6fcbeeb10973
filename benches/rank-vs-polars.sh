#!/usr/bin/env bash
# Benchmark, not a test: `apscore rank` against its polars equivalent (benches/polars_rank.py)
# on the same files, run in turn RUNS times after a warm-up of each. Two datasets:
#   - ROWS (default 10 million) pre-scored rows without text;
#   - TEXT_ROWS (default 1 million) pre-scored UltraFeedback-like rows with their text, each
#     text TEXT_LENGTH times the sample's default length (default 1: ~2.3 KB of text a row;
#     3 gives ~6.9 KB, an UltraFeedback-binarized row's size). NO_TEXT=0 skips the first set.
# Prints each run's wall seconds and peak memory, the medians, the ratio apscore / polars, and
# the bytes each writes against the input's. With SAME_OUTPUTS=1, a third contender: polars
# writing the same tables with the same columns as apscore (benches/polars_rank_same_outputs.py;
# it holds everything in memory: about 6 GB on the 10 M rows).
#
#   bash benches/rank-vs-polars.sh           # ROWS=1000000 TEXT_ROWS=100000 RUNS=3 SAME_OUTPUTS=1 bash …
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
TEXT_ROWS=${TEXT_ROWS:-1000000}
RUNS=${RUNS:-3}
SAME_OUTPUTS=${SAME_OUTPUTS:-0}
TEXT_LENGTH=${TEXT_LENGTH:-1}
NO_TEXT=${NO_TEXT:-1}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/apscore
fi
python3 -c 'import polars' 2>/dev/null || { echo "python3 with polars is needed (pip install polars)" >&2; exit 1; }
work=${WORK:-$(mktemp -d)}
trap '[ -z "${WORK:-}" ] && rm -rf "$work"' EXIT

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
bytes() { du -sb "$1" | cut -f1; }

# one NAME DATA OUT COMMAND...: one timed run; appends "seconds kib" to $work/NAME.times.
one() {
  local name=$1 out=$3; shift 3
  rm -rf "$out"
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
  cat "$work/time" >> "$work/$name.times"
}

# compare LABEL DATA: apscore and polars in turn on DATA.
compare() {
  local label=$1 data=$2
  local a="$work/out-apscore-$label" p="$work/out-polars-$label" s="$work/out-polars-same-$label"
  : > "$work/apscore-$label.times"; : > "$work/polars-$label.times"; : > "$work/polars-same-$label.times"
  # Warm-up (page cache, Python imports), not counted.
  "$BIN" -q rank --input "$data" --output "$a" >/dev/null
  python3 benches/polars_rank.py "$data" "$p" >/dev/null
  for _ in $(seq "$RUNS"); do
    one "apscore-$label" "$data" "$a" "$BIN" -q rank --input "$data" --output "$a"
    one "polars-$label" "$data" "$p" python3 benches/polars_rank.py "$data" "$p"
    if [ "$SAME_OUTPUTS" = 1 ]; then
      one "polars-same-$label" "$data" "$s" python3 benches/polars_rank_same_outputs.py "$data" "$s"
    fi
  done
  local as ak ps pk
  as=$(cut -d' ' -f1 "$work/apscore-$label.times" | median)
  ak=$(cut -d' ' -f2 "$work/apscore-$label.times" | median)
  ps=$(cut -d' ' -f1 "$work/polars-$label.times" | median)
  pk=$(cut -d' ' -f2 "$work/polars-$label.times" | median)
  echo "$label: apscore runs (s, KiB): $(tr '\n' ' ' < "$work/apscore-$label.times")"
  echo "$label: polars  runs (s, KiB): $(tr '\n' ' ' < "$work/polars-$label.times")"
  awk -v as="$as" -v ak="$ak" -v ps="$ps" -v pk="$pk" -v label="$label" 'BEGIN {
    printf "%s: median apscore %.2f s, peak %.0f MiB; polars %.2f s, peak %.0f MiB; wall ratio apscore/polars %.2f\n",
           label, as, ak / 1024, ps, pk / 1024, as / ps }'
  awk -v i="$(bytes "$data")" -v a="$(bytes "$a")" -v p="$(bytes "$p")" -v label="$label" 'BEGIN {
    printf "%s: input %.0f MB; apscore writes %.0f MB (%.2f of the input), polars %.0f MB (%.2f)\n",
           label, i / 1e6, a / 1e6, a / i, p / 1e6, p / i }'
  if [ "$SAME_OUTPUTS" = 1 ]; then
    local ss sk
    ss=$(cut -d' ' -f1 "$work/polars-same-$label.times" | median)
    sk=$(cut -d' ' -f2 "$work/polars-same-$label.times" | median)
    echo "$label: polars, same outputs, runs (s, KiB): $(tr '\n' ' ' < "$work/polars-same-$label.times")"
    awk -v as="$as" -v ss="$ss" -v sk="$sk" -v s="$(bytes "$s")" -v label="$label" 'BEGIN {
      printf "%s: polars writing apscore'"'"'s outputs: median %.2f s, peak %.0f MiB, writes %.0f MB; wall ratio apscore/polars %.2f\n",
             label, ss, sk / 1024, s / 1e6, as / ss }'
  fi
}

if [ "$NO_TEXT" = 1 ]; then
  if [ ! -d "$work/data" ]; then
    echo "generating $ROWS rows without text ..."
    "$BIN" -q sample --output "$work/data" --rows "$ROWS" --files 10 --row-group-rows 100000 --with-logps --no-text >/dev/null
  fi
  compare no-text "$work/data"
fi
text="$work/text"
if [ "$TEXT_LENGTH" != 1 ]; then text="$work/text-x$TEXT_LENGTH"; fi
if [ ! -d "$text" ]; then
  echo "generating $TEXT_ROWS rows with text (length x$TEXT_LENGTH) ..."
  "$BIN" -q sample --output "$text" --rows "$TEXT_ROWS" --files 10 --row-group-rows 10000 \
    --with-logps --text-length "$TEXT_LENGTH" >/dev/null
fi
compare "$(basename "$text")" "$text"
