#!/usr/bin/env bash
# Regenerates docs/benchmarks.md: every workload against corekv (a local
# 3-node cluster started by corekv-bench) and against redis-server
# (appendonly no) on the same machine, in one run, by the same generator.
#
#   bench/run-suite.sh [--duration SECS] [--out FILE]
#
# Needs redis-server and redis-benchmark (Debian: apt-get install redis-server
# redis-tools). Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10
out=docs/benchmarks.md
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

for tool in redis-server redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install redis-server redis-tools)" >&2; exit 1; }
done

cargo build --release --bins >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bench="$target_dir/release/corekv-bench"

# Few connections with deep pipelines: on this kind of machine the cost per
# frame (syscalls, wakeups) dominates, so deeper batches go further.
conns=4
pipeline=512
# 3 nodes share the machine's cores: two shards per node (the cores of
# the machine), clients sending to each region's shard. One shard per node
# is measured beside it ("Shards per node").
shards=2
# Two generator threads, so the generator is not what limits Redis.
threads=2
keys=100000
value=64

redis_port=6399
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$redis_dir" --daemonize no --loglevel warning >"$redis_dir/log" 2>&1 &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true; rm -rf "$redis_dir"' EXIT
for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done

json() { tail -n 1; }
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$1" "$2"; }

common="--duration $duration --warmup 2 --keys $keys --value-size $value --connections $conns --pipeline $pipeline --threads $threads"
declare -A C R
run() { # key target-args... : the command in C[key], its JSON report in R[key]
    local key=$1; shift
    # A run that gives its own client shape replaces the suite's.
    local base=$common
    case " $* " in
        *" --connections "*) base=${common/--connections $conns --pipeline $pipeline /} ;;
    esac
    C[$key]="corekv-bench $base $*"
    echo "== ${C[$key]}" >&2
    # shellcheck disable=SC2086
    R[$key]=$("$bench" $base --json "$@" | json)
}

# Generator check: corekv-bench (which first writes every key) and
# redis-benchmark against the same Redis and the same keys (both name keys
# key:NNNNNNNNNNNN), same connections and pipeline; three rounds, the two
# tools alternated, as single runs on a shared machine move by a third.
run gen-preload --target "redis://127.0.0.1:$redis_port" --workload read-only
gen_rounds=3
gen_cb=()
gen_rb=()
for i in $(seq "$gen_rounds"); do
    run "gen-$i" --target "redis://127.0.0.1:$redis_port" --workload read-only --no-preload
    gen_cb+=("$(field "${R[gen-$i]}" 'int(d["ops_per_sec"])')")
    gen_rb+=("$(redis-benchmark -p "$redis_port" -t get -n 4000000 -c "$conns" -P "$pipeline" -d "$value" -r "$keys" -q \
        | tr '\r' '\n' | grep -E '^GET' | tail -n 1 | sed -E 's/.*: ([0-9]+)[0-9.]* requests.*/\1/')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for w in read-only read-heavy mixed write-only; do
    run "redis-$w" --target "redis://127.0.0.1:$redis_port" --workload "$w"
    run "corekv-$w" --workload "$w" --shards "$shards"
done
run corekv-lease --workload read-only --consistency lease --shards "$shards"
run corekv-stale --workload read-only --consistency stale --shards "$shards"
run corekv-follower --workload read-only --consistency follower --shards "$shards"
for w in read-only write-only; do
    run "one-shard-$w" --workload "$w" --shards 1
done

# One region, before and after it splits by load (issue: hot range on one
# region). The same workload twice on a fresh 1-region cluster: splitting
# off, then on (threshold between the halves' and the whole region's rate,
# so it splits once, during the 20 s warm-up).
split_common="--duration $duration --warmup 20 --keys 10000 --value-size $value --connections $conns --pipeline $pipeline --threads $threads --workload read-heavy --regions 1 --shards 1"
declare -A SPLIT_REGIONS
run_split() { # key server-flags...
    local key=$1; shift
    C[$key]="corekv-bench $split_common -- $*"
    echo "== ${C[$key]}" >&2
    local err
    err=$(mktemp)
    # shellcheck disable=SC2086
    R[$key]=$("$bench" $split_common --json -- "$@" 2>"$err" | json)
    SPLIT_REGIONS[$key]=$(grep -o 'regions at the end: .*' "$err" | sed 's/regions at the end: //')
    rm -f "$err"
}
run_split split-before --split-load-ops 0
run_split split-after --split-load-ops 60000 --split-load-windows 3 --split-cooldown-ms 60000

# Client shapes: many small clients, and the generator's default, beside
# the suite's 4 x 512 (reads, linearizable), each against Redis too.
shapes="16x32 200x1"
for shape in $shapes; do
    c=${shape%x*}; p=${shape#*x}
    run "shape-redis-$shape" --target "redis://127.0.0.1:$redis_port" --workload read-only --connections "$c" --pipeline "$p"
    run "shape-corekv-$shape" --workload read-only --shards "$shards" --connections "$c" --pipeline "$p"
done

# The async client (corekv_client::AsyncClient, one shared instance, its
# tasks sharing pipelined connections) beside the hand-made driver, at the
# two shapes, alternated: driver, async, driver, async.
for shape in $shapes; do
    c=${shape%x*}; p=${shape#*x}
    for i in 1 2; do
        run "client-driver-$shape-$i" --workload read-only --shards "$shards" --connections "$c" --pipeline "$p"
        run "client-async-$shape-$i" --workload read-only --shards "$shards" --connections "$c" --pipeline "$p" --client async
    done
done

# Shard ports: requests sent straight to the shard serving their region
# (default) or to the node's shared client port, whose shard passes on
# those of regions served by the other shard. Two shards per node; the
# placement driver spreads the regions over both.
for n in 1 3; do
    run "ports-$n-on" --workload read-only --nodes "$n" --shards 2
    run "ports-$n-off" --workload read-only --nodes "$n" --shards 2 --no-shard-ports
done

# Authentication and TLS: the same reads and writes with every connection
# logged in (--auth), and with TLS on every port and peer link (--tls),
# beside runs without either, alternated (plain, auth, tls; twice).
for w in read-only write-only; do
    for i in 1 2; do
        run "sec-plain-$w-$i" --workload "$w" --shards "$shards"
        run "sec-auth-$w-$i" --workload "$w" --shards "$shards" --auth
        run "sec-tls-$w-$i" --workload "$w" --shards "$shards" --tls
    done
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
cores=$(nproc)
mem=$(free -g | awk '/Mem:/ {print $2}')
commit=$(git rev-parse --short HEAD)

row() { # key label
    local j=${R[$1]}
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$2" \
        "$(field "$j" 'int(d["ops_per_sec"])')" \
        "$(field "$j" 'int(d["read"]["ops_per_sec"])')" \
        "$(field "$j" 'd["read"]["p99_us"]')" \
        "$(field "$j" 'int(d["write"]["ops_per_sec"])')" \
        "$(field "$j" 'd["write"]["p99_us"]')" \
        "$(field "$j" 'd.get("server_cpu_us_per_op") or "-"')" \
        "$(field "$j" 'sum(d["errors"].values())')"
}

{
    echo "# corekv benchmarks"
    echo
    echo "Generated by \`bench/run-suite.sh\` (commit $commit). Every figure below comes"
    echo "from one run on one machine; regenerate with \`bench/run-suite.sh\`. Where the"
    echo "time goes, and what stands between these figures and the targets, is in"
    echo "\`docs/performance.md\`."
    echo
    echo "- Machine: $cpu, $cores cores, ${mem} GiB RAM, Linux $(uname -r)."
    echo "- corekv: local 3-node cluster on 127.0.0.1 started by \`corekv-bench\`"
    echo "  (\`corekv-server\` defaults, $shards shards per node: 8 regions, 3 replicas,"
    echo "  every replica fsyncs its raft log; a write is acknowledged after a"
    echo "  majority fsynced it). All three nodes and the load generator share the"
    echo "  same $cores cores."
    echo "- Redis: \`redis-server\` $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/'), \`appendonly no\`, no"
    echo "  snapshots, one process, no replication: the upper bound a user compares"
    echo "  against, not an equivalent system (it does not survive a crash and has no"
    echo "  replicas)."
    echo "- Load: \`corekv-bench\`, $conns clients x $pipeline requests in flight,"
    echo "  $keys keys, $value-byte values, uniform keys, ${duration} s measured after 2 s"
    echo "  warm-up, closed loop."
    echo
    echo "## Generator check"
    echo
    echo "Against the same Redis and the same $keys keys (written first), GET,"
    echo "$conns connections, pipeline $pipeline (each tool sends its pipeline in one"
    echo "batch and waits for all answers), $gen_rounds rounds with the tools alternated:"
    echo
    echo "| tool | ops/s, each round | median |"
    echo "|---|---|---|"
    echo "| redis-benchmark | ${gen_rb[*]} | $(median "${gen_rb[@]}") |"
    echo "| corekv-bench | ${gen_cb[*]} | $(median "${gen_cb[@]}") |"
    echo
    echo "corekv-bench / redis-benchmark (medians): $(python3 -c "print(f'{$(median "${gen_cb[@]}")/$(median "${gen_rb[@]}"):.2f}')")"
    echo
    echo "## Results"
    echo
    echo "| run | total ops/s | read ops/s | read p99 µs | write ops/s | write p99 µs | server CPU µs/op | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    for w in read-only read-heavy mixed write-only; do
        row "corekv-$w" "corekv $w (linearizable reads)"
        row "redis-$w" "redis $w"
    done
    row corekv-lease "corekv read-only (lease reads)"
    row corekv-stale "corekv read-only (stale reads)"
    row corekv-follower "corekv read-only (follower reads, linearizable)"
    echo
    echo "Errors (counted by kind in the JSON lines below) are requests in flight"
    echo "at a leader change, answered \`NotLeader\` or \`ProposalDropped\`: the"
    echo "placement driver (on by default) moves a leader or two while the load"
    echo "settles over the nodes. The generator counts them and goes on."
    echo
    echo "Server CPU is the user and system time of the server processes (found by"
    echo "the ports they listen on, so the generator is not counted) over the"
    echo "measured time, per successful operation."
    echo
    echo "## Client shapes (linearizable reads)"
    echo
    echo "| clients x in flight | corekv ops/s | corekv read p99 µs | corekv CPU µs/op | redis ops/s | redis CPU µs/op | corekv / redis |"
    echo "|---|---|---|---|---|---|---|"
    for shape in $shapes 4x512; do
        if [ "$shape" = 4x512 ]; then ck=corekv-read-only; rk=redis-read-only; else ck=shape-corekv-$shape; rk=shape-redis-$shape; fi
        c=$(field "${R[$ck]}" 'd["ops_per_sec"]')
        r=$(field "${R[$rk]}" 'd["ops_per_sec"]')
        echo "| ${shape/x/ x } | $(field "${R[$ck]}" 'int(d["ops_per_sec"])') | $(field "${R[$ck]}" 'd["read"]["p99_us"]') | $(field "${R[$ck]}" 'd.get("server_cpu_us_per_op")') | $(field "${R[$rk]}" 'int(d["ops_per_sec"])') | $(field "${R[$rk]}" 'd.get("server_cpu_us_per_op")') | $(python3 -c "print(f'{$c/$r:.2f}')") |"
    done
    echo
    echo "## The async client beside the driver (linearizable reads)"
    echo
    echo "\`--client async\`: one shared \`AsyncClient\` whose tasks (clients x in flight"
    echo "of them) share one pipelined connection per node and shard port, against the"
    echo "generator's own driver (each client its own connections). Two runs each,"
    echo "alternated."
    echo
    echo "| clients x in flight | driver ops/s | async ops/s | async / driver | driver CPU µs/op | async CPU µs/op | driver p99 µs | async p99 µs |"
    echo "|---|---|---|---|---|---|---|---|"
    for shape in $shapes; do
        d1=${R[client-driver-$shape-1]}; d2=${R[client-driver-$shape-2]}
        a1=${R[client-async-$shape-1]}; a2=${R[client-async-$shape-2]}
        ds="$(field "$d1" 'int(d["ops_per_sec"])'), $(field "$d2" 'int(d["ops_per_sec"])')"
        as="$(field "$a1" 'int(d["ops_per_sec"])'), $(field "$a2" 'int(d["ops_per_sec"])')"
        ratio=$(python3 -c "print(f'{($(field "$a1" 'd["ops_per_sec"]')+$(field "$a2" 'd["ops_per_sec"]'))/($(field "$d1" 'd["ops_per_sec"]')+$(field "$d2" 'd["ops_per_sec"]')):.2f}')")
        echo "| ${shape/x/ x } | $ds | $as | $ratio | $(field "$d1" 'd.get("server_cpu_us_per_op")'), $(field "$d2" 'd.get("server_cpu_us_per_op")') | $(field "$a1" 'd.get("server_cpu_us_per_op")'), $(field "$a2" 'd.get("server_cpu_us_per_op")') | $(field "$d1" 'd["read"]["p99_us"]'), $(field "$d2" 'd["read"]["p99_us"]') | $(field "$a1" 'd["read"]["p99_us"]'), $(field "$a2" 'd["read"]["p99_us"]') |"
    done
    echo
    echo "## Ratios to Redis (same workload, same run)"
    echo
    echo "| workload | corekv / redis |"
    echo "|---|---|"
    for w in read-only read-heavy mixed write-only; do
        c=$(field "${R[corekv-$w]}" 'd["ops_per_sec"]')
        r=$(field "${R[redis-$w]}" 'd["ops_per_sec"]')
        echo "| $w | $(python3 -c "print(f'{$c/$r:.2f}')") |"
    done
    echo
    echo "## Authentication and TLS"
    echo
    echo "The same workload with every connection logged in (\`--auth\`: root's"
    echo "login, each request checked against its roles) and with TLS on every"
    echo "port and peer link (\`--tls\`: a throwaway CA, TLS 1.3), beside runs"
    echo "with neither; alternated, two runs each, means."
    echo
    echo "| workload | plain ops/s | auth ops/s | auth / plain | TLS ops/s | TLS / plain | server CPU µs/op plain / auth / TLS |"
    echo "|---|---|---|---|---|---|---|"
    for w in read-only write-only; do
        mean_of() { python3 -c "import json,sys; v=[json.loads(a)[sys.argv[1]] for a in sys.argv[2:]]; v=[x for x in v if x is not None]; print(sum(v)/len(v) if v else 0)" "$@"; }
        p=$(mean_of ops_per_sec "${R[sec-plain-$w-1]}" "${R[sec-plain-$w-2]}")
        a=$(mean_of ops_per_sec "${R[sec-auth-$w-1]}" "${R[sec-auth-$w-2]}")
        t=$(mean_of ops_per_sec "${R[sec-tls-$w-1]}" "${R[sec-tls-$w-2]}")
        pc=$(mean_of server_cpu_us_per_op "${R[sec-plain-$w-1]}" "${R[sec-plain-$w-2]}")
        ac=$(mean_of server_cpu_us_per_op "${R[sec-auth-$w-1]}" "${R[sec-auth-$w-2]}")
        tc=$(mean_of server_cpu_us_per_op "${R[sec-tls-$w-1]}" "${R[sec-tls-$w-2]}")
        echo "| $w | $(python3 -c "print(int($p))") | $(python3 -c "print(int($a))") | $(python3 -c "print(f'{$a/$p:.2f}')") | $(python3 -c "print(int($t))") | $(python3 -c "print(f'{$t/$p:.2f}')") | $(python3 -c "print(f'{$pc:.1f} / {$ac:.1f} / {$tc:.1f}')") |"
    done
    echo
    echo "## One hot region, before and after splitting by load"
    echo
    echo "Read-heavy on 10000 keys, all in one region (\`--regions 1\`, 1 shard per"
    echo "node); the second run lets the region split by load during its 20 s"
    echo "warm-up (\`--split-load-ops 60000 --split-load-windows 3\`)."
    echo
    echo "| run | data regions at the end | total ops/s | read p99 µs | write p99 µs | errors |"
    echo "|---|---|---|---|---|---|"
    for k in split-before split-after; do
        j=${R[$k]}
        printf '| %s | %s | %s | %s | %s | %s |\n' "$k" "${SPLIT_REGIONS[$k]}" \
            "$(field "$j" 'int(d["ops_per_sec"])')" \
            "$(field "$j" 'd["read"]["p99_us"]')" \
            "$(field "$j" 'd["write"]["p99_us"]')" \
            "$(field "$j" 'sum(d["errors"].values())')"
    done
    echo
    echo "On this machine the three nodes share the same cores, so moving half the"
    echo "load to a second leader adds raft and network work without adding CPU:"
    echo "splitting by load is off by default and pays on nodes with cores of"
    echo "their own (\`docs/operations.md\`). Errors are requests in flight when a"
    echo "split or a leader move lands inside the measured window."
    echo
    echo "## Shards per node"
    echo
    echo "The same workloads with one shard per node instead of $shards:"
    echo
    echo "| workload | $shards shards: ops/s | p99 µs | 1 shard: ops/s | p99 µs | ratio |"
    echo "|---|---|---|---|---|---|"
    for w in read-only write-only; do
        many=${R[corekv-$w]}
        one=${R[one-shard-$w]}
        kind=read
        [ "$w" = write-only ] && kind=write
        printf '| %s | %s | %s | %s | %s | %s |\n' "$w" \
            "$(field "$many" 'int(d["ops_per_sec"])')" "$(field "$many" "d[\"$kind\"][\"p99_us\"]")" \
            "$(field "$one" 'int(d["ops_per_sec"])')" "$(field "$one" "d[\"$kind\"][\"p99_us\"]")" \
            "$(python3 -c "print(f'{$(field "$many" 'd["ops_per_sec"]')/$(field "$one" 'd["ops_per_sec"]'):.2f}')")"
    done
    echo
    echo "## Shard ports"
    echo
    echo "Read-only (linearizable) with 2 shards per node: each request sent to the"
    echo "port of the shard serving its region on the leader (the default), or to"
    echo "the node's shared client port (\`--no-shard-ports\`), where the shard the"
    echo "connection landed on passes on the requests of the other shard's regions."
    echo
    echo "| nodes x shards | to the region's shard: ops/s | read p99 µs | to the shared port: ops/s | read p99 µs | ratio |"
    echo "|---|---|---|---|---|---|"
    for n in 1 3; do
        on=${R[ports-$n-on]}
        off=${R[ports-$n-off]}
        printf '| %s x 2 | %s | %s | %s | %s | %s |\n' "$n" \
            "$(field "$on" 'int(d["ops_per_sec"])')" "$(field "$on" 'd["read"]["p99_us"]')" \
            "$(field "$off" 'int(d["ops_per_sec"])')" "$(field "$off" 'd["read"]["p99_us"]')" \
            "$(python3 -c "print(f'{$(field "$on" 'd["ops_per_sec"]')/$(field "$off" 'd["ops_per_sec"]'):.2f}')")"
    done
    echo
    echo "All shards of all nodes and the generator share the machine's $cores cores;"
    echo "figures on this shared machine vary by up to a third from run to run"
    echo "(\`docs/performance.md\` has repeated runs)."
    echo
    echo "## Commands"
    echo
    echo "Each run above, as \`bench/run-suite.sh\` ran it (the corekv runs start their"
    echo "own local cluster):"
    echo
    echo '```'
    for k in $(printf '%s\n' "${!C[@]}" | sort); do echo "$k: ${C[$k]}"; done
    echo "redis-benchmark: redis-benchmark -p $redis_port -t get -n 4000000 -c $conns -P $pipeline -d $value -r $keys -q"
    echo '```'
    echo
    echo "## Raw reports"
    echo
    echo '```'
    for k in $(printf '%s\n' "${!R[@]}" | sort); do echo "$k ${R[$k]}"; done
    echo '```'
} >"$out"
echo "wrote $out" >&2
