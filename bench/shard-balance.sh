#!/usr/bin/env bash
# Two regions on one core: linearizable read throughput of a 1-node cluster
# with 2 shards whose 2 regions were both put on shard 0, with the placement
# driver off (they stay there) and on (it spreads them over both shards).
# Usage: bench/shard-balance.sh [SECONDS]   (needs `cargo build --release --bins`)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
secs="${1:-12}"
ep=127.0.0.1:7601
pid=""
dir=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [ -n "$dir" ]; then rm -rf "$dir"; fi
    pid=""
    dir=""
}
trap cleanup EXIT

run() {
    local moves="$1"
    dir="$(mktemp -d)"
    "$bin/corekv" dev --nodes 1 --shards 2 --regions 2 --base-port 7600 --data-dir "$dir/data" \
        -- --placement-moves-per-min "$moves" >"$dir/dev.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        "$bin/corekv" --endpoints "$ep" ctl regions >/dev/null 2>&1 && break
        sleep 0.1
    done
    # Preload the keys, then put region 2 on shard 0 beside region 1.
    "$bin/corekv-bench" --endpoints "$ep" --workload write-only --keys 10000 \
        --duration 1 --warmup 0 >/dev/null 2>&1
    "$bin/corekv" --endpoints "$ep" ctl move-shard 2 1 0 >&2
    local json
    json="$("$bin/corekv-bench" --endpoints "$ep" --workload read-only --keys 10000 --no-preload \
        --connections 4 --pipeline 512 --duration "$secs" --warmup 0 --json | tail -1)"
    local shards
    shards="$("$bin/corekv" --endpoints "$ep" ctl regions --json |
        python3 -c 'import json,sys; print(",".join(str(r["shard"]) for r in json.load(sys.stdin)))')"
    local ops
    ops="$(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["ops_per_sec"]))')"
    echo "| $moves | $ops | $shards |"
    cleanup
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "read-only, linearizable, 4 clients x 512 in flight, ${secs} s, 1 node, 2 shards, regions 1 and 2 both put on shard 0 first"
echo
echo "| --placement-moves-per-min | ops/s | shards of regions 1,2 at the end |"
echo "|---|---|---|"
run 0
run 60
