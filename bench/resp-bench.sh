#!/usr/bin/env bash
# redis-benchmark against redis-server and against corekv over the Redis
# protocol (a local 3-node `corekv dev`), side by side in one run: GET and
# SET, 50 connections, pipelines of 1 and 16. Prints one line per run with
# the server CPU per request (all server processes, from /proc).
#
#   bench/resp-bench.sh [requests per run, default 100000]
#
# Needs redis-server and redis-benchmark (Debian redis-server, redis-tools)
# and the release binaries (cargo build --release --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-target}/release"
N="${1:-100000}"
REDIS_PORT=16379
BASE=17100
work=$(mktemp -d)
cleanup() {
    kill "${DEV:-}" "${RS:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ticks() { # utime+stime of the given pids, in clock ticks
    local s=0 f
    for p in "$@"; do
        read -r -a f <"/proc/$p/stat"
        s=$((s + f[13] + f[14]))
    done
    echo "$s"
}
redis-server --port "$REDIS_PORT" --save '' --appendonly no >"$work/redis.log" 2>&1 &
RS=$!
sleep 0.5
kill -0 "$RS" 2>/dev/null || { echo "redis-server did not start (port $REDIS_PORT taken?): $(cat "$work/redis.log")" >&2; exit 1; }
"$T/corekv" dev --base-port "$BASE" --data-dir "$work/dev" >"$work/dev.out" 2>"$work/dev.err" &
DEV=$!
for _ in $(seq 120); do grep -q '^ready' "$work/dev.out" && break; sleep 0.5; done
grep -q '^ready' "$work/dev.out" || { echo "corekv dev did not start: $(cat "$work/dev.err")" >&2; exit 1; }
sleep 3 # leaders settle on their preferred nodes
CK=()
for p in $(pgrep -x corekv-server); do
    tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "$work/dev" && CK+=("$p")
done
[ "${#CK[@]}" -eq 3 ] || { echo "expected 3 corekv-server processes, found ${#CK[@]}" >&2; exit 1; }
hz=$(getconf CLK_TCK)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(redis-server --version | awk '{print $1, $3}')"
echo "server | test | requests/s | p50 ms | server CPU µs/request"
for P in 1 16; do
    for t in get set; do
        for who in redis corekv; do
            if [ "$who" = redis ]; then port=$REDIS_PORT; pids=("$RS"); else port=$((BASE + 201)); pids=("${CK[@]}"); fi
            c0=$(ticks "${pids[@]}")
            line=$(redis-benchmark -p "$port" -t "$t" -n "$N" -c 50 -P "$P" -q 2>&1 | tr '\r' '\n' | grep 'requests per second' | tail -1)
            c1=$(ticks "${pids[@]}")
            rps=$(echo "$line" | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')
            p50=$(echo "$line" | sed -E 's/.*p50=([0-9.]+) msec.*/\1/')
            cpu=$(awk -v d=$((c1 - c0)) -v hz="$hz" -v n="$N" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
            echo "$who | ${t^^} -P $P -c 50 | $rps | $p50 | $cpu"
        done
    done
done
