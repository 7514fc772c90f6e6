#!/usr/bin/env bash
# Many concurrent slow SSE streams (streaming chat completions), side by side:
#   direct  — the streams straight to the simulated backends
#   ballast — the same streams through the gateway in front of the same backends
# Reports streams OK/failed, time to first body byte, and Ballast's memory:
# idle RSS, peak RSS while all streams are open, and RSS per open stream.
#
# Env: STREAMS (default 1000), TOKENS (20), TOKEN_INTERVAL (100ms),
# THREADS (Ballast server.threads, 2), BACKENDS (simulated servers, 4),
# BATCH (connections opened together, 200), BATCH_INTERVAL (pause between
# batches, 10ms), WARMUP_STREAMS (unreported streams per target first, 50),
# BALLAST_BIN (skip the cargo build and use this binary), KEEP_WORKDIR=1.
# See bench/README.md.
set -euo pipefail

STREAMS=${STREAMS:-1000}
TOKENS=${TOKENS:-20}
TOKEN_INTERVAL=${TOKEN_INTERVAL:-100ms}
THREADS=${THREADS:-2}
BACKENDS=${BACKENDS:-4}
BATCH=${BATCH:-200}
BATCH_INTERVAL=${BATCH_INTERVAL:-10ms}
WARMUP_STREAMS=${WARMUP_STREAMS:-50}
SAMPLE_INTERVAL=0.1 # seconds between RSS samples
LOAD_PATH=/v1/chat/completions

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer: $STREAMS"
[[ $BACKENDS =~ ^[1-9][0-9]*$ ]] || die "BACKENDS must be a positive integer: $BACKENDS"
[[ $TOKENS =~ ^[1-9][0-9]*$ ]] || die "TOKENS must be a positive integer: $TOKENS"

# ---------------------------------------------------------------- prerequisites
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [[ -z ${BALLAST_BIN:-} ]]; then
    command -v cmake >/dev/null 2>&1 || need+=(cmake)
fi
apt_install "${need[@]}"
build_ballast

# ---------------------------------------------------------------- limits
# Ballast holds two sockets per stream (client + upstream); everything started
# from here inherits this limit.
want_fds=$((2 * STREAMS + 4096))
if (($(ulimit -n) < want_fds)); then
    target_fds=$((want_fds > 65536 ? want_fds : 65536))
    ulimit -n "$target_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    if (($(ulimit -n) >= want_fds)); then
        log "raised ulimit -n to $(ulimit -n)"
    else
        # Without CAP_SYS_RESOURCE the hard limit cannot be raised: run anyway,
        # streams beyond the limit show up as failures.
        log "warning: ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)), below the ~$want_fds that $STREAMS streams need" \
            "(Ballast holds 2 sockets per stream): expect failures"
    fi
fi
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
if ((STREAMS > port_hi - port_lo)); then
    log "warning: $STREAMS streams to one address but only $((port_hi - port_lo)) ephemeral ports"
fi

# ---------------------------------------------------------------- work dir, ports
setup_workdir
read -r -a ports < <(free_ports $((BACKENDS + 2)))
BACKEND_PORTS=("${ports[@]:0:BACKENDS}")
BALLAST_PORT=${ports[BACKENDS]}
ADMIN_PORT=${ports[BACKENDS + 1]}

# ---------------------------------------------------------------- backends
log "starting $BACKENDS simulated backends on ports ${BACKEND_PORTS[*]} ($TOKENS tokens @ $TOKEN_INTERVAL)"
sim_args=()
for p in "${BACKEND_PORTS[@]}"; do
    sim_args+=(--listen "127.0.0.1:$p")
done
start_bg INT "$WORK/sim.log" env -u RUST_LOG "$BIN" sim "${sim_args[@]}" \
    --tokens "$TOKENS" --token-interval "$TOKEN_INTERVAL"
SIM_PID=${PIDS[-1]}
for p in "${BACKEND_PORTS[@]}"; do
    wait_http "http://127.0.0.1:$p/v1/models" "$SIM_PID" "ballast sim"
done

# ---------------------------------------------------------------- ballast
{
    cat <<EOF
[server]
listen = ["127.0.0.1:$BALLAST_PORT"]
threads = $THREADS

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "warn"   # no per-request access log

[[pool]]
name = "sim"
max_fails = 3
fail_timeout = "30s"
EOF
    for p in "${BACKEND_PORTS[@]}"; do
        printf '\n[[pool.servers]]\naddr = "127.0.0.1:%s"\n' "$p"
    done
    cat <<EOF

[[route]]
name = "all"
path_prefix = "/"
pool = "sim"
EOF
} >"$WORK/ballast.toml"
"$BIN" check --config "$WORK/ballast.toml" >/dev/null || die "ballast rejected the generated config"
log "starting ballast on port $BALLAST_PORT (admin $ADMIN_PORT, threads $THREADS)"
# RUST_LOG would override the config's log level: drop it.
start_bg INT "$WORK/ballast.log" env -u RUST_LOG "$BIN" --config "$WORK/ballast.toml" run
BALLAST_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$BALLAST_PID" "ballast"
wait_http "http://127.0.0.1:$BALLAST_PORT/v1/models" "$BALLAST_PID" "ballast"

# ---------------------------------------------------------------- helpers
rss_sampler() { # rss_sampler PID: "epoch_seconds rss_kib" every SAMPLE_INTERVAL until PID exits
    local pid=$1 v
    while v=$(rss_kib "$pid" 2>/dev/null); do
        echo "$EPOCHREALTIME $v"
        sleep "$SAMPLE_INTERVAL"
    done
}

huge_kib() { # huge_kib PID: AnonHugePages (transparent huge pages) in KiB
    local k v _
    while read -r k v _; do
        if [[ $k == AnonHugePages: ]]; then
            echo "$v"
            return 0
        fi
    done <"/proc/$1/smaps_rollup"
    echo 0
}

cpu_ticks() { # cpu_ticks PID: utime + stime in clock ticks
    local f
    read -r -a f <"/proc/$1/stat"
    echo $((f[13] + f[14]))
}

client() { # client LABEL OUT STREAMS TARGET...: run the load client
    local label=$1 out=$2 n=$3 args=() target
    shift 3
    for target in "$@"; do
        args+=(--target "$target")
    done
    python3 "$BENCH_DIR/sse_client.py" "${args[@]}" --streams "$n" --tokens "$TOKENS" \
        --batch "$BATCH" --batch-interval "$BATCH_INTERVAL" --label "$label" >"$out" 2>"$out.err" ||
        die "load client against $label failed: $(tail -n 5 "$out.err")"
}

declare -A TARGETS
DIRECT_TARGETS=()
for p in "${BACKEND_PORTS[@]}"; do
    DIRECT_TARGETS+=("127.0.0.1:$p")
done
TARGETS[direct]="${DIRECT_TARGETS[*]}"
TARGETS[ballast]="127.0.0.1:$BALLAST_PORT"

# ---------------------------------------------------------------- load
CORES=$(nproc)
CLK_TCK=$(getconf CLK_TCK)

for t in direct ballast; do
    # shellcheck disable=SC2086 # TARGETS holds a space-separated list
    if ((WARMUP_STREAMS > 0)); then
        log "$t: warm-up, $WARMUP_STREAMS streams"
        client "$t-warmup" "$WORK/client-$t-warmup.json" "$WARMUP_STREAMS" ${TARGETS[$t]}
    fi
    sleep 1
    if [[ $t == ballast ]]; then
        # Idle baseline: median of 5 samples.
        base=()
        for _ in 1 2 3 4 5; do
            base+=("$(rss_kib "$BALLAST_PID")")
            sleep 0.1
        done
        printf '%s\n' "${base[@]}" | sort -n | sed -n 3p >"$WORK/rss-baseline.txt"
        huge_kib "$BALLAST_PID" >"$WORK/huge-baseline.txt"
        start_bg TERM "$WORK/rss-samples.txt" rss_sampler "$BALLAST_PID"
        SAMPLER_PID=${PIDS[-1]}
    fi
    sim_cpu0=$(cpu_ticks "$SIM_PID")
    ballast_cpu0=$(cpu_ticks "$BALLAST_PID")
    log "$t: $STREAMS streams"
    # shellcheck disable=SC2086
    client "$t" "$WORK/client-$t.json" "$STREAMS" ${TARGETS[$t]}
    echo "$(($(cpu_ticks "$SIM_PID") - sim_cpu0)) $(($(cpu_ticks "$BALLAST_PID") - ballast_cpu0))" \
        >"$WORK/cpu-$t.txt"
    if [[ $t == ballast ]]; then
        stop_bg "$SAMPLER_PID"
        sleep 1
        rss_kib "$BALLAST_PID" >"$WORK/rss-after.txt"
        huge_kib "$BALLAST_PID" >"$WORK/huge-after.txt"
        fds=("/proc/$BALLAST_PID/fd/"*)
        echo "${#fds[@]}" >"$WORK/fds-after.txt"
    fi
done

kill -0 "$BALLAST_PID" 2>/dev/null || die "ballast died during the run"
kill -0 "$SIM_PID" 2>/dev/null || die "the simulated backends died during the run"
curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/ballast-metrics.txt" || true

# ---------------------------------------------------------------- report
setup_results
JSON_OUT=$RESULTS_DIR/sse-streams-$STAMP.json

STAMP=$STAMP REV=$REV CORES=$CORES CLK_TCK=$CLK_TCK STREAMS=$STREAMS TOKENS=$TOKENS \
    TOKEN_INTERVAL=$TOKEN_INTERVAL THREADS=$THREADS BACKENDS=$BACKENDS BATCH=$BATCH \
    BATCH_INTERVAL=$BATCH_INTERVAL WARMUP_STREAMS=$WARMUP_STREAMS SAMPLE_INTERVAL=$SAMPLE_INTERVAL \
    FDS=$(ulimit -n) python3 - "$WORK" "$JSON_OUT" <<'EOF'
import json, os, re, sys

work, out = sys.argv[1], sys.argv[2]
E = os.environ
n = int(E["STREAMS"])
tick = float(E["CLK_TCK"])
targets = ["direct", "ballast"]

def read(name):
    with open(os.path.join(work, name)) as f:
        return f.read()

res = {t: json.loads(read(f"client-{t}.json")) for t in targets}
for t in targets:
    sim_ticks, ballast_ticks = map(int, read(f"cpu-{t}.txt").split())
    res[t]["cpu_s"] = {"sim": sim_ticks / tick, "ballast": ballast_ticks / tick}

samples = []
for line in read("rss-samples.txt").splitlines():
    parts = line.split()
    if len(parts) == 2:
        samples.append((float(parts[0]), int(parts[1])))
if not samples:
    raise SystemExit("no RSS samples of ballast were taken")
t0 = samples[0][0]
base_kib = int(read("rss-baseline.txt"))
peak_kib = max(v for _, v in samples)
after_kib = int(read("rss-after.txt"))
huge_base_kib = int(read("huge-baseline.txt"))
huge_after_kib = int(read("huge-after.txt"))
fds_after = int(read("fds-after.txt"))
per_stream_kib = (peak_kib - base_kib) / n
peak_open = res["ballast"]["peak_open"]
per_peak_open_kib = (peak_kib - base_kib) / peak_open if peak_open else float("nan")
b = res["ballast"]
b["rss"] = {
    "baseline_kib": base_kib,
    "peak_kib": peak_kib,
    "after_kib": after_kib,
    "anon_huge_pages_baseline_kib": huge_base_kib,
    "anon_huge_pages_after_kib": huge_after_kib,
    "open_fds_after": fds_after,
    "per_open_stream_kib": per_stream_kib,
    "per_stream_open_at_peak_kib": per_peak_open_kib,
    "samples": [[round(t - t0, 3), v] for t, v in samples],
}

metrics = {}
for line in read("ballast-metrics.txt").splitlines():
    if re.match(r"ballast_(requests_total|stream_aborts_total|streams_active|retries_total"
                r"|upstream_attempts_total|upstream_ejections_total)\b", line):
        k, _, v = line.rpartition(" ")
        metrics[k] = float(v)
b["metrics"] = metrics

d = res["direct"]
def q(r, p):
    return r["ttfb_ms"][p] if r["ttfb_ms"] else float("nan")
added = {"p50_ms": q(b, "p50") - q(d, "p50"), "p99_ms": q(b, "p99") - q(d, "p99")}

mib = lambda kib: kib / 1024.0
mim = {k: v for k, v in E.items() if k.startswith("MIMALLOC_")}
print("sse-streams: N=%d streams x %s tokens @%s; machine: %s cores%s" % (
    n, E["TOKENS"], E["TOKEN_INTERVAL"], E["CORES"],
    "; " + " ".join("%s=%s" % kv for kv in sorted(mim.items())) if mim else ""))
print("%-8s %-6s %-7s %-13s %-13s %-14s %-14s %s" % (
    "target", "ok", "failed", "ttfb_p50(ms)", "ttfb_p99(ms)", "rss_base(MiB)", "rss_peak(MiB)",
    "rss/stream(KiB)"))
for t in targets:
    r = res[t]
    row = ["%-8s" % t, "%-6d" % r["ok"], "%-7d" % r["failed"],
           "%-13.1f" % q(r, "p50"), "%-13.1f" % q(r, "p99")]
    if t == "ballast":
        row += ["%-14.1f" % mib(base_kib), "%-14.1f" % mib(peak_kib), "%.1f" % per_stream_kib]
    else:
        row += ["%-14s" % "-", "%-14s" % "-", "-"]
    print(" ".join(row))
print("added ttfb (ballast - direct): p50 %+.1f ms, p99 %+.1f ms" % (added["p50_ms"], added["p99_ms"]))

# Context for reading the numbers.
print()
for t in targets:
    r = res[t]
    sm = r["stream_ms"] or {}
    lag = r["loop_lag_ms"] or {}
    print("%-8s peak open %d, all %d open together for %s ms, ramp %.0f ms, stream p50/p99 %.0f/%.0f ms;"
          " cpu s: sim %.2f ballast %.2f client %.2f (client loop lag p99 %.1f ms)" % (
        t, r["peak_open"], n,
        "%.0f" % r["all_open_ms"] if r["all_open_ms"] is not None else "-",
        r["ramp_ms"], sm.get("p50", float("nan")), sm.get("p99", float("nan")),
        r["cpu_s"]["sim"], r["cpu_s"]["ballast"], r["client_cpu_s"], lag.get("p99", float("nan"))))
print("ballast RSS 1s after the streams closed: %.1f MiB (transparent huge pages: %.1f MiB; idle: %.1f MiB),"
      " open fds %d" % (mib(after_kib), mib(huge_after_kib), mib(huge_base_kib), fds_after))
for t in targets:
    r = res[t]
    if r["peak_open"] < n:
        print("warning: %s: at most %d of the %d streams were open at the same time (the ramp took"
              " longer than a stream); raise TOKEN_INTERVAL or TOKENS for this many streams" % (
                  t, r["peak_open"], n))
if peak_open < n:
    print("  rss/stream above divides by N; per stream open at the peak: %.1f KiB" % per_peak_open_kib)
for t in targets:
    r = res[t]
    if r["failures"]:
        print("%s failures: %s" % (t, ", ".join("%s: %d" % kv for kv in sorted(r["failures"].items()))))
        for kind, ex in sorted(r["failure_samples"].items()):
            body = ex["response_start"]
            body = body.split("\r\n\r\n", 1)[-1] if body.startswith("HTTP/") else body
            print("  e.g. %s after %s ms: %s" % (
                kind, "%.0f" % ex["after_ms"] if ex["after_ms"] is not None else "-", body[:160] or "(no bytes)"))

doc = {
    "benchmark": "sse-streams",
    "timestamp": E["STAMP"],
    "ballast_rev": E["REV"],
    "machine": {"nproc": int(E["CORES"]),
                "note": "the client, the backends and the gateway share these cores"},
    "params": {
        "streams": n, "tokens": int(E["TOKENS"]), "token_interval": E["TOKEN_INTERVAL"],
        "ballast_threads": int(E["THREADS"]), "backends": int(E["BACKENDS"]),
        "batch": int(E["BATCH"]), "batch_interval": E["BATCH_INTERVAL"],
        "warmup_streams": int(E["WARMUP_STREAMS"]), "rss_sample_interval_s": float(E["SAMPLE_INTERVAL"]),
        "ulimit_n": int(E["FDS"]),
        "mimalloc_env": {k: v for k, v in E.items() if k.startswith("MIMALLOC_")},
    },
    "results": res,
    "added_ttfb_ms": added,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
EOF

# Anything Ballast (or the sim) complained about during the run.
if [[ -s $WORK/ballast.log ]]; then
    printf '\nballast.log: %s line(s) logged, last ones:\n' "$(wc -l <"$WORK/ballast.log")"
    tail -n 5 "$WORK/ballast.log"
fi
if grep -qE ' (WARN|ERROR) ' "$WORK/sim.log"; then
    printf '\nsim.log: %s warning/error line(s), last ones:\n' "$(grep -cE ' (WARN|ERROR) ' "$WORK/sim.log")"
    grep -E ' (WARN|ERROR) ' "$WORK/sim.log" | tail -n 5
fi
printf '\nJSON: %s\n' "$JSON_OUT"
