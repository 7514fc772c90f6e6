#!/usr/bin/env python3
"""The side-by-side benchmark suite behind `bench/run` (see bench/README.md).

Runs six scenarios through the same simulated backends reached directly and
through each proxy: Ballast, a bare pingora-proxy, nginx, HAProxy, the Rust
LLM routers (sglang-router, vllm-router) and LiteLLM's proxy. Every proxy is
pinned to core 0 with one worker; load generators and backends share core 1.
Runs of the same scenario are interleaved (A B C ... A B C ...) and the
median of the repeats is reported. Writes the raw figures (suite.json) and
hands them to report.py, which writes REPORT.md and the charts.

    suite.py --bin-dir target/release --venv target/bench-venv --out bench/results
"""

import argparse
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
LOAD_CPU = "1"
LITELLM_KEY = "sk-ballast-bench-0123456789abcdef"
MODEL = "sim-model"


def log(msg):
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Everything the suite starts, stopped by PID (never by name)."""

    def __init__(self, work):
        self.work = work
        self.live = []

    def start(self, name, cmd, cpus=None, env=None):
        if cpus is not None:
            cmd = ["taskset", "-c", cpus] + cmd
        logf = open(self.work / f"{name}.log", "ab")
        e = dict(os.environ)
        e.pop("RUST_LOG", None)
        e.update(env or {})
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=e,
                             preexec_fn=_die_with_parent, cwd=self.work)
        p.bench_name = name
        self.live.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM):
        if p is None or p.poll() is not None:
            return
        try:
            p.send_signal(sig)
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        finally:
            if p in self.live:
                self.live.remove(p)

    def stop_all(self):
        for p in list(self.live):
            self.stop(p)


def tree(pid):
    """pid and all its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


class Cpu:
    """CPU time a target's processes use while measured, from `perf stat -e
    task-clock` (exact; /proc's ticks are 10 ms). `seconds()` stops it."""

    def __init__(self, ctx, pid):
        self.p = None
        if pid:
            self.out = ctx.work / f"perf-{pid}.txt"
            pids = ",".join(str(p) for p in tree(pid))
            self.p = subprocess.Popen(["perf", "stat", "-e", "task-clock", "-x,", "-o",
                                       str(self.out), "-p", pids],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.05)  # attached before the load starts

    def seconds(self):
        if self.p is None:
            return None
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=10)
        for line in self.out.read_text().splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2].startswith("task-clock"):
                return float(f[0]) / 1000
        raise RuntimeError(f"perf stat printed no task-clock: {self.out.read_text()}")


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http(method, url, body=None, headers=None, timeout=2):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def wait_until(check, proc, what, timeout=90):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up (log: {proc.bench_name}.log)")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s")


def chat_body(max_tokens=1, stream=False, content="hi"):
    b = {"model": MODEL, "messages": [{"role": "user", "content": content}],
         "max_tokens": max_tokens}
    if stream:
        b["stream"] = True
    return json.dumps(b, separators=(",", ":")).encode()


# ------------------------------------------------------------------ backends
class Sims:
    """`ballast sim` backends: one process serving several ports, or one
    process per port (the busy scenario kills one)."""

    def __init__(self, ctx, name, n, args=(), separate=False):
        self.ports = free_ports(n)
        self.procs = []
        groups = [[p] for p in self.ports] if separate else [self.ports]
        for i, g in enumerate(groups):
            cmd = [str(ctx.bin("ballast")), "sim"]
            for p in g:
                cmd += ["--listen", f"127.0.0.1:{p}"]
            if separate:
                cmd += ["--name", f"b{i + 1}"]
            self.procs.append(ctx.procs.start(f"{name}-sim{i + 1}", cmd + list(args), cpus=LOAD_CPU))
        for i, p in enumerate(self.ports):
            proc = self.procs[i if separate else 0]
            wait_until(lambda p=p: http("GET", f"http://127.0.0.1:{p}/health")[0] == 200,
                       proc, f"sim on {p}")

    def stop(self, ctx):
        for p in self.procs:
            ctx.procs.stop(p, signal.SIGINT)


# ------------------------------------------------------------------ targets
class Target:
    """A way to reach the backends. `start` writes the config, starts the
    process pinned to the proxy core and waits until a chat completion
    passes through it."""

    name = ""
    label = ""
    auth = []  # extra request headers
    busy_capable = True

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.port = None

    def command(self, ports, mode, workers):
        raise NotImplementedError

    def start(self, sims, mode="fast", workers=1, pinned=True):
        self.port = free_ports(1)[0]
        cmd, env = self.command(sims.ports, mode, workers)
        self.proc = self.ctx.procs.start(f"{self.name}-{mode}", cmd,
                                         cpus=PROXY_CPU if pinned else None, env=env)
        hdrs = {"content-type": "application/json"}
        for h in self.auth:
            k, v = h.split(": ", 1)
            hdrs[k] = v
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        wait_until(lambda: http("POST", url, chat_body(), hdrs)[0] == 200,
                   self.proc, self.label, timeout=120)
        return self

    def stop(self):
        self.ctx.procs.stop(self.proc)
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def addr(self):
        return f"127.0.0.1:{self.port}"


class Direct(Target):
    name, label = "direct", "direct"
    busy_capable = False

    def start(self, sims, mode="fast", workers=1, pinned=True):
        self.port = sims.ports[0]
        return self

    def stop(self):
        pass


class Ballast(Target):
    name, label = "ballast", "Ballast"
    openai = True

    def command(self, ports, mode, workers):
        admin = free_ports(1)[0]
        self.admin = admin
        servers = "".join(f'\n[[pool.servers]]\naddr = "127.0.0.1:{p}"\n' for p in ports)
        pool_extra = route_extra = ""
        if mode == "busy":
            pool_extra = """max_conns = 4
max_fails = 3
fail_timeout = "10s"
probe_interval = "500ms"   # an ejected server may take one request after 0.5 s

[pool.health]
path = "/health"
interval = "1s"
rise = 2
fall = 2

[pool.queue]
max_depth = 150   # HAProxy's maxqueue 50 on each of the 3 servers
max_wait = "5s"
"""
            route_extra = """
[route.retry]
attempts = 3
on = ["connect_error", "429", "502", "503", "504"]
backoff_base = "100ms"
backoff_max = "2s"

[route.timeouts]
total = "15s"
"""
        else:
            pool_extra = 'max_fails = 3\nfail_timeout = "30s"\n'
        cfg = f"""[server]
listen = ["127.0.0.1:{self.port}"]
threads = {workers}

[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "warn"   # no access log line per request, as nginx's access_log off

[[pool]]
name = "sim"
{pool_extra}{servers}
[[route]]
name = "all"
path_prefix = "/"
pool = "sim"
openai = {str(self.openai).lower()}
{route_extra}"""
        path = self.ctx.work / f"{self.name}-{mode}.toml"
        path.write_text(cfg)
        return [str(self.ctx.bin("ballast")), "--config", str(path), "run"], {}


class BallastPlain(Ballast):
    name, label = "ballast-plain", "Ballast (openai off)"
    openai = False


class PingoraBare(Target):
    name, label = "pingora", "pingora-proxy (bare)"
    busy_capable = False

    def command(self, ports, mode, workers):
        return [str(self.ctx.bin("pingora-bare")), self.addr(), str(workers)] + \
            [f"127.0.0.1:{p}" for p in ports], {}


class Nginx(Target):
    name, label = "nginx", "nginx"

    def command(self, ports, mode, workers):
        d = self.ctx.work / f"nginx-{mode}"
        d.mkdir(exist_ok=True)
        v = subprocess.run([self.ctx.nginx, "-V"], capture_output=True, text=True).stderr
        temps = [f"client_body_temp_path {d}/body;", f"proxy_temp_path {d}/proxy;"]
        temps += [f"{m}_temp_path {d}/{m};" for m in ("fastcgi", "uwsgi", "scgi")
                  if f"--without-http_{m}_module" not in v]
        if mode == "busy":
            servers = "".join(f"        server 127.0.0.1:{p} max_conns=4 max_fails=3 fail_timeout=10s;\n"
                              for p in ports)
            nxt = """proxy_next_upstream error timeout http_502 http_503 http_504 http_429 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 15s;
            proxy_connect_timeout 2s;
            proxy_read_timeout 15s;"""
        else:
            servers = "".join(f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=30s;\n"
                              for p in ports)
            nxt = "proxy_next_upstream error timeout http_502 http_503 http_504;"
        cfg = f"""worker_processes {workers};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 19990; }}
http {{
    access_log off;
    {chr(10).join(temps)}
    upstream sim {{
        zone sim 64k;
        least_conn;
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            {nxt}
        }}
    }}
}}
"""
        conf = self.ctx.work / f"nginx-{mode}.conf"
        conf.write_text(cfg)
        return [self.ctx.nginx, "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf),
                "-g", "daemon off;"], {}


class Haproxy(Target):
    name, label = "haproxy", "HAProxy"

    def command(self, ports, mode, workers):
        if mode == "busy":
            srv = "default-server check inter 1s fall 2 rise 2 maxconn 4 maxqueue 50\n" \
                  "    timeout queue 5s\n    retries 3\n    option redispatch 1\n" \
                  "    retry-on conn-failure empty-response response-timeout 502 503 504\n" \
                  "    option httpchk GET /health\n"
        else:
            srv = ""
        servers = "".join(f"    server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports))
        cfg = f"""global
    nbthread {workers}
    maxconn 9900
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # Without it HAProxy holds event-stream bytes back (~190 ms to the first one).
    option http-no-delay
frontend fe
    bind 127.0.0.1:{self.port}
    maxconn 9900
    default_backend sim
backend sim
    balance leastconn
    http-reuse always
    {srv}{servers}"""
        conf = self.ctx.work / f"haproxy-{mode}.cfg"
        conf.write_text(cfg)
        return [self.ctx.haproxy, "-W", "-db", "-f", str(conf)], {}


class Router(Target):
    """The Rust LLM routers from PyPI share their command line but for the
    program, its sub-command, the log level's spelling and the env."""

    launch = []
    log_level = ""
    env = {}

    def command(self, ports, mode, workers):
        cmd = [str(self.ctx.venv / "bin" / self.launch[0])] + self.launch[1:] + [
            "--host", "127.0.0.1", "--port", str(self.port), "--policy", "round_robin",
            "--log-level", self.log_level,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_ports(1)[0]),
            "--worker-urls"] + [f"http://127.0.0.1:{p}" for p in ports]
        if mode == "busy":
            cmd += ["--health-check-interval-secs", "1", "--max-concurrent-requests", "12",
                    "--queue-size", "150", "--queue-timeout-secs", "5", "--retry-max-retries", "3"]
        return cmd, {"TOKIO_WORKER_THREADS": str(workers), **self.env}


class SglangRouter(Router):
    name, label = "sglang", "sglang-router"
    launch, log_level = ["sglang-router", "launch"], "warn"


class VllmRouter(Router):
    name, label = "vllm", "vllm-router"
    launch, log_level = ["vllm-router"], "warning"
    env = {"RUST_LOG": "warn"}  # its power-of-two policy logs every request otherwise


class Litellm(Target):
    name, label = "litellm", "LiteLLM proxy"
    auth = [f"authorization: Bearer {LITELLM_KEY}"]

    def command(self, ports, mode, workers):
        deployments = ""
        for p in ports:
            deployments += f"""  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{p}/v1
      api_key: none
"""
            if mode == "busy":
                deployments += "      max_parallel_requests: 4\n"
        router = ""
        if mode == "busy":
            router = """router_settings:
  routing_strategy: least-busy
  num_retries: 3
  allowed_fails: 3
  cooldown_time: 10
  timeout: 15
"""
        cfg = f"""model_list:
{deployments}litellm_settings:
  telemetry: false
{router}general_settings:
  master_key: {LITELLM_KEY}
"""
        conf = self.ctx.work / f"litellm-{mode}.yaml"
        conf.write_text(cfg)
        return [str(self.ctx.venv / "bin" / "litellm"), "--config", str(conf), "--host",
                "127.0.0.1", "--port", str(self.port), "--num_workers", str(workers)], \
            {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}


ALL_TARGETS = [Direct, Ballast, BallastPlain, PingoraBare, Nginx, Haproxy, SglangRouter,
               VllmRouter, Litellm]


# ------------------------------------------------------------------ measuring
WRK_LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["content-type"] = "application/json"
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,' ..
    '"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,' ..
    '"p50":%%d,"p90":%%d,"p99":%%d,"p99_9":%%d,"max":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


def wrk(ctx, target, duration, conns, close=False):
    headers = "".join(f'wrk.headers["{h.split(": ", 1)[0]}"] = "{h.split(": ", 1)[1]}"\n'
                      for h in target.auth)
    if close:
        headers += 'wrk.headers["connection"] = "close"\n'
    script = ctx.work / f"wrk-{target.name}.lua"
    script.write_text(WRK_LUA % (chat_body().decode(), headers))
    meter = Cpu(ctx, target.pid)
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s",
                          "--timeout", "5s", "-s", str(script),
                          f"http://{target.addr()}/v1/chat/completions"],
                         capture_output=True, text=True, timeout=duration + 60)
    cpu = meter.seconds()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk against {target.label} printed no result: {out.stdout}{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    errors = r["status_errors"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    good = r["requests"] - r["status_errors"]
    res = {"rps": good / secs, "errors": errors, "requests": r["requests"],
           "p50_ms": r["p50"] / 1000, "p90_ms": r["p90"] / 1000, "p99_ms": r["p99"] / 1000,
           "p99_9_ms": r["p99_9"] / 1000, "max_ms": r["max"] / 1000, "cpu_s": cpu}
    if cpu is not None and r["requests"]:
        res["cpu_us_per_req"] = cpu * 1e6 / r["requests"]
        res["cpu_share"] = cpu / secs
    return res


def loadgen(ctx, mode, target, args, timeout):
    cmd = ["taskset", "-c", LOAD_CPU, str(ctx.bin("loadgen")), mode, "--target", target.addr()]
    for h in target.auth:
        cmd += ["--header", h]
    out = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {mode} against {target.label} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(runs, keys):
    out = {"runs": runs}
    for k in keys:
        out[k] = med(runs, k)
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k + "_min"], out[k + "_max"] = min(vals), max(vals)
    return out


# ------------------------------------------------------------------ scenarios
class Ctx:
    def __init__(self, args):
        self.bin_dir = Path(args.bin_dir).resolve()
        self.venv = Path(args.venv).resolve()
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.work)
        self.nginx = args.nginx
        self.haproxy = args.haproxy
        self.repeats = args.repeats
        self.quick = args.quick
        # None: every target. Direct (the base of every ratio) always runs.
        self.targets = set(args.targets.split(",")) if args.targets else None

    def wanted(self, cls):
        return self.targets is None or cls is Direct or cls.name in self.targets

    def bin(self, name):
        return self.bin_dir / name


def settle(targets, quiet=0.02, limit=60):
    """Waits until the proxies share the proxy core quietly: a proxy still
    working off an earlier run's backlog (LiteLLM after wrk's 64 connections
    go away) would take CPU from the next one measured."""
    pids = [t.pid for t in targets if t.pid]
    end = time.monotonic() + limit
    while time.monotonic() < end:
        c0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(0.3)
        if sum(cpu_seconds(p) for p in pids) - c0 <= quiet * 0.3:
            return
    log(f"  the proxies were still busy after {limit}s")


def interleaved(ctx, targets, one_run, rounds):
    """rounds x (every target once), in the same order each round."""
    runs = {t.name: [] for t in targets}
    for r in range(rounds):
        for t in targets:
            settle(targets)
            try:
                runs[t.name].append(one_run(t))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"  {t.label}: run {r + 1} failed: {e}")
                runs[t.name].append({"failed": str(e)})
    return runs


def started(ctx, classes, sims, mode="fast", workers=1, pinned=True):
    out = []
    for cls in filter(ctx.wanted, classes):
        t = cls(ctx)
        log(f"starting {t.label} ({mode})")
        try:
            out.append(t.start(sims, mode=mode, workers=workers, pinned=pinned))
        except RuntimeError as e:
            log(f"  {t.label} did not start: {e}")
            t.stop()
    return out


def scenario_keepalive(ctx, results):
    """S1 (small requests, keep-alive), S2 (added latency at a fixed rate) and
    S6 (a new connection per request): the same backends and proxies."""
    sims = Sims(ctx, "fast", 3)
    targets = started(ctx, ALL_TARGETS, sims)
    dur = 2 if ctx.quick else 3
    for t in targets:  # warm-up: upstream connections, buffers, caches
        settle(targets)
        wrk(ctx, t, 1, 64)

    log("S1 small requests: wrk, 64 connections")
    runs = interleaved(ctx, targets, lambda t: wrk(ctx, t, dur, 64), ctx.repeats)
    results["small"] = {
        "params": {"conns": 64, "duration_s": dur, "repeats": ctx.repeats,
                   "body_bytes": len(chat_body())},
        "targets": {n: summarize(r, ["rps", "p50_ms", "p99_ms", "p99_9_ms", "cpu_us_per_req",
                                     "cpu_share", "errors"]) for n, r in runs.items()}}

    small = results["small"]["targets"]
    rates = [500, 2000]
    results["rate"] = {"params": {"rates": rates, "duration_s": dur, "conns": 32,
                                  "repeats": ctx.repeats}, "by_rate": {}}
    for rate in rates:
        # A target whose ceiling (S1) is below 1.25x the rate would only
        # measure its own queue.
        able = [t for t in targets if t.name != "ballast-plain" and
                (small.get(t.name, {}).get("rps") or 0) >= 1.25 * rate]
        skipped = [t.name for t in targets if t not in able and t.name != "ballast-plain"]
        log(f"S2 fixed rate {rate} req/s (skipped, ceiling too low: {skipped})")

        def one(t, rate=rate):
            meter = Cpu(ctx, t.pid)
            r = loadgen(ctx, "rate", t, ["--rate", rate, "--duration", dur, "--conns", 32,
                                         "--timeout", 10], timeout=dur + 60)
            lat = r["latency_us"]
            out = {k: lat[k] for k in ("p50", "p75", "p90", "p99", "p99_9", "p99_99", "max")}
            out.update(ok=r["ok"], sent=r["sent"], errors=sum(r["errors"].values()) +
                       sum(v for k, v in r["statuses"].items() if not k.startswith("2")))
            if t.pid:
                out["cpu_us_per_req"] = meter.seconds() * 1e6 / max(1, r["sent"])
            return out
        runs = interleaved(ctx, able, one, ctx.repeats)
        results["rate"]["by_rate"][str(rate)] = {
            "skipped": skipped,
            "targets": {n: summarize(r, ["p50", "p75", "p90", "p99", "p99_9", "p99_99", "max",
                                         "errors", "cpu_us_per_req"]) for n, r in runs.items()}}

    log("S6 new connection per request: wrk, 16 connections, Connection: close")
    nc = [t for t in targets if t.name not in ("ballast-plain", "litellm")]
    runs = interleaved(ctx, nc, lambda t: wrk(ctx, t, max(2, dur - 1), 16, close=True),
                       ctx.repeats)
    results["newconn"] = {
        "params": {"conns": 16, "duration_s": max(2, dur - 1), "repeats": ctx.repeats},
        "targets": {n: summarize(r, ["rps", "p50_ms", "p99_ms", "cpu_us_per_req", "errors"])
                    for n, r in runs.items()}}
    for t in targets:
        t.stop()

    log("S1 unpinned: two workers each, no CPU pinning")
    un = started(ctx, [Direct, Ballast, PingoraBare, Nginx, Haproxy], sims, workers=2,
                 pinned=False)
    for t in un:
        wrk(ctx, t, 1, 64)
    runs = {t.name: [] for t in un}
    for _ in range(max(1, ctx.repeats - 1)):
        for t in un:
            settle(un)
            try:
                r = subprocess.run(["wrk", "-t2", "-c64", f"-d{dur}s", "-s",
                                    str(ctx.work / f"wrk-{t.name}.lua"),
                                    f"http://{t.addr()}/v1/chat/completions"],
                                   capture_output=True, text=True, timeout=dur + 60)
                line = next(ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON "))
                j = json.loads(line[8:])
                runs[t.name].append({"rps": (j["requests"] - j["status_errors"]) /
                                     (j["duration_us"] / 1e6), "p99_ms": j["p99"] / 1000})
            except (StopIteration, subprocess.TimeoutExpired) as e:
                runs[t.name].append({"failed": str(e)})
    results["small_unpinned"] = {"params": {"workers": 2, "duration_s": dur},
                                 "targets": {n: summarize(r, ["rps", "p99_ms"])
                                             for n, r in runs.items()}}
    for t in un:
        t.stop()
    sims.stop(ctx)


def scenario_compressed(ctx, results):
    """S5: 200 KiB prompts, plain and Brotli-compressed, through Ballast."""
    import brotli
    sims = Sims(ctx, "prompt", 3)
    # Words drawn at random from a large vocabulary: about as compressible as
    # prose (a repeated sentence would compress 1,000-fold and be refused as
    # a decompression bomb).
    import random
    rng = random.Random(17)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
             for _ in range(5000)]
    words = []
    while sum(len(w) + 1 for w in words) < 200 * 1024:
        words.append(rng.choice(vocab))
    body = chat_body(content=" ".join(words)[: 200 * 1024])
    plain = ctx.work / "prompt.json"
    plain.write_bytes(body)
    br = ctx.work / "prompt.json.br"
    br.write_bytes(brotli.compress(body))
    targets = started(ctx, [Direct, Ballast], sims)
    rate, dur = 50, (2 if ctx.quick else 4)
    cases = [("direct", targets[0], plain, []), ("ballast", targets[1], plain, []),
             ("ballast-br", targets[1], br, ["--header", "content-encoding: br"])]

    def one(case):
        name, t, f, extra = case
        meter = Cpu(ctx, t.pid)
        r = loadgen(ctx, "rate", t, ["--rate", rate, "--duration", dur, "--conns", 8,
                                     "--body-file", f] + extra, timeout=dur + 60)
        out = {"p50": r["latency_us"]["p50"], "p99": r["latency_us"]["p99"], "ok": r["ok"],
               "sent": r["sent"]}
        if t.pid:
            out["cpu_us_per_req"] = meter.seconds() * 1e6 / max(1, r["sent"])
        return out
    for c in cases:
        one(c)  # warm-up
    runs = {c[0]: [] for c in cases}
    for _ in range(ctx.repeats):
        for c in cases:
            runs[c[0]].append(one(c))
    results["compressed"] = {
        "params": {"rate": rate, "duration_s": dur, "body_bytes": len(body),
                   "br_bytes": br.stat().st_size},
        "cases": {n: summarize(r, ["p50", "p99", "cpu_us_per_req", "ok", "sent"])
                  for n, r in runs.items()}}
    for t in targets:
        t.stop()
    sims.stop(ctx)


def stream_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A proxy holds two descriptors per stream (client and upstream).
    return min(10000, (hard - 400) // 2)


def scenario_streams(ctx, results):
    """S3: 1,000 streams at 20 tokens/s, and the most this machine's
    descriptor limit allows (up to 10,000) at one token every 4 s."""
    big = 2000 if ctx.quick else stream_limit()
    cases = [
        {"name": "1k", "streams": 1000, "tokens": 40, "interval_ms": 50, "batch": 100,
         "targets": [Direct, Ballast, PingoraBare, Nginx, Haproxy, SglangRouter, VllmRouter,
                     Litellm]},
        {"name": "10k", "streams": big, "tokens": 2, "interval_ms": 5000, "batch": 250,
         "targets": [Direct, Ballast, PingoraBare, Nginx, Haproxy, SglangRouter, VllmRouter]},
    ]
    results["streams"] = {"fd_limit": stream_limit() * 2 + 400, "cases": {}}
    for case in cases:
        sims = Sims(ctx, f"stream{case['name']}", 3,
                    ["--token-interval", f"{case['interval_ms']}ms"])
        body = ctx.work / "stream.json"
        body.write_bytes(chat_body(max_tokens=case["tokens"], stream=True))
        out = {"params": {k: case[k] for k in ("streams", "tokens", "interval_ms")},
               "targets": {}}
        for cls in filter(ctx.wanted, case["targets"]):
            t = started(ctx, [cls], sims)
            if not t:
                out["targets"][cls.name] = {"failed": "did not start"}
                continue
            t = t[0]
            log(f"S3 {case['streams']} streams x {case['tokens']} tokens "
                f"@{case['interval_ms']}ms through {t.label}")
            try:
                out["targets"][t.name] = one_stream_run(ctx, t, case, body)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"  failed: {e}")
                out["targets"][t.name] = {"failed": str(e)}
            t.stop()
        results["streams"]["cases"][case["name"]] = out
        sims.stop(ctx)


def one_stream_run(ctx, t, case, body):
    # Twice the stream's own length, at least 30 s: a proxy that cannot keep
    # up (LiteLLM) has its unfinished streams counted as failed.
    timeout = max(30, case["tokens"] * case["interval_ms"] / 1000 * 2 + 20) + 10
    # Warm-up (not reported): buffers, pools and allocator arenas.
    loadgen(ctx, "streams", t, ["--streams", 50, "--body-file", body], timeout=timeout)
    time.sleep(0.5)  # let the warm-up's connections settle before the baseline
    base = statistics.median([rss_kib(t.pid) for _ in range(3)]) if t.pid else 0
    meter = Cpu(ctx, t.pid)
    cmd = ["taskset", "-c", LOAD_CPU, str(ctx.bin("loadgen")), "streams", "--target", t.addr(),
           "--streams", str(case["streams"]), "--body-file", str(body), "--batch", str(case["batch"]),
           "--batch-interval-ms", "100", "--timeout", str(int(timeout - 10))]
    for h in t.auth:
        cmd += ["--header", h]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    while p.poll() is None:
        if t.pid:
            samples.append((time.time() * 1000, rss_kib(t.pid)))
        time.sleep(0.1)
    stdout, stderr = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"loadgen streams: {stderr.strip()}")
    r = json.loads(stdout)
    res = {"ok": r["ok"], "failed": r["failed"], "max_open": r["max_open"],
           "ramp_s": r["ramp_s"], "events": r["events"],
           "ttfb_us": r["ttfb_us"], "gap_us": r["gap_us"], "head_us": r["head_us"]}
    if t.pid:
        cpu = meter.seconds()
        res["cpu_s"] = cpu
        res["cpu_ms_per_1k_events"] = cpu * 1e6 / max(1, r["events"])
        peak = max(s[1] for s in samples) if samples else base
        res["rss_base_kib"] = base
        res["rss_peak_kib"] = peak
        res["rss_active_kib_per_stream"] = (peak - base) / max(1, r["max_open"])
        # Idle: every stream's request is in, none has had an event yet
        # (Ballast sends a stream's head with its first byte: first-byte
        # failover, so "every head received" would never come first).
        a, b = r.get("all_sent_ms"), r.get("first_event_ms")
        if a and b and b > a:
            idle = [s[1] for s in samples if a <= s[0] <= b]
            if idle:
                res["rss_idle_kib_per_stream"] = (max(idle) - base) / max(1, r["max_open"])
    return res


def scenario_busy(ctx, results):
    """S4: offered load above capacity, a flapping and a killed backend."""
    rate, dur = 90, (10 if ctx.quick else 15)
    flap_every, kill_at = 3.0, 6.0
    results["busy"] = {"params": {"rate": rate, "duration_s": dur, "latency_ms": 200,
                                  "slots": 4, "flap_every_s": flap_every, "kill_at_s": kill_at},
                       "targets": {}}
    for cls in filter(ctx.wanted, [Ballast, Nginx, Haproxy, SglangRouter, VllmRouter, Litellm]):
        # Each backend takes 4 requests at once and answers 503 ("server
        # busy") beyond: a real capacity, the same whatever is in front.
        sims = Sims(ctx, f"busy-{cls.name}", 3, ["--latency", "200ms", "--max-concurrency", "4"],
                    separate=True)
        ts = started(ctx, [cls], sims, mode="busy")
        if not ts:
            results["busy"]["targets"][cls.name] = {"failed": "did not start"}
            sims.stop(ctx)
            continue
        t = ts[0]
        log(f"S4 busy through {t.label}: {rate} req/s for {dur}s")
        out = ctx.work / f"busy-{t.name}.json"
        t0 = time.time() + 1.0
        cmd = ["taskset", "-c", LOAD_CPU, sys.executable, str(BENCH / "busy_client.py"),
               "--target", t.addr(), "--rate", str(rate), "--duration", f"{dur}s",
               "--timeout", "15s", "--start-at", f"{t0:.6f}", "--out", str(out)]
        for h in t.auth:
            cmd += ["--header", h]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        b2 = sims.ports[1]
        events = [(k * flap_every, "flap") for k in range(1, int(dur / flap_every) + 1)
                  if k * flap_every < dur] + [(kill_at, "kill")]
        busy = False
        for at, what in sorted(events):
            time.sleep(max(0.0, t0 + at - time.time()))
            if what == "kill":
                ctx.procs.stop(sims.procs[2], signal.SIGKILL)
            else:
                busy = not busy
                fault = {"kind": "status", "code": 503} if busy else \
                    {"kind": "none", "latency": "200ms"}
                http("POST", f"http://127.0.0.1:{b2}/_sim/fault", json.dumps(fault).encode(),
                     {"content-type": "application/json"})
        _, err = p.communicate(timeout=dur + 60)
        if p.returncode != 0:
            results["busy"]["targets"][t.name] = {"failed": err.strip()[-500:]}
        else:
            r = json.loads(out.read_text())
            results["busy"]["targets"][t.name] = {
                "requests": r["requests"], "ok": r["ok"], "failed": r["failed"],
                "success_share": r["ok"] / max(1, r["requests"]), "outcomes": r["outcomes"],
                "latency_ms_ok": r["latency_ms_ok"],
                # Which backend answered each success (the sim's x-sim-server).
                "served_by": r.get("served_by", {})}
        t.stop()
        sims.stop(ctx)


# ------------------------------------------------------------------ versions
def versions(ctx):
    def cmd(c):
        try:
            r = subprocess.run(c, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    def pip(name):
        r = subprocess.run([str(ctx.venv / "bin" / "python"), "-m", "pip", "show", name],
                           capture_output=True, text=True)
        return next((ln.split(": ", 1)[1] for ln in r.stdout.splitlines()
                     if ln.startswith("Version: ")), "unknown")
    rev = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(BENCH.parent), "diff", "--quiet", "HEAD", "--"]
                           ).returncode != 0
    cpu = next((ln.split(": ", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "unknown")
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    return {
        "ballast": rev + ("-dirty" if dirty else ""),
        "nginx": cmd([ctx.nginx, "-v"]),
        "haproxy": cmd([ctx.haproxy, "-v"]),
        "pingora-proxy": "0.9.1",
        "sglang-router": pip("sglang-router"),
        "vllm-router": pip("vllm-router"),
        "litellm": pip("litellm"),
        "wrk": cmd(["wrk", "-v"]),
        "kernel": os.uname().release,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "nofile_limit": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[1],
    }


SCENARIOS = {"keepalive": scenario_keepalive, "compressed": scenario_compressed,
             "streams": scenario_streams, "busy": scenario_busy}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nginx", default="/usr/sbin/nginx")
    ap.add_argument("--haproxy", default="/usr/sbin/haproxy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short runs, to try the suite out")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--targets", default="",
                    help="comma-separated target names (ballast, ballast-plain, pingora, nginx, "
                         "haproxy, sglang, vllm, litellm); all when empty")
    args = ap.parse_args()
    ctx = Ctx(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "versions": versions(ctx), "quick": args.quick}
    t0 = time.monotonic()
    try:
        for name in args.only.split(","):
            log(f"=== {name}")
            SCENARIOS[name](ctx, results)
    finally:
        ctx.procs.stop_all()
    results["wall_s"] = time.monotonic() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {out / 'suite.json'} ({results['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
