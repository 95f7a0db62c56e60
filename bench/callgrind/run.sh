#!/usr/bin/env bash
# Instructions per request of a seckill binary, counted by callgrind: the
# same for the same binary and input whatever else the machine is doing, so
# two builds compare on a shared, noisy machine where CPU time cannot.
#
#   bench/callgrind/run.sh BINARY [STRATEGY] [N]
#
# STRATEGY: a purchase strategy (default lua), or `healthz`; KEYED=1 gives
# each purchase its own Idempotency-Key. STRATEGY `reference` with BINARY
# target/release/examples/reference counts examples/reference.rs's purchase
# (one handler, one EVALSHA: no order id, log or SQL), the floor any
# seckill purchase stands on. Runs the server
# under callgrind twice on a fresh redis-server and SQLite file, once with no
# request and once with N (default 4000) over 8 connections, persistence on,
# RUST_LOG=warn unless set; prints the difference per request. The profile of
# the loaded run stays in $OUT_DIR (default a temporary directory) for
# callgrind_annotate. Needs valgrind, redis-server, redis-cli, curl, python3.
set -euo pipefail
# `total` runs in a command substitution, where bash drops `set -e` unless told.
shopt -s inherit_errexit
bin=$(realpath "$1")
strategy=${2:-lua}
n=${3:-4000}
here=$(cd "$(dirname "$0")" && pwd)
out_dir=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$out_dir"

. "$here/../lib.sh"

start_reference() { # DIR WRAPPER...: lib.sh's start_sale, for the reference
    local dir=$1
    shift
    redis_port=$(free_port 20000 20000)
    http_port=$(free_port 40000 10000)
    redis-server --port "$redis_port" --save '' --appendonly no --daemonize yes \
        --dir "$dir" --logfile "$dir/redis.log"
    "$@" "$bin" "127.0.0.1:$http_port" "redis://127.0.0.1:$redis_port" >"$dir/server.log" 2>&1 &
    server=$!
    trap stop_sale EXIT
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the reference never answered; its log: $dir/server.log" >&2
    return 1
}

total() { # requests -> instructions of the whole server run
    local requests=$1 dir
    dir=$(mktemp -d)
    local profile=(valgrind --tool=callgrind --callgrind-out-file="$out_dir/$strategy-$requests.out")
    if [ "$strategy" = reference ]; then
        start_reference "$dir" "${profile[@]}"
    else
        start_sale "$dir" cg "${profile[@]}"
    fi
    python3 "$here/load.py" "$http_port" cg "$strategy" "$requests" 8 ${KEYED:+keyed} >&2
    sleep 2 # the persister catches up
    # The reference has no graceful shutdown: SIGTERM ends it, and callgrind
    # writes its profile on the way out.
    stop_sale
    grep -h '^summary:' "$out_dir/$strategy-$requests.out" | awk '{print $2}'
}

idle=$(total 0)
loaded=$(total "$n")
echo "$strategy: $(( (loaded - idle) / n )) instructions per request ($loaded - $idle over $n); profile: $out_dir/$strategy-$n.out"
