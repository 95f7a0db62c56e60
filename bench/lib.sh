# bench/lib.sh: sourced by the bench scripts. One seckill server on a private
# redis-server and SQLite file in a fresh directory, on loopback ports picked
# at random, with a never-ending item to buy.
#
#   free_port LOW SPAN                 prints a port in [LOW, LOW+SPAN) that
#                                      nothing listens on
#   start_sale DIR ITEM [WRAPPER...]   starts Redis, then `$bin serve` (under
#                                      WRAPPER, e.g. valgrind, if given); sets
#                                      redis_port, http_port and server;
#                                      fails if the server never answers
#   stop_sale                          stops both (safe to call twice)
#
# Needs $bin (the seckill binary), redis-server, redis-cli, curl.

free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$(($1 + RANDOM % $2))
        # A port in use would be measured, and shut down, as ours: skip it.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port in [$1, $(($1 + $2)))" >&2
    return 1
}

start_sale() {
    local dir=$1 item=$2
    shift 2
    redis_port=$(free_port 20000 20000)
    http_port=$(free_port 40000 10000)
    redis-server --port "$redis_port" --save '' --appendonly no --daemonize yes \
        --dir "$dir" --logfile "$dir/redis.log"
    REDIS_URL="redis://127.0.0.1:$redis_port" DATABASE_URL="sqlite://$dir/db.sqlite" \
        LISTEN="127.0.0.1:$http_port" RUST_LOG="${RUST_LOG:-warn}" \
        "$@" "$bin" serve >"$dir/server.log" 2>&1 &
    server=$!
    # A failed run must not leave the server and its Redis behind.
    trap stop_sale EXIT
    # Slow under valgrind: up to a minute, unless the server is gone.
    local up=
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1; then
            up=1
            break
        fi
        kill -0 "$server" 2>/dev/null || break
        sleep 0.2
    done
    if [ -z "$up" ]; then
        echo "the server never answered; its log: $dir/server.log" >&2
        return 1
    fi
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
