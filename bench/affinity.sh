#!/usr/bin/env bash
# A multi-turn chat workload (many concurrent conversations with growing
# history behind one shared system prompt) against simulated servers with a
# KV prefix cache, through each router in turn:
#   nginx-rr         nginx, round robin (its default)
#   ballast-lo       Ballast, least outstanding (its default)
#   ballast-prefix   Ballast, balance = "prefix_affinity"
#   sglang-cache     sglang-router (PyPI) --policy cache_aware, if it installs
#   sglang-cache-b4  the same with Ballast's overload leeway
#                    (--balance-abs-threshold 4 --balance-rel-threshold 1.5)
# Every run starts the servers afresh (cold caches). Runs are interleaved
# (each router once per round) and the medians of ROUNDS rounds reported:
# time to first token p50/p99, throughput, and each server's share of the
# requests (max share / mean share).
#
# Env: CONVERSATIONS (32), TURNS (8), SERVERS (4), ROUNDS (3),
# PREFILL (per uncached prompt token, 200us), KV_BLOCKS (per server, 600),
# TOKENS (per answer, 64), TOKEN_INTERVAL (5ms), THINK_MIN/THINK_MAX
# (seconds a user reads before the next question, 0.2/1.0), ROUTERS (all four),
# BALLAST_BIN, KEEP_WORKDIR=1.
# See bench/README.md.
set -euo pipefail

CONVERSATIONS=${CONVERSATIONS:-32}
TURNS=${TURNS:-8}
SERVERS=${SERVERS:-4}
ROUNDS=${ROUNDS:-3}
PREFILL=${PREFILL:-200us}
KV_BLOCKS=${KV_BLOCKS:-600}
TOKEN_INTERVAL=${TOKEN_INTERVAL:-5ms}
TOKENS=${TOKENS:-64}
THINK_MIN=${THINK_MIN:-0.2}
THINK_MAX=${THINK_MAX:-1.0}
ROUTERS=${ROUTERS:-nginx-rr ballast-lo ballast-prefix sglang-cache sglang-cache-b4}

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tools curl:curl python3:python3 nginx:nginx-light
build_ballast
setup_workdir
setup_results

if [[ $ROUTERS == *sglang* ]] && ! python3 -c "import sglang_router" 2>/dev/null; then
    python3 -m pip install -q sglang-router 2>/dev/null ||
        python3 -m pip install -q --break-system-packages sglang-router 2>/dev/null ||
        {
            log "sglang-router cannot be installed: left out"
            ROUTERS=$(tr ' ' '\n' <<<"$ROUTERS" | grep -v '^sglang' | tr '\n' ' ')
        }
fi

read -r -a ports <<<"$(free_ports $((SERVERS + 2)))"
sim_ports=("${ports[@]:0:SERVERS}")
proxy_port=${ports[SERVERS]}
admin_port=${ports[SERVERS + 1]}

start_servers() { # fresh simulated servers with empty caches; sets SIM_PID
    local listen=() p
    for p in "${sim_ports[@]}"; do listen+=(--listen "127.0.0.1:$p"); done
    start_bg TERM "$WORK/sim.log" "$BIN" sim "${listen[@]}" --tokens "$TOKENS" \
        --token-interval "$TOKEN_INTERVAL" --prefill-per-token "$PREFILL" --kv-cache-blocks "$KV_BLOCKS"
    SIM_PID=${PIDS[-1]}
    for p in "${sim_ports[@]}"; do wait_http "http://127.0.0.1:$p/health" "$SIM_PID" "sim :$p"; done
}

shares() { # requests per server as JSON: [n1, n2, ...]
    local p out=()
    for p in "${sim_ports[@]}"; do
        out+=("$(curl -s "http://127.0.0.1:$p/_sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')")
    done
    local IFS=,
    echo "[${out[*]}]"
}

start_router() { # start_router NAME: sets ROUTER_PID
    local name=$1 p
    case $name in
    ballast-lo | ballast-prefix)
        {
            printf '[server]\nlisten = ["127.0.0.1:%s"]\nthreads = 1\n\n' "$proxy_port"
            printf '[admin]\nlisten = "127.0.0.1:%s"\n\n[log]\nlevel = "warn"\n\n' "$admin_port"
            printf '[[pool]]\nname = "sim"\n'
            [[ $name == ballast-prefix ]] && printf 'balance = "prefix_affinity"\n'
            for p in "${sim_ports[@]}"; do printf '[[pool.servers]]\naddr = "127.0.0.1:%s"\n' "$p"; done
            printf '\n[[route]]\nname = "chat"\npath_prefix = "/"\npool = "sim"\n'
        } >"$WORK/$name.toml"
        start_bg TERM "$WORK/$name.log" "$BIN" --config "$WORK/$name.toml" run
        ROUTER_PID=${PIDS[-1]}
        wait_http "http://127.0.0.1:$admin_port/readyz" "$ROUTER_PID" "$name"
        ;;
    nginx-rr)
        cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $(nginx_temp_paths "$WORK")
    upstream sim {
$(for p in "${sim_ports[@]}"; do printf '        server 127.0.0.1:%s;\n' "$p"; done)
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$proxy_port;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
        start_bg QUIT "$WORK/nginx.log" "$NGINX" -c "$WORK/nginx.conf" -g "daemon off;"
        ROUTER_PID=${PIDS[-1]}
        wait_http "http://127.0.0.1:$proxy_port/v1/models" "$ROUTER_PID" nginx
        ;;
    sglang-cache | sglang-cache-b4)
        local urls=() extra=()
        for p in "${sim_ports[@]}"; do urls+=("http://127.0.0.1:$p"); done
        [[ $name == sglang-cache-b4 ]] && extra=(--balance-abs-threshold 4 --balance-rel-threshold 1.5)
        start_bg TERM "$WORK/sglang.log" python3 -m sglang_router.launch_router \
            --host 127.0.0.1 --port "$proxy_port" --worker-urls "${urls[@]}" --policy cache_aware "${extra[@]}"
        ROUTER_PID=${PIDS[-1]}
        wait_http "http://127.0.0.1:$proxy_port/v1/models" "$ROUTER_PID" sglang-router
        ;;
    esac
}

results="$WORK/runs.jsonl"
for round in $(seq "$ROUNDS"); do
    for name in $ROUTERS; do
        start_servers
        start_router "$name"
        log "round $round: $name"
        out=$(cd "$BENCH_DIR" && python3 affinity_client.py --target "127.0.0.1:$proxy_port" \
            --conversations "$CONVERSATIONS" --turns "$TURNS" --tokens "$TOKENS" \
            --think-min "$THINK_MIN" --think-max "$THINK_MAX")
        printf '{"router": "%s", "round": %s, "shares": %s, "run": %s}\n' \
            "$name" "$round" "$(shares)" "$out" >>"$results"
        stop_bg "$ROUTER_PID" "$([[ $name == nginx-rr ]] && echo QUIT || echo TERM)"
        stop_bg "$SIM_PID"
    done
done

python3 - "$results" "$RESULTS_DIR/affinity-$STAMP.json" "$REV" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in runs:
    by.setdefault(r["router"], []).append(r)
summary = {}
for name, rs in by.items():
    med = lambda f: statistics.median(f(r) for r in rs)
    share = lambda r: max(r["shares"]) / (sum(r["shares"]) / len(r["shares"])) if sum(r["shares"]) else 0
    summary[name] = {
        "ttft_p50_ms": round(med(lambda r: r["run"]["ttft_ms"]["p50"]), 1),
        "ttft_p99_ms": round(med(lambda r: r["run"]["ttft_ms"]["p99"]), 1),
        "throughput_rps": round(med(lambda r: r["run"]["throughput_rps"]), 1),
        "max_share_over_mean": round(med(share), 2),
        "failed": sum(r["run"]["failed"] for r in rs),
        "shares": [r["shares"] for r in rs],
    }
base = summary.get("ballast-lo")
print(f"{'router':16} {'TTFT p50':>9} {'TTFT p99':>9} {'req/s':>7} {'max/mean share':>15} {'failed':>7}")
for name, s in summary.items():
    print(f"{name:16} {s['ttft_p50_ms']:>7} ms {s['ttft_p99_ms']:>6} ms {s['throughput_rps']:>7} {s['max_share_over_mean']:>15} {s['failed']:>7}")
if base and "ballast-prefix" in summary:
    p = summary["ballast-prefix"]
    cut = 1 - p["ttft_p50_ms"] / base["ttft_p50_ms"]
    print(f"\nprefix affinity vs least outstanding: TTFT p50 {cut:.0%} lower (goal: at least 50 %), "
          f"max share {p['max_share_over_mean']}x the mean (goal: at most 1.5x)")
json.dump({"rev": sys.argv[3], "summary": summary, "runs": runs}, open(sys.argv[2], "w"), indent=1)
print(f"\nresults: {sys.argv[2]}")
EOF
