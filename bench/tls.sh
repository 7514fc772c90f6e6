#!/usr/bin/env bash
# TLS to clients: Ballast and nginx side by side, the same certificate, in
# front of the same three simulated backends, plain and TLS, with
# keep-alive connections and with a new connection (and handshake) per
# request. The question: does TLS cost Ballast more, relative to nginx,
# than plain HTTP does?
#
# Env: CONNS (default 32), DURATION (default 10s), THREADS (proxy worker
# threads/processes, default 2), WARMUP (default 2s), WRK_THREADS (default 2),
# BALLAST_BIN (skip the cargo build), KEEP_WORKDIR=1. See bench/README.md.
set -euo pipefail

CONNS=${CONNS:-32}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}
WRK_THREADS=${WRK_THREADS:-2}
LOAD_PATH=/v1/models

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tools wrk:wrk nginx:nginx-light curl:curl python3:python3 openssl:openssl

build_ballast
setup_workdir

# ---------------------------------------------------------------- certificate
# One ECDSA P-256 CA and a server certificate for 127.0.0.1, used by both.
log "making a test CA and a server certificate (openssl, ECDSA P-256)"
(
    cd "$WORK"
    openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
    openssl req -x509 -new -key ca-key.pem -days 2 -subj "/CN=bench CA" -out ca.pem
    openssl ecparam -name prime256v1 -genkey -noout -out key.pem
    openssl req -new -key key.pem -subj "/CN=127.0.0.1" -out server.csr
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days 2 -extfile ext.cnf -out cert.pem
) >"$WORK/openssl.log" 2>&1 || die "openssl failed: $(tail -n 3 "$WORK/openssl.log")"

read -r P1 P2 P3 B_PLAIN B_TLS A_PLAIN A_TLS N_PLAIN N_TLS < <(free_ports 9)

log "starting 3 simulated backends on ports $P1 $P2 $P3"
start_bg INT "$WORK/sim.log" env -u RUST_LOG "$BIN" sim \
    --listen "127.0.0.1:$P1" --listen "127.0.0.1:$P2" --listen "127.0.0.1:$P3"
SIM_PID=${PIDS[-1]}
for p in "$P1" "$P2" "$P3"; do
    wait_http "http://127.0.0.1:$p$LOAD_PATH" "$SIM_PID" "ballast sim"
done

wait_https() { # wait_https URL PID WHAT
    local url=$1 pid=$2 what=$3
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --cacert "$WORK/ca.pem" "$url" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$what not ready after 30s ($url)"
}

# ---------------------------------------------------------------- ballast: plain and TLS
ballast_config() { # ballast_config PORT ADMIN_PORT TLS_LINE
    cat <<EOF
[server]
listen = ["127.0.0.1:$1"]
threads = $THREADS
$3

[admin]
listen = "127.0.0.1:$2"

[log]
level = "warn"

[[pool]]
name = "sim"
[[pool.servers]]
addr = "127.0.0.1:$P1"
[[pool.servers]]
addr = "127.0.0.1:$P2"
[[pool.servers]]
addr = "127.0.0.1:$P3"

[[route]]
name = "all"
pool = "sim"
EOF
}
ballast_config "$B_PLAIN" "$A_PLAIN" "" >"$WORK/ballast-plain.toml"
ballast_config "$B_TLS" "$A_TLS" "tls = { cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }" \
    >"$WORK/ballast-tls.toml"
for c in plain tls; do
    "$BIN" check --config "$WORK/ballast-$c.toml" >/dev/null || die "ballast rejected ballast-$c.toml"
    start_bg INT "$WORK/ballast-$c.log" env -u RUST_LOG "$BIN" --config "$WORK/ballast-$c.toml" run
done
BALLAST_TLS_PID=${PIDS[-1]}
BALLAST_PLAIN_PID=${PIDS[-2]}
wait_http "http://127.0.0.1:$B_PLAIN$LOAD_PATH" "$BALLAST_PLAIN_PID" "ballast (plain)"
wait_https "https://127.0.0.1:$B_TLS$LOAD_PATH" "$BALLAST_TLS_PID" "ballast (TLS)"

# ---------------------------------------------------------------- nginx: both listeners
nginx_v=$("$NGINX" -V 2>&1 || true)
[[ $nginx_v == *http_ssl_module* ]] || die "this nginx has no TLS (http_ssl_module)"
temp_paths=$(nginx_temp_paths "$WORK")
upstream=$(nginx_sim_upstream "$P1" "$P2" "$P3")
cat >"$WORK/nginx.conf" <<EOF
worker_processes $THREADS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    $upstream
    server {
        listen 127.0.0.1:$N_PLAIN;
        listen 127.0.0.1:$N_TLS ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$NGINX" -t -q -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" ||
    die "nginx rejected the generated config (see $WORK/nginx-error.log)"
start_bg TERM "$WORK/nginx.log" "$NGINX" -e "$WORK/nginx-error.log" -p "$WORK" \
    -c "$WORK/nginx.conf" -g 'daemon off;'
NGINX_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:$N_PLAIN$LOAD_PATH" "$NGINX_PID" "nginx"
wait_https "https://127.0.0.1:$N_TLS$LOAD_PATH" "$NGINX_PID" "nginx (TLS)"

# ---------------------------------------------------------------- load
CORES=$(nproc)
printf '\ntls: GET %s, wrk -t%s -c%s -d%s --latency (warm-up %s each); proxy threads %s; %s cores shared by all\n' \
    "$LOAD_PATH" "$WRK_THREADS" "$CONNS" "$DURATION" "$WARMUP" "$THREADS" "$CORES"
printf 'keepalive: connections reused; new-conn: Connection: close, a new TCP connection (and TLS handshake) per request\n\n'

declare -A URLS=(
    [ballast-plain]="http://127.0.0.1:$B_PLAIN$LOAD_PATH"
    [ballast-tls]="https://127.0.0.1:$B_TLS$LOAD_PATH"
    [nginx-plain]="http://127.0.0.1:$N_PLAIN$LOAD_PATH"
    [nginx-tls]="https://127.0.0.1:$N_TLS$LOAD_PATH"
)
for mode in keepalive new-conn; do
    hdr=()
    [[ $mode == new-conn ]] && hdr=(-H "Connection: close")
    for t in ballast-plain nginx-plain ballast-tls nginx-tls; do
        log "$t ($mode): warm-up $WARMUP, then $DURATION"
        wrk "-t$WRK_THREADS" "-c$CONNS" "-d$WARMUP" "${hdr[@]}" "${URLS[$t]}" \
            >"$WORK/wrk-$t-$mode-warmup.txt" 2>&1 || die "wrk warm-up against $t failed"
        wrk "-t$WRK_THREADS" "-c$CONNS" "-d$DURATION" --latency "${hdr[@]}" "${URLS[$t]}" \
            >"$WORK/wrk-$t-$mode.txt" 2>&1 || die "wrk against $t failed"
    done
done
for pid in "$BALLAST_PLAIN_PID" "$BALLAST_TLS_PID" "$NGINX_PID"; do
    kill -0 "$pid" 2>/dev/null || die "a proxy died during the run"
done

# ---------------------------------------------------------------- report
setup_results
JSON_OUT=$RESULTS_DIR/tls-$STAMP.json
STAMP=$STAMP REV=$REV CORES=$CORES CONNS=$CONNS DURATION=$DURATION THREADS=$THREADS \
    python3 - "$WORK" "$JSON_OUT" <<'EOF'
import json, os, re, sys
work, out = sys.argv[1], sys.argv[2]
E = os.environ
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}

def parse(text):
    lat = {"p%g" % float(p): float(v) * UNIT_MS[u]
           for p, v, u in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not m or "p99" not in lat:
        raise SystemExit("cannot parse wrk output:\n" + text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"req_per_s": float(m.group(1)), "latency_ms": lat, "errors": errors}

res = {}
for mode in ["keepalive", "new-conn"]:
    for t in ["ballast-plain", "nginx-plain", "ballast-tls", "nginx-tls"]:
        with open(f"{work}/wrk-{t}-{mode}.txt") as f:
            res[f"{t}/{mode}"] = parse(f.read())

rows = ["%-26s %10s %9s %9s %7s" % ("target/mode", "req/s", "p50(ms)", "p99(ms)", "errors")]
for k, r in res.items():
    rows.append("%-26s %10.0f %9.3f %9.3f %7d" % (k, r["req_per_s"], r["latency_ms"]["p50"],
                                                 r["latency_ms"]["p99"], r["errors"]))
ratios = {}
rows.append("")
rows.append("%-10s %-6s %18s %16s" % ("mode", "proto", "ballast/nginx req/s", "ballast/nginx p99"))
for mode in ["keepalive", "new-conn"]:
    for proto in ["plain", "tls"]:
        b, n = res[f"ballast-{proto}/{mode}"], res[f"nginx-{proto}/{mode}"]
        rr = b["req_per_s"] / n["req_per_s"]
        pr = b["latency_ms"]["p99"] / n["latency_ms"]["p99"]
        ratios[f"{proto}/{mode}"] = {"req_per_s": rr, "p99": pr}
        rows.append("%-10s %-6s %18.2f %16.2f" % (mode, proto, rr, pr))
rows.append("")
for mode in ["keepalive", "new-conn"]:
    t, p = ratios[f"tls/{mode}"]["req_per_s"], ratios[f"plain/{mode}"]["req_per_s"]
    rows.append("%s: Ballast keeps %.2f of nginx's req/s with TLS, %.2f without: TLS %s" % (
        mode, t, p, "costs Ballast no more than nginx" if t >= p * 0.95 else "costs Ballast MORE than nginx"))
print("\n".join(rows))
doc = {"benchmark": "tls", "timestamp": E["STAMP"], "ballast_rev": E["REV"],
       "machine": {"nproc": int(E["CORES"])},
       "params": {"conns": int(E["CONNS"]), "duration": E["DURATION"], "proxy_threads": int(E["THREADS"])},
       "results": res, "ballast_vs_nginx": ratios}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
EOF
for f in ballast-plain.log ballast-tls.log nginx-error.log; do
    if [[ -s $WORK/$f ]]; then
        printf '\n%s: %s line(s) logged, last ones:\n' "$f" "$(wc -l <"$WORK/$f")"
        tail -n 5 "$WORK/$f"
    fi
done
printf '\nJSON: %s\n' "$JSON_OUT"
