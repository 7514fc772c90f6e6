#!/usr/bin/env bash
# Slow-client attacks against the gateway with Debian's slowhttptest:
# slowloris (slow headers), slow body (R-U-Dead-Yet) and slow read, each
# for LENGTH seconds with CONNS connections, the gateway limited to NOFILE
# descriptors as on a default system. slowhttptest probes the service on a
# fresh connection every second; the figure that matters is how many of
# those seconds the service stayed available.
#
# Env: CONNS (default 2000), RATE (new connections/s, default 400), LENGTH
# (seconds per attack, default 40), NOFILE (gateway descriptor limit,
# default 1024), BALLAST_BIN (skip the cargo build; e.g. an older binary to
# compare), KEEP_WORKDIR=1. Loopback only; every run stops by itself.
# See bench/README.md.
set -euo pipefail

CONNS=${CONNS:-2000}
RATE=${RATE:-400}
LENGTH=${LENGTH:-40}
NOFILE=${NOFILE:-1024}

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need=()
command -v slowhttptest >/dev/null 2>&1 || need+=(slowhttptest)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
apt_install "${need[@]}"
build_ballast
setup_workdir
setup_results

read -r SIM_PORT BALLAST_PORT ADMIN_PORT < <(free_ports 3)
start_bg INT "$WORK/sim.log" env -u RUST_LOG "$BIN" sim --listen "127.0.0.1:$SIM_PORT"
SIM_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:$SIM_PORT/v1/models" "$SIM_PID" "ballast sim"

# Only keys every Ballast version knows, so that builds can be compared:
# each one runs with its own defaults for the rest.
cat >"$WORK/ballast.toml" <<EOF
[server]
listen = ["127.0.0.1:$BALLAST_PORT"]
threads = 1

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "warn"

[[pool]]
name = "sim"
[[pool.servers]]
addr = "127.0.0.1:$SIM_PORT"

[[route]]
name = "all"
path_prefix = "/"
pool = "sim"
EOF

start_bg TERM "$WORK/ballast.log" bash -c "ulimit -n $NOFILE && exec \"\$0\" --config \"\$1\" run" \
    "$BIN" "$WORK/ballast.toml"
GW_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$GW_PID" "ballast"
wait_http "http://127.0.0.1:$BALLAST_PORT/v1/models" "$GW_PID" "ballast"

URL="http://127.0.0.1:$BALLAST_PORT/v1/models"
OUT=$RESULTS_DIR/slowhttp-$STAMP-$REV.txt
log "binary: $BIN ($REV); $CONNS connections at $RATE/s for ${LENGTH}s per attack, nofile $NOFILE"
# Our own probe beside slowhttptest's: one fresh request a second, and
# what it got: 200, an honest 503 (connection cap), or nothing in 2 s.
probe() { # probe SECONDS OUT
    python3 - "$URL" "$1" >"$2" <<'PY'
import sys, time, urllib.request, urllib.error
url, seconds = sys.argv[1], int(sys.argv[2])
counts = {"200": 0, "503": 0, "other": 0, "none": 0}
end = time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            counts["200" if r.status == 200 else "other"] += 1
    except urllib.error.HTTPError as e:
        counts["503" if e.code == 503 else "other"] += 1
    except Exception:
        counts["none"] += 1
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
print("\t".join(str(counts[k]) for k in ("200", "503", "none")))
PY
}

printf 'attack\tslowhttptest_available_s\tseconds\tmax_connected\tprobe_200\tprobe_503\tprobe_no_answer\n' | tee "$OUT"
attack() { # attack NAME FLAGS...: run one attack, print its summary row
    local name=$1
    shift
    probe "$LENGTH" "$WORK/$name.probe" &
    local probe_pid=$!
    # slowhttptest gives up on its own after LENGTH seconds (plus a probe timeout).
    (cd "$WORK" && timeout $((LENGTH + 60)) slowhttptest "$@" -c "$CONNS" -r "$RATE" \
        -l "$LENGTH" -p 3 -u "$URL" -g -o "$name" >"$name.log" 2>&1) || true
    wait "$probe_pid" || true
    python3 - "$WORK/$name.csv" "$name" "$(cat "$WORK/$name.probe" 2>/dev/null)" <<'PY' | tee -a "$OUT"
import csv, sys
path, name, probe = sys.argv[1], sys.argv[2], sys.argv[3] or "-\t-\t-"
try:
    rows = list(csv.DictReader(open(path)))
except OSError:
    print(f"{name}\t-\t-\t-\t{probe}")
    sys.exit()
# slowhttptest writes the connection count there when its probe got an
# answer (for its chart), 0 when it did not.
up = sum(1 for r in rows if r["Service Available"].strip() not in ("", "0"))
conn = max((int(r["Connected"]) for r in rows), default=0)
print(f"{name}\t{up}\t{len(rows)}\t{conn}\t{probe}")
PY
    # Let the gateway close what the attack left before the next one.
    sleep 2
}
attack slowloris -H -i 5 -x 24
attack slow_body -B -i 5 -x 24 -s 65536
attack slow_read -X -k 3 -n 5 -w 1 -y 32 -z 8
log "results: $OUT"
