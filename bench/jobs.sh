#!/usr/bin/env bash
# A burst of BURST requests (10x what the backends hold at once) beside
# steady interactive traffic, offered two ways through the same gateway:
#   sync    the burst as ordinary requests: they queue (max_wait 10 s) and
#           are shed with 503 when the queue cannot drain in time
#   async   the burst as jobs (Prefer: respond-async): 202 at once, run with
#           the capacity the interactive requests leave, polled until done
# Two simulated servers, max_conns 4 each (8 at once), LATENCY per answer.
# Reported per mode (medians of ROUNDS, interleaved): the interactive
# requests' success share and p50/p99, the burst's success share and p99
# (sync) or submission time, time until every job finished and jobs lost
# (async).
#
# Env: ROUNDS (3), DURATION (30 s), BURST (80), LATENCY (500ms),
# INTERACTIVE_EVERY (0.25 s), BALLAST_BIN, KEEP_WORKDIR=1. See bench/README.md.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-30}
BURST=${BURST:-80}
LATENCY=${LATENCY:-500ms}
INTERACTIVE_EVERY=${INTERACTIVE_EVERY:-0.25}

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tools curl:curl python3:python3
build_ballast
setup_workdir
setup_results

read -r -a ports <<<"$(free_ports 4)"
proxy_port=${ports[2]}
admin_port=${ports[3]}

results="$WORK/runs.jsonl"
for round in $(seq "$ROUNDS"); do
    for mode in sync async; do
        start_bg TERM "$WORK/sim.log" "$BIN" sim --listen "127.0.0.1:${ports[0]}" \
            --listen "127.0.0.1:${ports[1]}" --latency "$LATENCY"
        SIM_PID=${PIDS[-1]}
        wait_http "http://127.0.0.1:${ports[0]}/health" "$SIM_PID" sim
        rm -rf "$WORK/jobs"
        cat >"$WORK/ballast.toml" <<TOML
[server]
listen = ["127.0.0.1:$proxy_port"]
threads = 1
[admin]
listen = "127.0.0.1:$admin_port"
[log]
level = "warn"
[jobs]
dir = "$WORK/jobs"
workers = 8
[[pool]]
name = "sim"
max_conns = 4
[pool.queue]
max_depth = 100
max_wait = "10s"
[[pool.servers]]
addr = "127.0.0.1:${ports[0]}"
[[pool.servers]]
addr = "127.0.0.1:${ports[1]}"
[[route]]
name = "chat"
path_prefix = "/v1/"
pool = "sim"
openai = true
[route.jobs]
enabled = true
TOML
        start_bg TERM "$WORK/ballast.log" "$BIN" --config "$WORK/ballast.toml" run
        GW_PID=${PIDS[-1]}
        wait_http "http://127.0.0.1:$admin_port/readyz" "$GW_PID" ballast
        log "round $round: $mode"
        out=$(cd "$BENCH_DIR" && python3 jobs_client.py --target "127.0.0.1:$proxy_port" \
            --mode "$mode" --duration "$DURATION" --burst "$BURST" \
            --interactive-every "$INTERACTIVE_EVERY")
        printf '{"round": %s, "run": %s}\n' "$round" "$out" >>"$results"
        stop_bg "$GW_PID"
        stop_bg "$SIM_PID"
    done
done

python3 - "$results" "$RESULTS_DIR/jobs-$STAMP.json" "$REV" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else None
by = {}
for r in runs:
    by.setdefault(r["run"]["mode"], []).append(r["run"])
summary = {}
for mode, rs in by.items():
    i = [r["interactive"] for r in rs]
    b = [r["burst"] for r in rs]
    s = summary[mode] = {
        "interactive_success": med([x["success_share"] for x in i]),
        "interactive_p50_ms": med([x["latency_ms"]["p50"] for x in i if x["latency_ms"]]),
        "interactive_p99_ms": med([x["latency_ms"]["p99"] for x in i if x["latency_ms"]]),
    }
    if mode == "sync":
        s["burst_success"] = med([x["success_share"] for x in b])
        s["burst_p99_ms"] = med([x["latency_ms"]["p99"] for x in b if x["latency_ms"]])
    else:
        s["burst_accepted"] = med([x["accepted"] for x in b])
        s["submit_p99_ms"] = med([x["submit_ms"]["p99"] for x in b])
        s["all_jobs_done_s"] = med([x["all_done_s"] for x in b if x["all_done_s"] is not None])
        s["jobs_failed"] = sum(x["failed"] for x in b)
        s["jobs_lost"] = sum(x["lost"] for x in b)
    print(mode, json.dumps(s))
json.dump({"rev": sys.argv[3], "summary": summary, "runs": runs}, open(sys.argv[2], "w"), indent=1)
print(f"\nresults: {sys.argv[2]}")
PY
