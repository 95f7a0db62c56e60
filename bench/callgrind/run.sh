#!/usr/bin/env bash
# Instructions per request of a seckill binary, counted by callgrind: the
# same for the same binary and input whatever else the machine is doing, so
# two builds compare on a shared, noisy machine where CPU time cannot.
#
#   bench/callgrind/run.sh BINARY [STRATEGY] [N]
#
# STRATEGY: a purchase strategy (default lua), or `healthz`; KEYED=1 gives
# each purchase its own Idempotency-Key. Runs the server
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

total() { # requests -> instructions of the whole server run
    local requests=$1 dir
    dir=$(mktemp -d)
    start_sale "$dir" cg valgrind --tool=callgrind \
        --callgrind-out-file="$out_dir/$strategy-$requests.out"
    python3 "$here/load.py" "$http_port" cg "$strategy" "$requests" 8 ${KEYED:+keyed} >&2
    sleep 2 # the persister catches up
    stop_sale
    grep -h '^summary:' "$out_dir/$strategy-$requests.out" | awk '{print $2}'
}

idle=$(total 0)
loaded=$(total "$n")
echo "$strategy: $(( (loaded - idle) / n )) instructions per request ($loaded - $idle over $n); profile: $out_dir/$strategy-$n.out"
