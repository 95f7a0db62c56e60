#!/usr/bin/env bash
# The SQLite floor of one order: 4,000 rows inserted into this project's
# orders table (migrations/), 128 rows a multi-row INSERT ... ON CONFLICT
# DO NOTHING, one transaction each, WAL, by the sqlite3 shell under
# callgrind; prints sqlite3_step's instructions per row (statement
# execution only: the shell's parsing is left out, as the server prepares
# each statement shape once). VARIANT: `schema` (as migrated), `no-user-index`
# (without orders_by_user), `integer-pk` (order_id INTEGER PRIMARY KEY, the
# rowid). Needs sqlite3, valgrind, python3.
set -euo pipefail
variant=${1:-schema}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
dir=$(mktemp -d)
python3 - "$root/migrations/20261124000001_orders.sql" "$variant" > "$dir/insert.sql" <<'PY'
import sys
schema, variant = open(sys.argv[1]).read(), sys.argv[2]
if variant == "no-user-index":
    schema = "\n".join(l for l in schema.splitlines() if "orders_by_user" not in l)
elif variant == "integer-pk":
    schema = schema.replace("order_id     BIGINT PRIMARY KEY", "order_id     INTEGER PRIMARY KEY")
print("PRAGMA journal_mode=WAL;")
print(schema)
base, n, i = 1795550000123, 4000, 0
first = (base - 1700000000000) << 22
while i < n:
    rows = range(i, min(i + 128, n))
    values = ",".join(f"({first + (j << 12)},'cg','cg{j}','lua',1,{base + j},{base + j})" for j in rows)
    print(f"BEGIN;\nINSERT INTO orders (order_id, item_id, user_id, strategy, generation, created_at, persisted_at) VALUES {values} ON CONFLICT (order_id) DO NOTHING;\nCOMMIT;")
    i += 128
PY
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" sqlite3 "$dir/db.sqlite" < "$dir/insert.sql" >/dev/null 2>&1
step=$(callgrind_annotate --inclusive=yes "$dir/cg.out" 2>/dev/null | grep -E ':sqlite3_step ' | head -1 | awk '{gsub(",", "", $1); print $1}')
echo "$variant: $((step / 4000)) instructions of sqlite3_step per row ($step over 4000 rows)"
rm -rf "$dir"
