#!/usr/bin/env bash
# Instructions the gateway spends per small request, counted by callgrind
# (repeatable on a shared, noisy machine where CPU time is not). One
# gateway worker thread under `valgrind --tool=callgrind` answers REQUESTS
# tiny POSTs to /v1/chat/completions over 8 keep-alive connections
# (bench/fixed_client.py) from one `ballast sim`; a run of 8 requests gives
# the start-up cost, which is taken off.
#
#   bench/request-instructions.sh [BINARY...]   default: a release build of the tree
#
# Env: REQUESTS (4000), OPENAI (false: the route's `openai`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS=${REQUESTS:-4000}
OPENAI=${OPENAI:-false}
need_tools valgrind:valgrind callgrind_annotate:valgrind curl:curl
if (($# == 0)); then
    build_ballast
    set -- "$BIN"
fi
setup_workdir
read -r SIM_PORT GW_PORT ADMIN_PORT < <(free_ports 3 | xargs)

start_bg TERM "$WORK/sim.log" "$1" sim --listen "127.0.0.1:$SIM_PORT" --tokens 1
SIM=${PIDS[-1]}
wait_http "http://127.0.0.1:$SIM_PORT/health" "$SIM" "the simulated backend"

measure() { # measure BINARY N: the program's total instructions for N requests
    local n=$2 ok
    callgrind_gateway "$1" info "$OPENAI" "$SIM_PORT" "$GW_PORT" "$ADMIN_PORT"
    ok=$(python3 "$BENCH_DIR/fixed_client.py" 127.0.0.1 "$GW_PORT" "$n" 8)
    [[ $ok == "$n" ]] || die "$ok of $n requests were answered 200"
    callgrind_total
}

printf '%-40s %15s %15s %14s\n' binary start-up "$REQUESTS requests" "per request"
for bin in "$@"; do
    base=$(measure "$bin" 8)
    total=$(measure "$bin" "$REQUESTS")
    printf '%-40s %15s %15s %14s\n' "$bin" "$base" "$total" "$(((total - base) / (REQUESTS - 8)))"
done
