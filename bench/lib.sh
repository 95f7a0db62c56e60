# bench/lib.sh: sourced by the bench scripts. One seckill server on a private
# redis-server and SQLite file in a fresh directory, on loopback ports picked
# at random, with a never-ending item to buy.
#
#   start_sale DIR ITEM [WRAPPER...]   starts Redis, then `$bin serve` (under
#                                      WRAPPER, e.g. valgrind, if given); sets
#                                      redis_port, http_port and server
#   stop_sale                          stops both (safe to call twice)
#
# Needs $bin (the seckill binary), redis-server, redis-cli, curl.

start_sale() {
    local dir=$1 item=$2
    shift 2
    redis_port=$((20000 + RANDOM % 20000))
    http_port=$((40000 + RANDOM % 10000))
    redis-server --port "$redis_port" --save '' --appendonly no --daemonize yes \
        --dir "$dir" --logfile "$dir/redis.log"
    REDIS_URL="redis://127.0.0.1:$redis_port" DATABASE_URL="sqlite://$dir/db.sqlite" \
        LISTEN="127.0.0.1:$http_port" RUST_LOG="${RUST_LOG:-warn}" \
        "$@" "$bin" serve >"$dir/server.log" 2>&1 &
    server=$!
    # A failed run must not leave the server and its Redis behind.
    trap stop_sale EXIT
    # Slow under valgrind: up to a minute.
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -sf -X PUT "http://127.0.0.1:$http_port/api/items/$item" \
        -H 'content-type: application/json' \
        -d '{"stock":1000000000,"per_user_limit":1}' >/dev/null
}

stop_sale() {
    # The server's exit status is of no interest here; under `set -e` a
    # failed `wait` would end the calling script.
    if kill -TERM "$server" 2>/dev/null; then
        wait "$server" 2>/dev/null || true
    fi
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    trap - EXIT
}
