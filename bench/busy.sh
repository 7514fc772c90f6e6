#!/usr/bin/env bash
# Offered load above the backends' total capacity, with faults, through
# Ballast and through nginx, one after the other against fresh backends:
#
#   3 simulated backends (one `ballast sim` process each), every request
#   holding a slot LATENCY (200ms); the gateway caps each backend at SLOTS (4)
#   requests in flight, so the pool serves at most 3*SLOTS/LATENCY (~60 req/s).
#   An open-loop client offers RATE (90) req/s for DURATION (30s). Meanwhile
#   backend b2 flaps between normal and 503 every FLAP_EVERY (3s) and backend
#   b3 is killed (SIGKILL) at KILL_AT (10s) and not restarted.
#
# Reports per proxy: share of requests answered 2xx, the errors (by status and
# client-side timeouts/resets), p50/p99 latency of the successes, how many
# 503s carried Retry-After, and the peak concurrency each backend saw.
#
# Env: RATE (90), DURATION (30s), LATENCY (200ms), SLOTS (4), FLAP_EVERY (3s,
# "off" for none), KILL_AT (10s, "off" for none), CLIENT_TIMEOUT (15s),
# THREADS (2), PROXIES ("ballast nginx"), WARMUP_REQUESTS (10),
# BALLAST_BIN (skip the cargo build and use this binary), KEEP_WORKDIR=1.
# See bench/README.md.
set -euo pipefail

RATE=${RATE:-90}
DURATION=${DURATION:-30s}
LATENCY=${LATENCY:-200ms}
SLOTS=${SLOTS:-4}
FLAP_EVERY=${FLAP_EVERY:-3s}
KILL_AT=${KILL_AT:-10s}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-15s}
THREADS=${THREADS:-2}
PROXIES=${PROXIES:-ballast nginx}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-10}
LOAD_PATH=/v1/chat/completions
STATUS_INTERVAL=0.5 # seconds between samples of Ballast's /status

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

to_us() { # to_us DURATION: "30s", "200ms", "1.5s", "30" (seconds) → microseconds
    [[ $1 =~ ^([0-9]+)(\.([0-9]{1,6}))?(us|ms|s)?$ ]] || die "bad duration: $1"
    local int=${BASH_REMATCH[1]} frac=${BASH_REMATCH[3]} unit=${BASH_REMATCH[4]:-s} v
    frac=$(printf '%-6s' "$frac")
    frac=${frac// /0}
    v=$((10#$int * 1000000 + 10#$frac)) # micro-units
    case $unit in
    us) echo $((v / 1000000)) ;;
    ms) echo $((v / 1000)) ;;
    s) echo "$v" ;;
    esac
}

[[ $RATE =~ ^[0-9]+(\.[0-9]+)?$ ]] && [[ $RATE != 0 ]] || die "RATE must be a positive number: $RATE"
[[ $SLOTS =~ ^[1-9][0-9]*$ ]] || die "SLOTS must be a positive integer: $SLOTS"
[[ $WARMUP_REQUESTS =~ ^[0-9]+$ ]] || die "WARMUP_REQUESTS must be an integer: $WARMUP_REQUESTS"
DUR_US=$(to_us "$DURATION")
LAT_US=$(to_us "$LATENCY")
TIMEOUT_US=$(to_us "$CLIENT_TIMEOUT")
((DUR_US > 0 && LAT_US > 0 && TIMEOUT_US > 0)) || die "DURATION, LATENCY and CLIENT_TIMEOUT must be > 0"
FLAP_US=0
[[ $FLAP_EVERY == off ]] || FLAP_US=$(to_us "$FLAP_EVERY")
KILL_US=-1
[[ $KILL_AT == off ]] || KILL_US=$(to_us "$KILL_AT")
for p in $PROXIES; do
    [[ $p == ballast || $p == nginx ]] || die "PROXIES may list ballast and nginx, not: $p"
done

# ---------------------------------------------------------------- prerequisites
have_nginx() { command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; }
need=()
if [[ " $PROXIES " == *" nginx "* ]]; then
    have_nginx || need+=(nginx-light)
fi
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [[ -z ${BALLAST_BIN:-} ]]; then
    command -v cmake >/dev/null 2>&1 || need+=(cmake)
fi
apt_install "${need[@]}"
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

build_ballast # the simulated backends are `ballast sim`, so this is needed for nginx too

# ---------------------------------------------------------------- work dir
setup_workdir

# ---------------------------------------------------------------- helpers
now_us() { # wall clock in microseconds
    local t=$EPOCHREALTIME
    echo $((10#${t//[.,]/}))
}

sleep_until_us() { # sleep_until_us T: sleep until wall-clock microsecond T
    local d=$(($1 - $(now_us)))
    if ((d > 0)); then
        sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
    fi
}

forget_bg() { # forget_bg PID: drop a process that has already been waited for from the cleanup list
    local i
    for i in "${!PIDS[@]}"; do
        if [[ ${PIDS[$i]} == "$1" ]]; then
            unset 'PIDS[i]' 'SIGS[i]'
        fi
    done
}

sim_fault() { # sim_fault PORT JSON: set a backend's fault; prints the HTTP status
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -XPOST \
        -H 'content-type: application/json' -d "$2" "http://127.0.0.1:$1/_sim/fault" || echo "curl-failed"
}

sim_stats() { # sim_stats PORT OUT: save a backend's /_sim/stats
    curl -sf --max-time 2 "http://127.0.0.1:$1/_sim/stats" >"$2" || echo '{}' >"$2"
}

status_sampler() { # status_sampler URL: "epoch_us json" every STATUS_INTERVAL until killed
    while :; do
        printf '%s %s\n' "$(now_us)" "$(curl -s --max-time 1 "$1" || echo '{}')"
        sleep "$STATUS_INTERVAL"
    done
}

client_cmd() { # client_cmd LABEL TARGET RATE DURATION_S OUT [START_AT_EPOCH_S]: the load client's command line
    CLIENT_CMD=(python3 "$BENCH_DIR/busy_client.py" --target "$2" --rate "$3" --duration "$4"
        --timeout "$(awk "BEGIN{print $TIMEOUT_US/1e6}")" --label "$1"
        --out "$5" --records "$5.records")
    if [[ -n ${6:-} ]]; then
        CLIENT_CMD+=(--start-at "$6")
    fi
}

start_ballast() { # start_ballast PHASE PORT ADMIN B1 B2 B3
    local phase=$1 port=$2 admin=$3
    shift 3
    {
        cat <<EOF
[server]
listen = ["127.0.0.1:$port"]
threads = $THREADS

[admin]
listen = "127.0.0.1:$admin"

[log]
level = "warn"   # no per-request access log, like nginx's access_log off

[[pool]]
name = "sim"
max_conns = $SLOTS
max_fails = 3
fail_timeout = "10s"

[pool.health]
path = "/health"
interval = "1s"
rise = 2
fall = 2

[pool.queue]
max_depth = 50
max_wait = "5s"
EOF
        for p in "$@"; do
            printf '\n[[pool.servers]]\naddr = "127.0.0.1:%s"\n' "$p"
        done
        cat <<EOF

[[route]]
name = "all"
path_prefix = "/"
pool = "sim"

[route.retry]
attempts = 3
on = ["connect_error", "429", "502", "503", "504"]
backoff_base = "100ms"
backoff_max = "2s"

[route.timeouts]
total = "15s"
EOF
    } >"$WORK/$phase.toml"
    "$BIN" check --config "$WORK/$phase.toml" >"$WORK/$phase-check.txt" 2>&1 ||
        die "ballast rejected the generated config: $(cat "$WORK/$phase-check.txt")"
    log "$phase: starting ballast on port $port (admin $admin, threads $THREADS)"
    # RUST_LOG would override the config's log level: drop it.
    start_bg INT "$WORK/$phase-proxy.log" env -u RUST_LOG "$BIN" --config "$WORK/$phase.toml" run
    PROXY_PID=${PIDS[-1]}
    wait_http "http://127.0.0.1:$admin/healthz" "$PROXY_PID" "ballast"
    wait_http "http://127.0.0.1:$port/health" "$PROXY_PID" "ballast"
}

start_nginx() { # start_nginx PHASE PORT B1 B2 B3
    local phase=$1 port=$2 servers="" p
    shift 2
    for p in "$@"; do
        servers+="
        server 127.0.0.1:$p max_conns=$SLOTS max_fails=3 fail_timeout=10s;"
    done
    mkdir -p "$WORK/$phase"
    local nginx_v temp_paths m
    nginx_v=$("$NGINX" -V 2>&1 || true)
    temp_paths="client_body_temp_path $WORK/$phase/body;
    proxy_temp_path $WORK/$phase/proxy;"
    for m in fastcgi uwsgi scgi; do
        [[ $nginx_v == *"--without-http_${m}_module"* ]] ||
            temp_paths+="
    ${m}_temp_path $WORK/$phase/$m;"
    done
    local timeout_s=$((TIMEOUT_US / 1000000))
    ((timeout_s > 0)) || timeout_s=1
    cat >"$WORK/$phase.conf" <<EOF
worker_processes $THREADS;
pid $WORK/$phase/nginx.pid;
error_log $WORK/$phase-error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    $temp_paths

    upstream sim {
        # Without a shared zone, max_conns and the max_fails counters are
        # per worker process: with 2 workers a backend could get 2x max_conns.
        zone sim 64k;
        least_conn;$servers
        keepalive 32;
        # No "queue" here: it is NGINX Plus only. When every server is at
        # max_conns, open-source nginx answers 502 at once.
    }

    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout 15s;
            proxy_next_upstream error timeout http_502 http_503 http_504 http_429 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 15s;
        }
    }
}
EOF
    "$NGINX" -t -q -e "$WORK/$phase-error.log" -p "$WORK/$phase" -c "$WORK/$phase.conf" ||
        die "nginx rejected the generated config (see $WORK/$phase-error.log)"
    log "$phase: starting nginx on port $port (worker_processes $THREADS)"
    start_bg TERM "$WORK/$phase-proxy.log" "$NGINX" -e "$WORK/$phase-error.log" -p "$WORK/$phase" \
        -c "$WORK/$phase.conf" -g 'daemon off;'
    PROXY_PID=${PIDS[-1]}
    wait_http "http://127.0.0.1:$port/health" "$PROXY_PID" "nginx"
}

metrics_snapshot() { # metrics_snapshot ADMIN OUT
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" >"$2" || : >"$2"
}

# Fault schedule: "offset_us action", sorted.
EVENTS=()
if ((FLAP_US > 0)); then
    for ((t = FLAP_US; t < DUR_US; t += FLAP_US)); do
        EVENTS+=("$t flap")
    done
fi
if ((KILL_US >= 0 && KILL_US < DUR_US)); then
    EVENTS+=("$KILL_US kill")
fi
if ((${#EVENTS[@]})); then
    mapfile -t EVENTS < <(printf '%s\n' "${EVENTS[@]}" | sort -n -k1,1)
fi
DURATION_S=$(awk "BEGIN{print $DUR_US/1e6}")
NORMAL_FAULT="{\"kind\":\"none\",\"latency\":\"$LATENCY\"}"
BUSY_FAULT='{"kind":"status","code":503}'

run_phase() { # run_phase PROXY: fresh backends, the proxy, warm-up, load + faults, collect
    local proxy=$1 ports b1 b2 b3 pport aport i
    read -r -a ports < <(free_ports 5)
    b1=${ports[0]} b2=${ports[1]} b3=${ports[2]} pport=${ports[3]} aport=${ports[4]}
    local bports=("$b1" "$b2" "$b3") bpids=()
    log "$proxy: starting 3 simulated backends (one process each) on ports ${bports[*]}, latency $LATENCY"
    for i in 0 1 2; do
        start_bg INT "$WORK/$proxy-b$((i + 1)).log" env -u RUST_LOG "$BIN" sim \
            --listen "127.0.0.1:${bports[i]}" --name "b$((i + 1))" --latency "$LATENCY"
        bpids+=("${PIDS[-1]}")
    done
    for i in 0 1 2; do
        wait_http "http://127.0.0.1:${bports[i]}/health" "${bpids[i]}" "backend b$((i + 1))"
    done
    echo "${bports[*]}" >"$WORK/$proxy-backends.txt"

    case $proxy in
    ballast) start_ballast "$proxy" "$pport" "$aport" "${bports[@]}" ;;
    nginx) start_nginx "$proxy" "$pport" "${bports[@]}" ;;
    esac
    local target="127.0.0.1:$pport"

    if ((WARMUP_REQUESTS > 0)); then
        log "$proxy: warm-up, $WARMUP_REQUESTS requests at 10 req/s (not reported)"
        client_cmd "$proxy-warmup" "$target" 10 "$(awk "BEGIN{print $WARMUP_REQUESTS/10}")" \
            "$WORK/$proxy-warmup.json"
        "${CLIENT_CMD[@]}" >"$WORK/$proxy-warmup.log" 2>&1 ||
            die "warm-up client against $proxy failed: $(tail -n 5 "$WORK/$proxy-warmup.log")"
    fi
    for i in 0 1 2; do
        curl -sf -o /dev/null --max-time 2 -XPOST "http://127.0.0.1:${bports[i]}/_sim/reset" ||
            die "cannot reset the stats of backend b$((i + 1))"
    done

    local sampler_pid=
    if [[ $proxy == ballast ]]; then
        metrics_snapshot "$aport" "$WORK/$proxy-metrics-before.txt"
        start_bg TERM "$WORK/$proxy-status-samples.txt" status_sampler "http://127.0.0.1:$aport/status"
        sampler_pid=${PIDS[-1]}
    fi

    # Client and fault driver share t0 (wall clock), 1s from now.
    local t0_us client_pid
    t0_us=$(($(now_us) + 1000000))
    log "$proxy: offering $RATE req/s for $DURATION; faults: ${#EVENTS[@]} events"
    client_cmd "$proxy" "$target" "$RATE" "$DURATION_S" "$WORK/$proxy-client.json" \
        "$(awk "BEGIN{printf \"%.6f\", $t0_us/1e6}")"
    start_bg TERM "$WORK/$proxy-client.log" "${CLIENT_CMD[@]}"
    client_pid=${PIDS[-1]}

    local ev at action busy=0 code
    : >"$WORK/$proxy-faults.txt"
    for ev in "${EVENTS[@]}"; do
        read -r at action <<<"$ev"
        sleep_until_us $((t0_us + at))
        case $action in
        flap)
            if ((busy)); then
                code=$(sim_fault "$b2" "$NORMAL_FAULT")
                busy=0
                action="b2 normal"
            else
                code=$(sim_fault "$b2" "$BUSY_FAULT")
                busy=1
                action="b2 503"
            fi
            ;;
        kill)
            sim_stats "$b3" "$WORK/$proxy-b3-stats.json"
            stop_bg "${bpids[2]}" KILL
            code=killed
            action="b3 killed"
            ;;
        esac
        printf '%s %s %s\n' "$(awk "BEGIN{printf \"%.3f\", ($(now_us) - $t0_us)/1e6}")" \
            "${action// /_}" "$code" >>"$WORK/$proxy-faults.txt"
    done

    local rc=0
    wait "$client_pid" || rc=$?
    forget_bg "$client_pid"
    ((rc == 0)) || die "load client against $proxy failed: $(tail -n 5 "$WORK/$proxy-client.log")"

    if [[ -n $sampler_pid ]]; then
        stop_bg "$sampler_pid"
        metrics_snapshot "$aport" "$WORK/$proxy-metrics-after.txt"
        curl -s --max-time 5 "http://127.0.0.1:$aport/status" >"$WORK/$proxy-status-after.json" || true
    fi
    kill -0 "$PROXY_PID" 2>/dev/null || die "$proxy died during the run"
    for i in 0 1 2; do
        local f="$WORK/$proxy-b$((i + 1))-stats.json"
        if [[ ! -s $f ]]; then
            if kill -0 "${bpids[i]}" 2>/dev/null; then
                sim_stats "${bports[i]}" "$f"
            else
                echo '{}' >"$f"
            fi
        fi
    done
    # Stop this phase: the proxy, then the backends still running.
    stop_bg "$PROXY_PID" "$([[ $proxy == nginx ]] && echo TERM || echo INT)"
    for i in 0 1 2; do
        if kill -0 "${bpids[i]}" 2>/dev/null; then
            stop_bg "${bpids[i]}" INT
        fi
    done
    echo "$t0_us" >"$WORK/$proxy-t0.txt"
}

# ---------------------------------------------------------------- run
CORES=$(nproc)
for p in $PROXIES; do
    run_phase "$p"
done

# ---------------------------------------------------------------- report
setup_results
JSON_OUT=$RESULTS_DIR/busy-$STAMP.json

STAMP=$STAMP REV=$REV CORES=$CORES RATE=$RATE DURATION=$DURATION LATENCY=$LATENCY \
    LAT_US=$LAT_US DUR_US=$DUR_US SLOTS=$SLOTS FLAP_EVERY=$FLAP_EVERY FLAP_US=$FLAP_US \
    KILL_AT=$KILL_AT KILL_US=$KILL_US CLIENT_TIMEOUT=$CLIENT_TIMEOUT THREADS=$THREADS \
    PROXIES="$PROXIES" WARMUP_REQUESTS=$WARMUP_REQUESTS \
    python3 - "$WORK" "$JSON_OUT" <<'EOF'
import collections, json, os, re, sys

work, out = sys.argv[1], sys.argv[2]
E = os.environ
proxies = E["PROXIES"].split()
slots = int(E["SLOTS"])
lat_s = int(E["LAT_US"]) / 1e6
capacity = 3 * slots / lat_s
rate = float(E["RATE"])

def read(name, default=None):
    p = os.path.join(work, name)
    if not os.path.exists(p):
        return default
    with open(p) as f:
        return f.read()

def prom(text):
    """Counter-ish lines of a Prometheus text page: {"name{labels}": value}."""
    m = {}
    for line in (text or "").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            m[k] = float(v)
        except ValueError:
            pass
    return m

KEEP = re.compile(r"ballast_(requests_total|retries_total|upstream_attempts_total|shed_total"
                  r"|upstream_ejections_total)\b")

res = {}
for p in proxies:
    c = json.loads(read(f"{p}-client.json"))
    r = {"client": c}
    n = c["requests"]
    errs = {k: v for k, v in c["outcomes"].items() if k != "2xx"}
    r["ok_share"] = c["ok"] / n if n else 0.0
    r["error_shares"] = {k: v / n for k, v in sorted(errs.items(), key=lambda kv: -kv[1])}
    s503 = c["by_status"].get("503", {"n": 0, "with_retry_after": 0})
    r["status_503"] = {"n": s503["n"], "with_retry_after": s503["with_retry_after"]}
    peaks = {}
    stats = {}
    for i in (1, 2, 3):
        st = json.loads(read(f"{p}-b{i}-stats.json", "{}") or "{}")
        stats[f"b{i}"] = st
        peaks[f"b{i}"] = st.get("peak_in_flight")
    r["backend_stats"] = stats
    r["peak_in_flight"] = peaks
    r["backend_ports"] = (read(f"{p}-backends.txt") or "").split()
    faults = []
    for line in (read(f"{p}-faults.txt") or "").splitlines():
        t, action, code = line.split()
        faults.append({"t_s": float(t), "action": action.replace("_", " "), "result": code})
    r["fault_events"] = faults
    logf = "ballast-proxy.log" if p == "ballast" else "nginx-error.log"
    log_text = read(logf, "") or ""
    lines = log_text.splitlines()
    # Group log lines by message shape (numbers, addresses and times masked).
    shapes = collections.Counter()
    for line in lines:
        body = re.sub(r"^\S+\s+\S+\s+", "", line) if p == "nginx" else line
        body = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "T", body)
        body = re.sub(r"\d+(\.\d+)*", "N", body)
        shapes[body[:200]] += 1
    r["proxy_log"] = {"file": logf, "lines": len(lines), "last": lines[-10:],
                      "by_shape": shapes.most_common(15)}
    if p == "ballast":
        before = prom(read("ballast-metrics-before.txt"))
        after = prom(read("ballast-metrics-after.txt"))
        r["metrics_delta"] = {k: v - before.get(k, 0.0) for k, v in sorted(after.items())
                              if KEEP.match(k) and v - before.get(k, 0.0)}
        t0 = int(read("ballast-t0.txt")) / 1e6
        samples = []
        for line in (read("ballast-status-samples.txt") or "").splitlines():
            ts, _, js = line.partition(" ")
            try:
                st = json.loads(js)
            except ValueError:
                continue
            if not st.get("pools"):
                continue
            pool = st["pools"][0]
            samples.append({
                "t_s": round(int(ts) / 1e6 - t0, 2),
                "queue": pool.get("queue_depth"),
                "servers": [[s.get("state"), s.get("outstanding")] for s in pool.get("servers", [])],
            })
        r["status_samples"] = samples
        mo = [max((smp["servers"][i][1] or 0) for smp in samples) if samples else None for i in range(3)]
        r["max_outstanding_sampled"] = mo
        r["max_queue_sampled"] = max((smp["queue"] or 0) for smp in samples) if samples else None
        # State changes per server, from the samples.
        changes = {f"b{i+1}": [] for i in range(3)}
        prev = [None, None, None]
        for smp in samples:
            for i, (state, _) in enumerate(smp["servers"][:3]):
                if state != prev[i]:
                    changes[f"b{i+1}"].append([smp["t_s"], state])
                    prev[i] = state
        r["state_changes"] = changes
    res[p] = r

# ---------------------------------------------------------------- table
def pctf(x):
    return "%.1f" % (100 * x)

def short_kind(k):
    """Table name of an outcome: the status code, or a short error kind."""
    if k.startswith("status "):
        return k[len("status "):]
    if k.startswith("connect: "):
        return "connect-" + k[len("connect: "):].lower()
    for word in ("timeout", "reset", "closed"):
        if k.startswith(word):
            return word if "mid-body" not in k else word + "-mid-body"
    return k.replace(" ", "-")

def errors_cell(r):
    merged = collections.Counter()
    for k, v in r["error_shares"].items():
        merged[short_kind(k)] += v
    return " ".join("%s:%s%%" % (k, pctf(v)) for k, v in merged.most_common()) or "-"

flap = "b2 flaps 503 every %s" % E["FLAP_EVERY"] if int(E["FLAP_US"]) > 0 else "b2 steady"
kill = "b3 killed at %s" % E["KILL_AT"] if 0 <= int(E["KILL_US"]) < int(E["DUR_US"]) else "b3 not killed"
print("busy: 3 backends x %d slots (%s), offered %s req/s for %s (~%.1fx capacity); %s, %s" % (
    slots, E["LATENCY"], E["RATE"], E["DURATION"], rate / capacity, flap, kill))
cells = []
for p in proxies:
    r = res[p]
    lat = r["client"]["latency_ms_ok"] or {}
    peaks = "/".join("-" if r["peak_in_flight"][b] is None else str(r["peak_in_flight"][b])
                     for b in ("b1", "b2", "b3"))
    cells.append((p, pctf(r["ok_share"]), errors_cell(r),
                  "%.0f" % lat["p50"] if lat else "-", "%.0f" % lat["p99"] if lat else "-", peaks))
w_err = max(26, max(len(c[2]) for c in cells) + 2)
fmt = "%-8s %-6s %-" + str(w_err) + "s %-8s %-8s %s"
print(fmt % ("proxy", "ok%", "errors", "p50(ms)", "p99(ms)", "peak b1/b2/b3"))
for c in cells:
    print(fmt % c)

print()
for p in proxies:
    r = res[p]
    c = r["client"]
    s = r["status_503"]
    lag = c["start_lag_ms"] or {}
    print("%s: %d requests, %d ok; 503s with Retry-After: %d of %d; successes served by %s;"
          " client start lag p99 %.1f ms, open at most %d" % (
              p, c["requests"], c["ok"], s["with_retry_after"], s["n"],
              " ".join("%s=%d" % kv for kv in sorted(c["served_by"].items())), lag.get("p99", float("nan")),
              c["peak_open"]))
    bad = c["latency_ms_by_error"]
    if bad:
        print("  error latency (ms, from due time): " + "; ".join(
            "%s p50 %.0f max %.0f" % (k, d["p50"], d["max"]) for k, d in sorted(bad.items())))
    if p == "ballast":
        md = r.get("metrics_delta") or {}
        short = lambda k: k.replace("ballast_", "")
        print("  metrics during the run: " + (", ".join("%s %g" % (short(k), v) for k, v in md.items()) or "-"))
        print("  max outstanding per server seen in /status samples: %s; max queue depth: %s" % (
            "/".join(str(x) for x in r["max_outstanding_sampled"]), r["max_queue_sampled"]))
        print("  server states: " + "; ".join(
            "%s %s" % (b, " ".join("%.1fs:%s" % (t, s) for t, s in ch)) for b, ch in r["state_changes"].items()))
    over = {b: v for b, v in r["peak_in_flight"].items() if v is not None and v > slots}
    if over:
        print("  NOTE: backends saw more than %d in flight: %s" % (slots, over))
    to = sum(v for k, v in c["outcomes"].items() if k.startswith("timeout"))
    if to:
        print("  NOTE: %d request(s) hit the client timeout (%s)" % (to, E["CLIENT_TIMEOUT"]))
    print("  faults: " + ", ".join("%.2fs %s" % (f["t_s"], f["action"]) for f in r["fault_events"]))

doc = {
    "benchmark": "busy",
    "timestamp": E["STAMP"],
    "ballast_rev": E["REV"],
    "machine": {"nproc": int(E["CORES"]),
                "note": "the client, the backends and the proxy share these cores"},
    "params": {
        "rate": rate, "duration": E["DURATION"], "latency": E["LATENCY"], "slots": slots,
        "capacity_req_per_s": capacity, "offered_vs_capacity": rate / capacity,
        "flap_every": E["FLAP_EVERY"], "kill_at": E["KILL_AT"], "client_timeout": E["CLIENT_TIMEOUT"],
        "proxy_threads": int(E["THREADS"]), "warmup_requests": int(E["WARMUP_REQUESTS"]),
        "path": "/v1/chat/completions",
    },
    "results": res,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
EOF

for p in $PROXIES; do
    f=$([[ $p == ballast ]] && echo ballast-proxy.log || echo nginx-error.log)
    if [[ -s $WORK/$f ]]; then
        printf '\n%s (%s): %s line(s) logged, last ones:\n' "$p" "$f" "$(wc -l <"$WORK/$f")"
        tail -n 5 "$WORK/$f"
    fi
done
printf '\nJSON: %s\n' "$JSON_OUT"
