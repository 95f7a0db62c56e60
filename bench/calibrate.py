#!/usr/bin/env python3
"""Calibration against the issue's reference (examples/reference.rs).

    cargo build --release --bin seckill --example reference
    python3 bench/calibrate.py [ROUNDS]        # default 3
    SECKILL_BIN=/path/to/an/older/seckill python3 bench/calibrate.py   # another build

Each round, on one private redis-server (no AOF): the reference, then one
seckill server (a fresh SQLite file) for `lua` and then `lua-batch`, each on
a fresh item that never sells out. Before each load, `wrk -t2 -c64 -d5s
/healthz` of that server (its ceiling); then `wrk -t2 -c64 -d10s` with
bench/wrk/reference-buy.lua or bench/wrk/purchase-new-buyers.lua (a new buyer per request). CPU
per request of the server and of Redis comes from /proc, for seckill until
SQL had every order (`lag` 0). One row per run, as a Markdown table. Peak
RSS is the process's lifetime peak: `lua-batch`'s includes `lua`'s run.

wrk, the server and Redis share the machine's cores. Needs wrk,
redis-server, redis-cli.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")
# The seckill build measured: this checkout's release build unless told.
SECKILL_BIN = os.environ.get("SECKILL_BIN", f"{ROOT}/target/release/seckill")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    # utime and stime: fields 14 and 15, counted after the command's ")".
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url, seconds, script=None):
    """req/s, requests, 201s (None without a script that counts them).
    Stops the calibration on socket errors or, without 201s to count,
    on answers other than 2xx: the division would be by the wrong count."""
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    if "Socket errors" in out or ("Non-2xx" in out and "201:" not in out):
        raise SystemExit(f"wrk against {url} saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    created = re.search(r"^\s+201:\s+(\d+)", out, re.M)
    if script and "purchase" in script and not created:
        raise SystemExit(f"no purchase succeeded against {url}:\n{out}")
    return rps, requests, int(created.group(1)) if created else None


def wait_for(url):
    # Up to a minute: seckill on a Redis it did not start itself waits out a
    # worker lease's TTL and the skew margin (31 s) before it serves, since
    # nothing tells it that Redis is fresh (src/orders/lease.rs).
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no answer from {url}")


def start_redis(directory):
    port = free_port()
    subprocess.run(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no",
         "--daemonize", "yes", "--dir", directory, "--logfile", f"{directory}/redis.log"],
        check=True,
    )
    for _ in range(50):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "server"],
                          capture_output=True, text=True).stdout
    found = re.search(r"process_id:(\d+)", info)
    if not found:
        stop_redis(port)
        raise SystemExit(f"redis-server on {port} did not answer; see {directory}/redis.log")
    return port, int(found.group(1))


def stop_redis(port):
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)


def measure(server_pid, redis_pid, load, settle=lambda: None):
    """Runs `load` (returning req/s and the requests to divide by), then
    `settle`; CPU microseconds per request of the server and of Redis."""
    server0, redis0 = cpu_ticks(server_pid), cpu_ticks(redis_pid)
    rps, per = load()
    settled = settle()
    server1, redis1 = cpu_ticks(server_pid), cpu_ticks(redis_pid)
    to_us = 1e6 / HZ / per
    return rps, (server1 - server0) * to_us, (redis1 - redis0) * to_us, settled


def reference_run(redis_port, redis_pid):
    port = free_port()
    process = subprocess.Popen(
        [f"{ROOT}/target/release/examples/reference", f"127.0.0.1:{port}",
         f"redis://127.0.0.1:{redis_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz")
        ceiling = wrk(base + "/healthz", 5)[0]

        def load():
            rps, requests, _ = wrk(base + "/buy", 10, f"{ROOT}/bench/wrk/reference-buy.lua")
            time.sleep(0.5)
            return rps, requests

        rps, server_us, redis_us, _ = measure(process.pid, redis_pid, load)
        return [("reference", rps, ceiling, server_us, redis_us, peak_rss_mib(process.pid), "")]
    finally:
        stop(process)


def seckill_runs(directory, redis_port, redis_pid, round_no):
    port = free_port()
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}",
               DATABASE_URL=f"sqlite://{directory}/db.sqlite",
               LISTEN=f"127.0.0.1:{port}", RUST_LOG="warn")
    process = subprocess.Popen([SECKILL_BIN, "serve"], env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=open(f"{directory}/server.log", "w"))
    rows = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/healthz")
        for strategy in ["lua", "lua-batch"]:
            item = f"cal{round_no}{strategy.replace('-', '')}"
            urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/items/{item}", method="PUT",
                data=b'{"stock":1000000000,"per_user_limit":1}',
                headers={"content-type": "application/json"}))
            ceiling = wrk(base + "/healthz", 5)[0]

            def load():
                rps, _, created = wrk(f"{base}/api/items/{item}/purchase?strategy={strategy}",
                                      10, f"{ROOT}/bench/wrk/purchase-new-buyers.lua")
                return rps, created

            def settle():
                started = time.time()
                while time.time() - started < 10:
                    view = json.load(urllib.request.urlopen(f"{base}/api/items/{item}"))
                    if view["lag"] == 0:
                        break
                    time.sleep(0.05)
                return time.time() - started

            rps, server_us, redis_us, settled = measure(process.pid, redis_pid, load, settle)
            rows.append((strategy, rps, ceiling, server_us, redis_us,
                         peak_rss_mib(process.pid), f"{settled:.2f}"))
        return rows
    finally:
        stop(process)


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print("| round | target | req/s | /healthz req/s | x /healthz | server us | Redis us | peak RSS MiB | settle s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for round_no in range(1, rounds + 1):
        directory = tempfile.mkdtemp()
        redis_port, redis_pid = start_redis(directory)
        try:
            rows = reference_run(redis_port, redis_pid)
            rows += seckill_runs(directory, redis_port, redis_pid, round_no)
        finally:
            stop_redis(redis_port)
        for name, rps, ceiling, server_us, redis_us, rss, settled in rows:
            print(f"| {round_no} | {name} | {rps:,.0f} | {ceiling:,.0f} | {rps / ceiling:.3f} "
                  f"| {server_us:.1f} | {redis_us:.1f} | {rss:.1f} | {settled} |", flush=True)


if __name__ == "__main__":
    main()
