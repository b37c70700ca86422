#!/usr/bin/env bash
# The CPU an idle cluster costs: starts `corekv dev` (3 nodes, default
# settings) with the given region count, leaves it alone for a settle time,
# then measures the server processes' user+system CPU over a window, from
# /proc/<pid>/stat. Prints one line per node and the total, as % of one core.
#
#   bench/idle-cpu.sh [regions (8)] [settle s (20)] [window s (10)] [extra dev args...]
#
# Binaries from $COREKV_BIN (default: target/release under $CARGO_TARGET_DIR
# or ./target). Data goes to a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
regions="${1:-8}"
settle="${2:-20}"
window="${3:-10}"
shift $(( $# < 3 ? $# : 3 ))
bin="${COREKV_BIN:-${CARGO_TARGET_DIR:-target}/release}"
data="$(mktemp -d /tmp/corekv-idle.XXXXXX)"
log="$data/dev.log"
base="${IDLE_BASE_PORT:-17400}"
"$bin/corekv" dev --data-dir "$data/cluster" --base-port "$base" --regions "$regions" "$@" \
    >"$log" 2>&1 &
dev=$!
cleanup() {
    kill "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
    grep -q "ready" "$log" && break
    kill -0 "$dev" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
done
grep -q "ready" "$log" || { echo "cluster not ready" >&2; cat "$log" >&2; exit 1; }
sleep "$settle"
pids=$(pgrep -P "$dev" -f corekv-server || true)
[ -n "$pids" ] || { echo "no server processes found" >&2; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A before
for p in $pids; do before[$p]=$(ticks "$p"); done
sleep "$window"
hz=$(getconf CLK_TCK)
total=0
for p in $pids; do
    used=$(( $(ticks "$p") - ${before[$p]} ))
    total=$(( total + used ))
    awk -v u="$used" -v hz="$hz" -v w="$window" -v p="$p" \
        'BEGIN { printf "node pid %d: %.2f%% of a core\n", p, 100 * u / hz / w }'
done
awk -v u="$total" -v hz="$hz" -v w="$window" -v r="$regions" -v n="$(echo "$pids" | wc -w)" \
    'BEGIN { printf "regions %d: %.2f%% of a core for %d nodes (%.2f%% per node)\n", r, 100 * u / hz / w, n, 100 * u / hz / w / n }'
