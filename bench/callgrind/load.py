"""Exactly N requests over C keep-alive connections, for bench/callgrind/run.sh.

usage: load.py PORT ITEM STRATEGY N C [keyed]    (STRATEGY `healthz`: GET /healthz;
`reference`: POST /buy, examples/reference.rs's purchase)
Each purchase is a new buyer; with `keyed`, each also carries its own
Idempotency-Key. Prints the count of each status; exits 1 when
any request was not answered with its expected status.
"""

import collections
import http.client
import sys
import threading

port, item, strategy, n, c = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
keyed = sys.argv[6:] == ["keyed"]
counts = collections.Counter()
lock = threading.Lock()


def worker(first):
    conn = http.client.HTTPConnection("127.0.0.1", int(port))
    for i in range(first, n, c):
        if strategy == "healthz":
            conn.request("GET", "/healthz")
        elif strategy == "reference":
            conn.request("POST", "/buy")
        else:
            headers = {"Idempotency-Key": f"cg-{i}"} if keyed else {}
            conn.request("POST", f"/api/items/{item}/purchase?user_id=cg{i}&strategy={strategy}", headers=headers)
        response = conn.getresponse()
        response.read()
        with lock:
            counts[response.status] += 1


threads = [threading.Thread(target=worker, args=(w,)) for w in range(c)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(dict(counts))
expected = 200 if strategy == "healthz" else 201
sys.exit(0 if counts[expected] == n else 1)
