#!/usr/bin/env bash
# Instructions the gateway spends relaying token streams, counted by
# callgrind: repeatable on a shared, noisy machine where CPU time is not.
# One gateway worker thread under `valgrind --tool=callgrind` relays STREAMS
# streams of TOKENS tokens each (bench/sse_client.py, to one `ballast sim`),
# with `openai = false` (bytes passed as they come) and `openai = true`
# (events read for the stream's end, and for resume where it applies).
# The difference is the cost of reading OpenAI streams.
#
#   bench/sse-instructions.sh [BINARY...]     default: a release build of the tree
#
# With several binaries (e.g. an older build), each is measured the same
# way, one after the other. Env: STREAMS (200), TOKENS (50).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAMS=${STREAMS:-200}
TOKENS=${TOKENS:-50}
need_tools valgrind:valgrind callgrind_annotate:valgrind curl:curl
if (($# == 0)); then
    build_ballast
    set -- "$BIN"
fi
setup_workdir
read -r SIM_PORT GW_PORT ADMIN_PORT < <(free_ports 3 | xargs)

start_bg TERM "$WORK/sim.log" "$1" sim --listen "127.0.0.1:$SIM_PORT" \
    --tokens "$TOKENS" --token-interval 2ms
SIM=${PIDS[-1]}
wait_http "http://127.0.0.1:$SIM_PORT/health" "$SIM" "the simulated backend"

measure() { # measure BINARY OPENAI: prints the program's total instructions
    local bin=$1 openai=$2
    cat > "$WORK/gw.toml" <<EOF
[server]
listen = ["127.0.0.1:$GW_PORT"]
threads = 1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[log]
level = "warn"
[[pool]]
name = "p"
[[pool.servers]]
addr = "127.0.0.1:$SIM_PORT"
[[route]]
name = "r"
path_prefix = "/"
pool = "p"
openai = $openai
EOF
    rm -f "$WORK"/cg.out.*
    start_bg INT "$WORK/gw.log" valgrind --tool=callgrind \
        --callgrind-out-file="$WORK/cg.out.%p" "$bin" run -c "$WORK/gw.toml"
    local gw=${PIDS[-1]}
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" "$gw" "the gateway under callgrind"
    python3 "$BENCH_DIR/sse_client.py" --target "127.0.0.1:$GW_PORT" --streams "$STREAMS" \
        --tokens "$TOKENS" --batch 50 --timeout 300s > "$WORK/client.json"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d['ok'] != int(sys.argv[2]))" \
        "$WORK/client.json" "$STREAMS" || die "not every stream was whole: $(cat "$WORK/client.json")"
    stop_bg "$gw" INT
    callgrind_annotate "$WORK"/cg.out.* > "$WORK/annotate.txt" 2>/dev/null
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/annotate.txt"
}

events=$((STREAMS * (TOKENS + 2)))
printf '%-40s %15s %15s %12s\n' binary "openai=false" "openai=true" "per event"
for bin in "$@"; do
    off=$(measure "$bin" false)
    on=$(measure "$bin" true)
    printf '%-40s %15s %15s %12s\n' "$bin" "$off" "$on" "$(((on - off) / events))"
done
