#!/usr/bin/env bash
# Long token streams while the backends die under them: three simulated
# servers, one killed (SIGKILL) at random every few seconds and restarted a
# second later, with CONCURRENCY streams of TOKENS tokens kept going through
# each proxy in turn:
#   ballast-resume   Ballast, [route.resume] on, pool.continuation = "vllm"
#   ballast          Ballast, the same config without [route.resume]
#   nginx            nginx in front of the same servers (proxy_buffering off,
#                    proxy_next_upstream ... non_idempotent, its default
#                    max_fails=1 fail_timeout=10s)
# Each client starts at most one stream per stream length (a fast 502 does
# not make it ask more often). Reported per proxy: the share of streams that
# reached the client whole (every token once, in order, then [DONE]; no
# error event, no abort), the kills, and why the others were not whole. Runs are interleaved, each round
# with its own kill schedule (the same for every proxy), medians of ROUNDS.
#
# Env: ROUNDS (3), DURATION (30 s per run), CONCURRENCY (12), TOKENS (100),
# TOKEN_INTERVAL (20ms), KILL_EVERY (3 s, ±50 %), DOWN (1 s),
# PROXIES (all three), BALLAST_BIN, KEEP_WORKDIR=1. See bench/README.md.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-30}
CONCURRENCY=${CONCURRENCY:-12}
TOKENS=${TOKENS:-100}
TOKEN_INTERVAL=${TOKEN_INTERVAL:-20ms}
KILL_EVERY=${KILL_EVERY:-3}
DOWN=${DOWN:-1}
PROXIES=${PROXIES:-ballast-resume ballast nginx}

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tools curl:curl python3:python3 nginx:nginx-light
build_ballast
BIN=$(realpath "$BIN") # the client starts the backends from bench/
setup_workdir
setup_results

read -r -a ports <<<"$(free_ports 5)"
sim_ports=("${ports[@]:0:3}")
proxy_port=${ports[3]}
admin_port=${ports[4]}
sims=$(IFS=,; echo "${sim_ports[*]}")

start_proxy() { # start_proxy NAME: sets PROXY_PID
    local name=$1 p
    case $name in
    ballast | ballast-resume)
        {
            printf '[server]\nlisten = ["127.0.0.1:%s"]\nthreads = 1\n\n' "$proxy_port"
            printf '[admin]\nlisten = "127.0.0.1:%s"\n\n[log]\nlevel = "warn"\n\n' "$admin_port"
            printf '[[pool]]\nname = "sim"\nmax_fails = 1\nfail_timeout = "10s"\nprobe_interval = "500ms"\ncontinuation = "vllm"\n'
            for p in "${sim_ports[@]}"; do printf '[[pool.servers]]\naddr = "127.0.0.1:%s"\n' "$p"; done
            printf '\n[[route]]\nname = "chat"\npath_prefix = "/"\npool = "sim"\nopenai = true\n'
            [[ $name == ballast-resume ]] && printf '[route.resume]\nenabled = true\nmax_resumes = 3\n'
            printf '[route.timeouts]\nstream_idle = "2s"\n'
        } >"$WORK/$name.toml"
        start_bg TERM "$WORK/$name.log" "$BIN" --config "$WORK/$name.toml" run
        PROXY_PID=${PIDS[-1]}
        wait_http "http://127.0.0.1:$admin_port/healthz" "$PROXY_PID" "$name"
        ;;
    nginx)
        cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log crit;
events { worker_connections 4096; }
http {
    access_log off;
    $(nginx_temp_paths "$WORK")
    upstream sim {
        least_conn;
$(for p in "${sim_ports[@]}"; do printf '        server 127.0.0.1:%s max_fails=1 fail_timeout=10s;\n' "$p"; done)
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$proxy_port;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
        }
    }
}
NGINX
        start_bg QUIT "$WORK/nginx.log" "$NGINX" -c "$WORK/nginx.conf" -g "daemon off;"
        PROXY_PID=${PIDS[-1]}
        for _ in $(seq 100); do
            python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $proxy_port), 1)" 2>/dev/null && break
            sleep 0.1
        done
        ;;
    esac
}

results="$WORK/runs.jsonl"
for round in $(seq "$ROUNDS"); do
    for name in $PROXIES; do
        start_proxy "$name"
        log "round $round: $name"
        out=$(cd "$BENCH_DIR" && python3 resume_client.py --bin "$BIN" --ports "$sims" \
            --target "127.0.0.1:$proxy_port" --duration "$DURATION" --concurrency "$CONCURRENCY" \
            --tokens "$TOKENS" --token-interval "$TOKEN_INTERVAL" --kill-every "$KILL_EVERY" \
            --down "$DOWN" --seed "$round")
        printf '{"proxy": "%s", "round": %s, "run": %s}\n' "$name" "$round" "$out" >>"$results"
        stop_bg "$PROXY_PID" "$([[ $name == nginx ]] && echo QUIT || echo TERM)"
    done
done

python3 - "$results" "$RESULTS_DIR/resume-$STAMP.json" "$REV" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in runs:
    by.setdefault(r["proxy"], []).append(r)
summary = {}
print(f"{'proxy':16} {'whole':>8} {'streams':>8} {'kills':>6}  not whole (all rounds)")
for name, rs in by.items():
    reasons = {}
    for r in rs:
        for k, v in r["run"]["not_whole"].items():
            reasons[k] = reasons.get(k, 0) + v
    s = summary[name] = {
        "whole_share": statistics.median(r["run"]["whole_share"] for r in rs),
        "streams": statistics.median(r["run"]["streams"] for r in rs),
        "kills": statistics.median(r["run"]["kills"] for r in rs),
        "stream_ms_p50": statistics.median(r["run"]["duration_ms"]["p50"] for r in rs if r["run"]["whole"]) if any(r["run"]["whole"] for r in rs) else None,
        "not_whole": reasons,
    }
    print(f"{name:16} {s['whole_share']:>8.1%} {s['streams']:>8} {s['kills']:>6}  {reasons}")
json.dump({"rev": sys.argv[3], "summary": summary, "runs": runs}, open(sys.argv[2], "w"), indent=1)
print(f"\nresults: {sys.argv[2]}")
PY
