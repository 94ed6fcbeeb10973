#!/usr/bin/env bash
# Scale check of the distributed job: one coordinator and 100 concurrent workers (4 worker
# processes × 25 slots) on loopback over 10,000 shards of precomputed log-probs (no model), so
# what is measured is the coordination itself. Prints the coordinator's CPU time per shard and
# the cluster's wall time against a single-process `apscore rank` of the same data.
#
#   cargo build --release && bash benches/coordinator_scale.sh [SHARDS] [WORKER_PROCS] [SLOTS]
#
# Not part of CI (it takes minutes on 2 cores). Figures: docs/performance.md.
set -euo pipefail

SHARDS=${1:-10000}
PROCS=${2:-4}
SLOTS=${3:-25}
BIN=${APSCORE:-target/release/apscore}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
export RUST_LOG=warn

echo "data: $SHARDS row groups of 10 rows (no text, with log-probs)"
"$BIN" sample -q -o "$DIR/data" --rows $((SHARDS * 10)) --files 10 --row-group-rows 10 \
  --with-logps --no-text >/dev/null

echo "single process: apscore rank (one worker per core)"
/usr/bin/time -f "%e %U %S" -o "$DIR/single.time" \
  "$BIN" rank -q -i "$DIR/data" -o "$DIR/single" --shard-rows 10 >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "cluster: 1 coordinator + $PROCS worker processes × $SLOTS slots on 127.0.0.1:$PORT"
start=$(date +%s.%N)
/usr/bin/time -f "%e %U %S" -o "$DIR/coordinator.time" \
  "$BIN" coordinator -q -i "$DIR/data" -o "$DIR/cluster" --shard-rows 10 \
  --listen "127.0.0.1:$PORT" >/dev/null &
coordinator=$!
for _ in $(seq "$PROCS"); do
  "$BIN" worker -q --coordinator "http://127.0.0.1:$PORT" --slots "$SLOTS" >/dev/null &
done
wait $coordinator
end=$(date +%s.%N)
wait

python3 - "$DIR" "$SHARDS" "$start" "$end" <<'PY'
import json, sys
d, shards, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
def times(name):
    wall, user, sys_ = map(float, open(f"{d}/{name}.time").read().split()[-3:])
    return wall, user + sys_
single_wall, single_cpu = times("single")
coord_wall, coord_cpu = times("coordinator")
summary = json.load(open(f"{d}/cluster/summary.json"))
assert summary["counts"]["shards"] == shards, summary["counts"]
t = summary["timings_s"]
print(f"shards:                       {shards}")
print(f"workers registered:           {summary['shards']['workers']}")
scoring_cpu = summary["shards"]["scoring_cpu_s"]
print(f"coordinator CPU, whole job:   {coord_cpu:.2f} s (plan, lease 10,000 shards, merge, rank, write)")
print(f"coordinator CPU, scoring:     {scoring_cpu:.2f} s = {1000 * scoring_cpu / shards:.3f} ms per shard (leases, heartbeats, completions, manifest)")
print(f"phases (wall):                plan {t['plan']:.2f} s, scoring {t['score']:.2f} s, finishing {t['rank'] + t['write']:.2f} s")
print(f"cluster wall:                 {end - start:.2f} s")
print(f"single-process wall:          {single_wall:.2f} s (CPU {single_cpu:.2f} s)")
print(f"cluster / single wall:        {(end - start) / single_wall:.2f}")
PY
