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
    callgrind_gateway "$1" warn "$2" "$SIM_PORT" "$GW_PORT" "$ADMIN_PORT"
    python3 "$BENCH_DIR/sse_client.py" --target "127.0.0.1:$GW_PORT" --streams "$STREAMS" \
        --tokens "$TOKENS" --batch 50 --timeout 300s > "$WORK/client.json"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d['ok'] != int(sys.argv[2]))" \
        "$WORK/client.json" "$STREAMS" || die "not every stream was whole: $(cat "$WORK/client.json")"
    callgrind_total
}

events=$((STREAMS * (TOKENS + 2)))
printf '%-40s %15s %15s %12s\n' binary "openai=false" "openai=true" "per event"
for bin in "$@"; do
    off=$(measure "$bin" false)
    on=$(measure "$bin" true)
    printf '%-40s %15s %15s %12s\n' "$bin" "$off" "$on" "$(((on - off) / events))"
done
