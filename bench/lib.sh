# Shared helpers for the bench/*.sh scripts. Source it after `set -euo pipefail`:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It sets BENCH_DIR, REPO_DIR and RESULTS_DIR and defines:
#   log, die                       messages on stderr ("[bench] ...")
#   apt_install PKG...             apt-get install (with sudo when not root)
#   need_tools CMD:PKG...          install the packages of missing commands (and
#                                  cmake when ballast is to be built); sets NGINX
#                                  when nginx is among them
#   nginx_temp_paths DIR           nginx *_temp_path lines into DIR for the
#                                  modules this nginx has
#   nginx_sim_upstream PORT...     nginx's `upstream sim` block, equivalent to
#                                  Ballast's pool (least_conn, max_fails, keepalive)
#   build_ballast                  sets BIN: $BALLAST_BIN, or cargo build --release
#   build_release                  ballast, bench/loadgen and bench/pingora-bare in
#                                  one cargo call (shared dependencies, one feature set)
#   rss_kib PID                    VmRSS of PID in KiB
#   setup_workdir                  WORK temp dir + EXIT/INT/TERM traps that stop
#                                  everything started with start_bg
#   start_bg SIG LOG CMD...        run CMD in the background, remember its PID
#   stop_bg PID [SIG]              stop one of them early and forget it
#   free_ports N                   print N distinct free TCP ports on 127.0.0.1
#   wait_http URL PID WHAT         poll until URL answers 200 (~30s)
#   setup_results                  create RESULTS_DIR, set STAMP (UTC) and REV
#                                  (git short hash, "-dirty" if the tree differs)
#   callgrind_gateway BIN LEVEL OPENAI SIM_PORT GW_PORT ADMIN_PORT
#                                  one-thread gateway in front of a sim, under
#                                  callgrind, ready; sets CG_PID
#   callgrind_total                stop it, print its total instructions

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR=$BENCH_DIR/results

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_install() { # apt_install PKG...: install with apt-get (sudo when not root)
    (($#)) || return 0
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing $* and not root"
        sudo=(sudo)
    fi
    log "installing: $*"
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@"
}

need_tools() { # need_tools CMD:PKG...
    local need=() spec
    for spec in "$@"; do
        if [[ ${spec%%:*} == nginx ]]; then
            command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=("${spec#*:}")
        else
            command -v "${spec%%:*}" >/dev/null 2>&1 || need+=("${spec#*:}")
        fi
    done
    if [[ -z ${BALLAST_BIN:-} ]]; then
        command -v cmake >/dev/null 2>&1 || need+=(cmake)
    fi
    apt_install "${need[@]}"
    NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
}

nginx_temp_paths() { # nginx_temp_paths DIR: temp paths of the modules compiled in, under DIR
    local dir=$1 v m
    v=$("$NGINX" -V 2>&1 || true)
    printf 'client_body_temp_path %s/nginx-body;\n    proxy_temp_path %s/nginx-proxy;' "$dir" "$dir"
    for m in fastcgi uwsgi scgi; do
        [[ $v == *"--without-http_${m}_module"* ]] ||
            printf '\n    %s_temp_path %s/nginx-%s;' "$m" "$dir" "$m"
    done
}

nginx_sim_upstream() { # nginx_sim_upstream PORT...: the upstream every bench compares against
    printf 'upstream sim {\n        least_conn;\n'
    local p
    for p in "$@"; do
        printf '        server 127.0.0.1:%s max_fails=3 fail_timeout=30s;\n' "$p"
    done
    printf '        keepalive 64;\n    }'
}

build_ballast() { # sets BIN
    if [[ -n ${BALLAST_BIN:-} ]]; then
        BIN=$BALLAST_BIN
    else
        log "building ballast (cargo build --release --bin ballast)"
        (cd "$REPO_DIR" && cargo build --release --bin ballast)
        BIN=$REPO_DIR/target/release/ballast
    fi
    [[ -x $BIN ]] || die "ballast binary not found: $BIN"
}

build_release() { # the suite's binaries, built together as bench/run measures them
    (cd "$REPO_DIR" && cargo build --release --locked -p ballast -p ballast-loadgen -p pingora-bare)
}

rss_kib() { # rss_kib PID: VmRSS in KiB
    local k v _
    while read -r k v _; do
        if [[ $k == VmRSS: ]]; then
            echo "$v"
            return 0
        fi
    done <"/proc/$1/status"
    return 1
}

# ---------------------------------------------------------------- work dir, cleanup
PIDS=()
SIGS=()

start_bg() { # start_bg SIGNAL LOGFILE CMD...: run CMD in the background, remember its PID
    local sig=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 &
    PIDS+=("$!")
    SIGS+=("$sig")
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i pid
    for i in "${!PIDS[@]}"; do
        kill "-${SIGS[$i]}" "${PIDS[$i]}" 2>/dev/null || true
    done
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "PID $pid did not stop; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        for f in "$WORK"/*.log; do
            [[ -s $f ]] || continue
            log "--- last lines of $(basename "$f") ---"
            tail -n 20 "$f" >&2 || true
        done
        log "work dir kept for inspection: $WORK"
    elif [[ ${KEEP_WORKDIR:-0} == 1 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

setup_workdir() { # sets WORK and installs the cleanup traps
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ballast-bench.XXXXXX")
    chmod 755 "$WORK" # nginx workers run as an unprivileged user when started as root
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------- ports, readiness
free_ports() { # free_ports N: bind N ports at once so that they are distinct, then release them
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

wait_http() { # wait_http URL PID WHAT: poll until URL answers 200 (bounded, ~30s)
    local url=$1 pid=$2 what=$3
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$what not ready after 30s ($url)"
}

# ---------------------------------------------------------------- results
setup_results() { # creates RESULTS_DIR (git-ignored), sets STAMP and REV
    mkdir -p "$RESULTS_DIR"
    [[ -f $RESULTS_DIR/.gitignore ]] || printf '*\n!.gitignore\n' >"$RESULTS_DIR/.gitignore"
    STAMP=$(date -u +%Y%m%dT%H%M%SZ)
    REV=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
    # The binary is built from the work tree: say when that differs from HEAD.
    if [[ $REV != unknown ]] && ! git -C "$REPO_DIR" diff --quiet HEAD -- 2>/dev/null; then
        REV+="-dirty"
    fi
}

stop_bg() { # stop_bg PID [SIGNAL]: stop one process started with start_bg and forget it
    local pid=$1 sig=${2:-TERM} i
    kill "-$sig" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in "${!PIDS[@]}"; do
        if [[ ${PIDS[$i]} == "$pid" ]]; then
            unset 'PIDS[i]' 'SIGS[i]'
        fi
    done
}

# ---------------------------------------------------------------- instruction counts
callgrind_gateway() { # callgrind_gateway BIN LEVEL OPENAI SIM_PORT GW_PORT ADMIN_PORT; sets CG_PID
    local bin=$1 level=$2 openai=$3 sim=$4 gw=$5 admin=$6
    cat >"$WORK/gw.toml" <<CONF
[server]
listen = ["127.0.0.1:$gw"]
threads = 1
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "$level"
[[pool]]
name = "p"
[[pool.servers]]
addr = "127.0.0.1:$sim"
[[route]]
name = "r"
path_prefix = "/"
pool = "p"
openai = $openai
CONF
    rm -f "$WORK"/cg.out.*
    start_bg INT "$WORK/gw.log" valgrind --tool=callgrind \
        --callgrind-out-file="$WORK/cg.out.%p" "$bin" run -c "$WORK/gw.toml"
    CG_PID=${PIDS[-1]}
    wait_http "http://127.0.0.1:$admin/readyz" "$CG_PID" "the gateway under callgrind"
}

callgrind_total() { # stop the gateway of callgrind_gateway; print its total instructions
    stop_bg "$CG_PID" INT
    callgrind_annotate "$WORK"/cg.out.* >"$WORK/annotate.txt" 2>/dev/null
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/annotate.txt"
}
