#!/usr/bin/env bash
# What one `lua` purchase costs Redis, and how much of it is the commands
# themselves: redis-benchmark sends EVALSHA with purchase.lua's keys and
# arguments (a new buyer each, 16 connections, no pipelining) to a private
# redis-server, for four scripts in turn:
#   empty      `return {0, 1}`: the price of an EVALSHA that does nothing
#   reference  the issue's reference purchase (examples/reference.lua): GET, DECR
#   six-calls  purchase.lua's six commands with none of its checks
#   purchase   the real script (integer.lua + purchase.lua)
# and prints INFO commandstats' microseconds per EVALSHA and Redis's CPU per
# request from /proc (which adds reading and answering the connections).
#
#   bench/redis/floor.sh [REQUESTS] [ROUNDS]
#
# REQUESTS per script (default 300000), ROUNDS alternations (default 2): the
# machine's noise is some ±20% between runs. Needs redis-server, redis-cli,
# redis-benchmark, awk.
set -euo pipefail
requests=${1:-300000}
rounds=${2:-2}
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../../src/strategy"

. "$here/../lib.sh"
port=

stop_redis() {
    if [ -n "$port" ]; then
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
    port=
}
# However the script ends (an error, Ctrl-C), no redis-server is left behind.
trap stop_redis EXIT

one() { # name script-text
    local pid sha t0 t1
    port=$(free_port 20000 20000)
    redis-server --port "$port" --save '' --appendonly no --daemonize yes --logfile /dev/null
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" set s 1000000000 >/dev/null
    redis-cli -p "$port" hset m per_user_limit 1 generation 7 strategy lua >/dev/null
    sha=$(redis-cli -p "$port" script load "$2")
    pid=$(redis-cli -p "$port" info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    redis-benchmark -p "$port" -n "$requests" -c 16 -r 1000000000 -q \
        evalsha "$sha" 4 s m b o u__rand_int__ "7181234567890123 u__rand_int__ lua 1764200000000 " lua \
        >/dev/null
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    redis-cli -p "$port" info commandstats | tr -d '\r' | awk -F'[:,=]' \
        -v name="$1" -v cpu="$(awk -v a="$t0" -v b="$t1" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
            'BEGIN {printf "%.2f", (b - a) * 1e6 / hz / n}')" \
        '$1 == "cmdstat_evalsha" {printf "%-10s %6.2f us per EVALSHA, Redis CPU %s us per request\n", name, $7, cpu}'
    stop_redis
}

for _ in $(seq 1 "$rounds"); do
    one empty 'return {0, 1}'
    one reference "$(cat "$here/../../examples/reference.lua")"
    one six-calls "$(cat "$here/six-calls.lua")"
    one purchase "$(cat "$src/integer.lua" "$src/purchase.lua")"
done
