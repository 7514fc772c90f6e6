#!/usr/bin/env bash
# Side-by-side benchmark of small requests (GET /v1/models) against:
#   direct  — one simulated backend, no proxy
#   ballast — the gateway in front of three simulated backends
#   nginx   — nginx with an equivalent config in front of the same backends
#
# Env: CONNS (default 32), DURATION (default 10s), THREADS (proxy worker
# threads/processes, default 2), WARMUP (default 2s), WRK_THREADS (default 2),
# BALLAST_BIN (skip the cargo build and use this binary), KEEP_WORKDIR=1.
# See bench/README.md.
set -euo pipefail

CONNS=${CONNS:-32}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-2}
LOAD_PATH=/v1/models

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- prerequisites
need_tools wrk:wrk nginx:nginx-light curl:curl python3:python3

build_ballast

# ---------------------------------------------------------------- work dir, cleanup
setup_workdir

# ---------------------------------------------------------------- ports
read -r P1 P2 P3 BALLAST_PORT ADMIN_PORT NGINX_PORT < <(free_ports 6)

# ---------------------------------------------------------------- backends
log "starting 3 simulated backends on ports $P1 $P2 $P3"
start_bg INT "$WORK/sim.log" env -u RUST_LOG "$BIN" sim \
    --listen "127.0.0.1:$P1" --listen "127.0.0.1:$P2" --listen "127.0.0.1:$P3"
SIM_PID=${PIDS[-1]}
for p in "$P1" "$P2" "$P3"; do
    wait_http "http://127.0.0.1:$p$LOAD_PATH" "$SIM_PID" "ballast sim"
done

# ---------------------------------------------------------------- ballast
cat >"$WORK/ballast.toml" <<EOF
[server]
listen = ["127.0.0.1:$BALLAST_PORT"]
threads = $THREADS

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "warn"   # no per-request access log, like nginx's access_log off

[[pool]]
name = "sim"
max_fails = 3
fail_timeout = "30s"

[[pool.servers]]
addr = "127.0.0.1:$P1"

[[pool.servers]]
addr = "127.0.0.1:$P2"

[[pool.servers]]
addr = "127.0.0.1:$P3"

[[route]]
name = "all"
path_prefix = "/"
pool = "sim"
EOF
"$BIN" check --config "$WORK/ballast.toml" >/dev/null || die "ballast rejected the generated config"
log "starting ballast on port $BALLAST_PORT (admin $ADMIN_PORT, threads $THREADS)"
# RUST_LOG would override the config's log level: drop it.
start_bg INT "$WORK/ballast.log" env -u RUST_LOG "$BIN" --config "$WORK/ballast.toml" run
BALLAST_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$BALLAST_PID" "ballast"
wait_http "http://127.0.0.1:$BALLAST_PORT$LOAD_PATH" "$BALLAST_PID" "ballast"

# ---------------------------------------------------------------- nginx
# Temp paths of modules compiled in must point into the work dir.
temp_paths=$(nginx_temp_paths "$WORK")
upstream=$(nginx_sim_upstream "$P1" "$P2" "$P3")
cat >"$WORK/nginx.conf" <<EOF
worker_processes $THREADS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    $temp_paths

    $upstream

    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
        }
    }
}
EOF
"$NGINX" -t -q -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" ||
    die "nginx rejected the generated config (see $WORK/nginx-error.log)"
log "starting nginx on port $NGINX_PORT (worker_processes $THREADS)"
start_bg TERM "$WORK/nginx.log" "$NGINX" -e "$WORK/nginx-error.log" -p "$WORK" \
    -c "$WORK/nginx.conf" -g 'daemon off;'
NGINX_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:$NGINX_PORT$LOAD_PATH" "$NGINX_PID" "nginx"

# ---------------------------------------------------------------- load
CORES=$(nproc)
printf '\nsmall-requests: GET %s, wrk -t%s -c%s -d%s --latency (warm-up %s each, not reported)\n' \
    "$LOAD_PATH" "$WRK_THREADS" "$CONNS" "$DURATION" "$WARMUP"
printf 'proxy threads/worker_processes: %s; ballast log level warn, nginx access_log off\n' "$THREADS"
printf 'machine: %s cores (nproc); wrk, the 3 backends (one process) and the proxy all share them\n\n' "$CORES"

TARGETS=(direct ballast nginx)
declare -A URLS=(
    [direct]="http://127.0.0.1:$P1$LOAD_PATH"
    [ballast]="http://127.0.0.1:$BALLAST_PORT$LOAD_PATH"
    [nginx]="http://127.0.0.1:$NGINX_PORT$LOAD_PATH"
)
for t in "${TARGETS[@]}"; do
    log "$t: warm-up $WARMUP"
    wrk "-t$WRK_THREADS" "-c$CONNS" "-d$WARMUP" "${URLS[$t]}" >"$WORK/wrk-$t-warmup.txt" 2>&1 ||
        die "wrk warm-up against $t failed: $(tail -n 3 "$WORK/wrk-$t-warmup.txt")"
    log "$t: measuring $DURATION"
    wrk "-t$WRK_THREADS" "-c$CONNS" "-d$DURATION" --latency "${URLS[$t]}" >"$WORK/wrk-$t.txt" 2>&1 ||
        die "wrk against $t failed: $(tail -n 3 "$WORK/wrk-$t.txt")"
done

# Proxies still alive after the load?
kill -0 "$BALLAST_PID" 2>/dev/null || die "ballast died during the run"
kill -0 "$NGINX_PID" 2>/dev/null || die "nginx died during the run"
curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/ballast-metrics.txt" || true

# ---------------------------------------------------------------- report
setup_results
JSON_OUT=$RESULTS_DIR/small-requests-$STAMP.json

URL_DIRECT=${URLS[direct]} URL_BALLAST=${URLS[ballast]} URL_NGINX=${URLS[nginx]} \
    STAMP=$STAMP REV=$REV CORES=$CORES LOAD_PATH=$LOAD_PATH CONNS=$CONNS DURATION=$DURATION \
    WARMUP=$WARMUP WRK_THREADS=$WRK_THREADS THREADS=$THREADS \
    python3 - "$WORK" "$JSON_OUT" <<'EOF'
import json, os, re, sys

work, out = sys.argv[1], sys.argv[2]
targets = ["direct", "ballast", "nginx"]
E = os.environ
urls = {"direct": E["URL_DIRECT"], "ballast": E["URL_BALLAST"], "nginx": E["URL_NGINX"]}
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

def parse(text):
    r = {"latency_ms": {}}
    for pct, val, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        r["latency_ms"]["p%g" % float(pct)] = float(val) * UNIT_MS[unit]
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not m or "p50" not in r["latency_ms"] or "p99" not in r["latency_ms"]:
        raise SystemExit("cannot parse wrk output:\n" + text)
    r["req_per_s"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ([^,]+),", text, re.M)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = dict(zip(["connect", "read", "write", "timeout"],
                                  map(int, m.groups()) if m else [0, 0, 0, 0]))
    r["errors"] = r["non_2xx_3xx"] + sum(r["socket_errors"].values())
    return r

res = {}
for t in targets:
    with open(f"{work}/wrk-{t}.txt") as f:
        text = f.read()
    res[t] = parse(text)
    res[t]["url"] = urls[t]
    res[t]["wrk_output"] = text

d = res["direct"]
def ratio(a, b):
    return a / b if b else float("nan")
for t in targets:
    r = res[t]
    r["req_per_s_vs_direct"] = ratio(r["req_per_s"], d["req_per_s"])
    r["p99_vs_direct"] = ratio(r["latency_ms"]["p99"], d["latency_ms"]["p99"])

b, n = res["ballast"], res["nginx"]
rps_ratio = ratio(b["req_per_s"], n["req_per_s"])
p99_ratio = ratio(b["latency_ms"]["p99"], n["latency_ms"]["p99"])

lines = ["%-9s %10s %8s %8s %16s %14s %7s" % (
    "target", "req/s", "p50(ms)", "p99(ms)", "req/s vs direct", "p99 vs direct", "errors")]
for t in targets:
    r = res[t]
    lines.append("%-9s %10.0f %8.3f %8.3f %16.2f %14.2f %7d" % (
        t, r["req_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
        r["req_per_s_vs_direct"], r["p99_vs_direct"], r["errors"]))
lines.append("ballast/nginx req/s ratio: %.2f   p99 ratio: %.2f" % (rps_ratio, p99_ratio))
for t in targets:
    r = res[t]
    if r["errors"]:
        se = r["socket_errors"]
        lines.append("  %s errors: non-2xx/3xx %d, socket connect %d read %d write %d timeout %d" % (
            t, r["non_2xx_3xx"], se["connect"], se["read"], se["write"], se["timeout"]))
print("\n".join(lines))

doc = {
    "benchmark": "small-requests",
    "timestamp": E["STAMP"],
    "ballast_rev": E["REV"],
    "machine": {"nproc": int(E["CORES"]), "note": "wrk, the backends and the proxy share these cores"},
    "params": {"path": E["LOAD_PATH"], "conns": int(E["CONNS"]), "duration": E["DURATION"],
               "warmup": E["WARMUP"], "wrk_threads": int(E["WRK_THREADS"]),
               "proxy_threads": int(E["THREADS"])},
    "results": res,
    "ballast_vs_nginx": {"req_per_s_ratio": rps_ratio, "p99_ratio": p99_ratio},
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
EOF

# Anything the proxies complained about during the run.
for f in ballast.log nginx-error.log; do
    if [[ -s $WORK/$f ]]; then
        printf '\n%s: %s line(s) logged, last ones:\n' "$f" "$(wc -l <"$WORK/$f")"
        tail -n 5 "$WORK/$f"
    fi
done
printf '\nJSON: %s\n' "$JSON_OUT"
