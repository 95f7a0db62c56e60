#!/usr/bin/env bash
# Where Redis's time per purchase goes: a seckill binary on a private
# redis-server and SQLite file, wrk load on one item that never sells out,
# then CPU per purchase of the server (user, user + system) and of Redis from
# /proc, and Redis's own INFO commandstats divided by the purchases: calls and
# microseconds per purchase for each command. Commands a script runs appear
# both on their own line and inside EVALSHA's time.
#
#   bench/redis/commandstats.sh BINARY [STRATEGY] [SECONDS]
#
# STRATEGY defaults to lua, SECONDS to 10; wrk -t2 -c64 with
# bench/wrk/purchase-new-buyers.lua (a new buyer per request), persistence on. The load
# generator, the server and Redis share the machine's cores. Needs wrk,
# redis-server, redis-cli, curl, awk.
set -euo pipefail
bin=$(realpath "$1")
strategy=${2:-lua}
seconds=${3:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
. "$here/lib.sh"
start_sale "$dir" cs

redis_pid=$(redis-cli -p "$redis_port" info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')
ticks() { awk -v f="$2" '{print f == "user" ? $14 : $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
redis-cli -p "$redis_port" config resetstat >/dev/null
user0=$(ticks "$server" user) server0=$(ticks "$server" all) redis0=$(ticks "$redis_pid" all)
wrk -t2 -c64 -d"${seconds}s" -s "$here/wrk/purchase-new-buyers.lua" \
    "http://127.0.0.1:$http_port/api/items/cs/purchase?strategy=$strategy" | tee "$dir/wrk.txt"
sleep 1.5 # the persister catches up: its reads and acknowledgements count
user1=$(ticks "$server" user) server1=$(ticks "$server" all) redis1=$(ticks "$redis_pid" all)
n=$(awk '$1 == "201:" {print $2}' "$dir/wrk.txt")
if [ -z "$n" ] || [ "$n" -eq 0 ]; then
    echo "no purchase succeeded; server log: $dir/server.log" >&2
    exit 1
fi
per() { awk -v a="$1" -v b="$2" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}'; }
echo "$strategy: $n purchases; CPU us per purchase: server user $(per "$user0" "$user1")," \
    "server user+sys $(per "$server0" "$server1"), Redis $(per "$redis0" "$redis1");" \
    "peak RSS $(awk '$1 == "VmHWM:" {printf "%.1f MiB", $2 / 1024}' "/proc/$server/status")"
echo "Redis INFO commandstats per purchase (calls, us):"
redis-cli -p "$redis_port" info commandstats | tr -d '\r' | awk -F'[:,=]' -v n="$n" '
    /^cmdstat_/ && $3 / n >= 0.001 {
        printf "  %-22s %7.3f calls %7.2f us\n", substr($1, 9), $3 / n, $5 / n
    }'
