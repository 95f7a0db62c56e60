#!/usr/bin/env bash
# Instructions per request of a seckill binary, counted by callgrind: the
# same for the same binary and input whatever else the machine is doing, so
# two builds compare on a shared, noisy machine where CPU time cannot.
#
#   bench/callgrind/run.sh BINARY [STRATEGY] [N]
#
# STRATEGY: a purchase strategy (default lua), or `healthz`. Runs the server
# under callgrind twice on a fresh redis-server and SQLite file, once with no
# request and once with N (default 4000) over 8 connections, persistence on,
# RUST_LOG=warn unless set; prints the difference per request. The profile of
# the loaded run stays in $OUT_DIR (default a temporary directory) for
# callgrind_annotate. Needs valgrind, redis-server, redis-cli, curl, python3.
set -euo pipefail
bin=$(realpath "$1")
strategy=${2:-lua}
n=${3:-4000}
here=$(cd "$(dirname "$0")" && pwd)
out_dir=${OUT_DIR:-$(mktemp -d)}

total() { # requests -> instructions of the whole server run
    local requests=$1 dir redis_port http_port server
    dir=$(mktemp -d)
    redis_port=$((20000 + RANDOM % 20000))
    http_port=$((40000 + RANDOM % 10000))
    redis-server --port "$redis_port" --save '' --appendonly no --daemonize yes \
        --dir "$dir" --logfile "$dir/redis.log"
    REDIS_URL="redis://127.0.0.1:$redis_port" DATABASE_URL="sqlite://$dir/db.sqlite" \
        LISTEN="127.0.0.1:$http_port" RUST_LOG="${RUST_LOG:-warn}" \
        valgrind --tool=callgrind --callgrind-out-file="$out_dir/$strategy-$requests.out" \
        "$bin" serve >"$dir/server.log" 2>&1 &
    server=$!
    # A failed load must not leave the server and its Redis behind.
    trap "kill $server 2>/dev/null; redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1" EXIT
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -sf -X PUT "http://127.0.0.1:$http_port/api/items/cg" -H 'content-type: application/json' \
        -d '{"stock":1000000000,"per_user_limit":1}' >/dev/null
    python3 "$here/load.py" "$http_port" cg "$strategy" "$requests" 8 >&2
    sleep 2 # the persister catches up
    kill -TERM "$server"
    wait "$server" || true
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    trap - EXIT
    grep -h '^summary:' "$out_dir/$strategy-$requests.out" | awk '{print $2}'
}

idle=$(total 0)
loaded=$(total "$n")
echo "$strategy: $(( (loaded - idle) / n )) instructions per request ($loaded - $idle over $n); profile: $out_dir/$strategy-$n.out"
