#!/usr/bin/env bash
# Memory per open, idle SSE stream of a one-thread gateway, and where it
# goes. The gateway (core 0) fronts 3 simulated backends whose first token
# comes after TOKEN_INTERVAL; `loadgen streams` (core 1) opens STREAMS
# streams. Idle RSS per stream is the gateway's peak RSS between "every
# request sent" and "first token anywhere", less its RSS before the load,
# over the streams open.
#
# With PROFILE=1, `perf record -e page-faults` runs on the gateway during
# the load: every page it touches for the first time is a sample, with its
# call stack, so the report says which allocation sites the resident memory
# comes from, under the allocator the gateway really uses (mimalloc; massif
# and heaptrack see only the system allocator). Transient allocations that
# the allocator gives back and touches again show up too: read the report
# next to the RSS figure.
#
# Env: STREAMS (3000), TOKEN_INTERVAL (5000ms), PROFILE (0), TOP (16 rows),
# BALLAST_BIN / LOADGEN_BIN (skip the build), KEEP_WORKDIR=1.
set -euo pipefail

STREAMS=${STREAMS:-3000}
TOKEN_INTERVAL=${TOKEN_INTERVAL:-5000ms}
PROFILE=${PROFILE:-0}
TOP=${TOP:-16}

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer: $STREAMS"
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [[ $PROFILE == 1 ]] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [[ -z ${BALLAST_BIN:-} || -z ${LOADGEN_BIN:-} ]]; then
    command -v cmake >/dev/null 2>&1 || need+=(cmake)
fi
apt_install "${need[@]}"
if [[ -z ${BALLAST_BIN:-} || -z ${LOADGEN_BIN:-} ]]; then
    build_release # as bench/run builds them: the same binary it measures
fi
BIN=${BALLAST_BIN:-$REPO_DIR/target/release/ballast}
LOADGEN=${LOADGEN_BIN:-$REPO_DIR/target/release/loadgen}

# Two descriptors per stream in the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 2 * STREAMS + 200)) ||
    log "warning: ulimit -n is $(ulimit -n); $STREAMS streams need about $((2 * STREAMS + 200))"

setup_workdir
read -r -a ports < <(free_ports 5)
start_bg INT "$WORK/sim.log" taskset -c 1 env -u RUST_LOG "$BIN" sim \
    --listen "127.0.0.1:${ports[0]}" --listen "127.0.0.1:${ports[1]}" \
    --listen "127.0.0.1:${ports[2]}" --token-interval "$TOKEN_INTERVAL"
SIM_PID=${PIDS[-1]}
cat >"$WORK/ballast.toml" <<EOF
[server]
listen = ["127.0.0.1:${ports[3]}"]
threads = 1

[admin]
listen = "127.0.0.1:${ports[4]}"

[log]
level = "warn"

[[pool]]
name = "sim"
max_fails = 3
fail_timeout = "30s"
servers = [
  { addr = "127.0.0.1:${ports[0]}" },
  { addr = "127.0.0.1:${ports[1]}" },
  { addr = "127.0.0.1:${ports[2]}" },
]

[[route]]
name = "all"
path_prefix = "/"
pool = "sim"
openai = true
EOF
"$BIN" check --config "$WORK/ballast.toml" >/dev/null || die "ballast rejected the generated config"
start_bg INT "$WORK/ballast.log" taskset -c 0 env -u RUST_LOG "$BIN" --config "$WORK/ballast.toml" run
GW_PID=${PIDS[-1]}
wait_http "http://127.0.0.1:${ports[0]}/v1/models" "$SIM_PID" "ballast sim"
wait_http "http://127.0.0.1:${ports[4]}/healthz" "$GW_PID" "ballast"

body=$WORK/stream.json
echo '{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}' >"$body"
streams() { # streams N OUT: open N streams through the gateway, loadgen's JSON to OUT
    taskset -c 1 "$LOADGEN" streams --target "127.0.0.1:${ports[3]}" --streams "$1" \
        --body-file "$body" --batch 250 --batch-interval-ms 100 --timeout 60 >"$2"
}

log "warm-up: 50 streams"
streams 50 "$WORK/warmup.json"
base=$(rss_kib "$GW_PID")
if [[ $PROFILE == 1 ]]; then
    start_bg INT "$WORK/perf.log" perf record -e page-faults -c 1 --call-graph dwarf,32768 \
        -p "$GW_PID" -o "$WORK/perf.data"
    PERF_PID=${PIDS[-1]}
    sleep 1 # perf attaches before the load starts
fi
log "opening $STREAMS streams (first token after $TOKEN_INTERVAL)"
streams "$STREAMS" "$WORK/load.json" &
load=$!
: >"$WORK/rss.txt"
while kill -0 "$load" 2>/dev/null; do
    echo "$(date +%s%3N) $(rss_kib "$GW_PID")" >>"$WORK/rss.txt"
    sleep 0.1
done
wait "$load" || die "loadgen failed"
if [[ $PROFILE == 1 ]]; then
    stop_bg "$PERF_PID" INT
    perf script -i "$WORK/perf.data" -F ip,sym 2>/dev/null >"$WORK/stacks.txt"
fi

python3 - "$WORK" "$base" "$PROFILE" "$TOP" <<'EOF'
import collections, json, re, sys
work, base, profile, top = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
r = json.load(open(f"{work}/load.json"))
samples = [tuple(map(int, l.split())) for l in open(f"{work}/rss.txt") if len(l.split()) == 2]
a, b = r.get("all_sent_ms"), r.get("first_event_ms")
idle = [v for t, v in samples if a and b and a <= t <= b]
n = max(1, r["max_open"])
print(f"streams ok {r['ok']}, failed {sum(r['failed'].values()) if isinstance(r['failed'], dict) else r['failed']}, "
      f"most open at once {r['max_open']}")
print(f"RSS before the load {base} KiB")
if idle:
    print(f"idle RSS per stream   {(max(idle) - base) / n:6.1f} KiB")
else:
    print("no idle window (every request was not sent before the first token): raise TOKEN_INTERVAL")
print(f"active RSS per stream {(max(v for _, v in samples) - base) / n:6.1f} KiB")
if not profile:
    sys.exit(0)
# Each sample is one page touched for the first time; group them by the
# first frames that are not the allocator's or the standard library's.
skip = re.compile(r"^(_mi_|mi_|__mem|__)|^<?(alloc|core)::|\[unknown\]")
sites, total = collections.Counter(), 0
for block in open(f"{work}/stacks.txt").read().split("\n\n"):
    frames = [l.split(None, 1)[1].replace(" (inlined)", "") for l in block.strip().splitlines()
              if len(l.split(None, 1)) == 2]
    if not frames:
        continue
    total += 1
    ours = [f for f in frames if not skip.search(f)][:2]
    sites[" <- ".join(f[:90] for f in ours) or frames[0]] += 1
print(f"\npages first touched during the load, by where ({total} samples; perf may drop some):")
for site, k in sites.most_common(top):
    print(f"{100 * k / total:5.1f}%  {site}")
EOF
