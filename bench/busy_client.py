#!/usr/bin/env python3
"""Open-loop constant-rate load: fire requests at a fixed rate, whatever the answers.

Request i is due at t0 + i/rate, for i in 0 .. rate*duration-1. Each one is
started on time on its own TCP connection (HTTP/1.1, `Connection: close`),
whether or not earlier requests have been answered, so a slow or failing
server does not slow the client down (no coordinated omission). Every request
has a client-side limit (--timeout, connect included).

Per request it records when it was due, when the connection was made, when
the response head and the end of the body arrived, the status, whether the
answer carried `Retry-After`, the `x-sim-server` header (which simulated
backend answered), and for failures without a status the kind of error:
`timeout`, `timeout before response head`, `reset before response head`,
`closed before response head`, `closed mid-body`, `connect: ECONNREFUSED`, ...

Latency is measured from the time the request was due (wrk2's convention),
so any lateness of the client itself counts against the target; the client
reports how late it started requests (`start_lag_ms`).

Prints one JSON object with the stats on stdout (or to --out FILE);
--records FILE also writes one JSON line per request. Standard library only.

    busy_client.py --target 127.0.0.1:8080 --rate 90 --duration 30s
"""

import argparse
import asyncio
import errno
import json
import resource
import sys
import time

from benchlib import dist_ms, parse_duration, parse_target, pct

now = time.perf_counter

MAX_HEAD = 64 * 1024
SAMPLE = 300  # response bytes kept per error kind


class Req:
    __slots__ = ("i", "due", "t_start", "t_conn", "t_head", "t_end", "status",
                 "retry_after", "server", "error", "sample")

    def __init__(self, i, due):
        self.i = i
        self.due = due  # perf_counter time the request was due
        self.t_start = self.t_conn = self.t_head = self.t_end = None
        self.status = None
        self.retry_after = None
        self.server = None
        self.error = None
        self.sample = b""

    def kind(self):
        """What the client got: `2xx`-style `status NNN`, or the error kind."""
        if self.status is not None and self.error is None:
            return f"status {self.status}"
        if self.error is not None:
            return self.error
        return "unknown"

    def ok(self):
        return self.error is None and self.status is not None and 200 <= self.status < 300


async def read_body(reader, headers):
    """Read the body as framed by the headers; raises on a cut body."""
    te = headers.get("transfer-encoding", "").lower()
    if "chunked" in te:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailers (usually none) up to the empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            await reader.readexactly(n)
    else:
        await reader.read()  # until EOF


async def one(r, host, port, req_bytes, args):
    writer = None
    r.t_start = now()
    try:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            name = type(e).__name__
            if e.errno is not None:
                name = errno.errorcode.get(e.errno, name)
            r.error = f"connect: {name}"
            return
        r.t_conn = now()
        writer.write(req_bytes)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            r.error = "response head too large"
            return
        except asyncio.IncompleteReadError as e:
            r.sample = e.partial[:SAMPLE]
            r.error = "closed before response head"
            return
        except ConnectionResetError:
            r.error = "reset before response head"
            return
        r.t_head = now()
        r.sample = head[:SAMPLE]
        lines = head.split(b"\r\n")
        try:
            r.status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            r.error = "bad status line"
            return
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        r.retry_after = headers.get("retry-after")
        r.server = headers.get("x-sim-server")
        try:
            await read_body(reader, headers)
        except (asyncio.IncompleteReadError, ConnectionResetError, ValueError):
            r.error = "closed mid-body"
            return
        r.t_end = now()
    except OSError as e:
        name = type(e).__name__
        if e.errno is not None:
            name = errno.errorcode.get(e.errno, name)
        r.error = ("after response head: " if r.t_head else "before response head: ") + name
    finally:
        if r.t_end is None:
            r.t_end = now()
        if writer is not None:
            writer.close()


async def guarded(r, host, port, req_bytes, args):
    try:
        await asyncio.wait_for(one(r, host, port, req_bytes, args), args.timeout)
    except asyncio.TimeoutError:
        r.t_end = now()
        r.error = "timeout" if r.t_head else "timeout before response head"


async def run(args):
    host, port = args.target
    body = json.dumps({
        "model": args.model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": args.max_tokens,
    }, separators=(",", ":")).encode()
    req_bytes = (
        f"POST {args.path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{h}\r\n" for h in args.header)
        + "\r\n"
    ).encode() + body

    n = int(round(args.rate * args.duration))
    if args.start_at:
        # Wall-clock start shared with the fault driver.
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    wall0 = time.time()
    t0 = now()
    reqs = [Req(i, t0 + i / args.rate) for i in range(n)]
    tasks = []
    lags = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for r in reqs:
        delay = r.due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, now() - r.due))
        tasks.append(asyncio.ensure_future(guarded(r, host, port, req_bytes, args)))
    t_sent = now()
    await asyncio.gather(*tasks)
    t1 = now()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)

    # ---- stats
    kinds = {}
    samples = {}
    for r in reqs:
        k = "2xx" if r.ok() else r.kind()
        kinds[k] = kinds.get(k, 0) + 1
        if not r.ok() and k not in samples:
            samples[k] = {"after_ms": (r.t_end - r.due) * 1e3,
                          "response_start": r.sample.decode("utf-8", "replace")}
    ok = [r for r in reqs if r.ok()]
    by_status = {}
    for r in reqs:
        if r.status is not None and r.error is None:
            s = by_status.setdefault(str(r.status), {"n": 0, "with_retry_after": 0, "retry_after_values": {}})
            s["n"] += 1
            if r.retry_after is not None:
                s["with_retry_after"] += 1
                vals = s["retry_after_values"]
                vals[r.retry_after] = vals.get(r.retry_after, 0) + 1
    err_latency = {}
    for r in reqs:
        if not r.ok():
            err_latency.setdefault(r.kind(), []).append(r.t_end - r.due)
    served_by = {}
    for r in ok:
        served_by[r.server or "?"] = served_by.get(r.server or "?", 0) + 1
    # Per second of the schedule: what the requests due in that second got.
    timeline = []
    for sec in range(int(args.duration + 0.999)):
        row = {"t": sec, "sent": 0}
        for r in reqs:
            if sec <= r.due - t0 < sec + 1:
                row["sent"] += 1
                k = "ok" if r.ok() else r.kind()
                row[k] = row.get(k, 0) + 1
        ok_here = sorted((r.t_end - r.due) * 1e3 for r in reqs if r.ok() and sec <= r.due - t0 < sec + 1)
        row["ok_p50_ms"] = pct(ok_here, 50) if ok_here else None
        row["ok_max_ms"] = ok_here[-1] if ok_here else None
        timeline.append(row)
    # Requests open at the same time, from the client's side.
    events = sorted([(r.t_start, 1) for r in reqs] + [(r.t_end, -1) for r in reqs])
    open_now = peak_open = 0
    for _, d in events:
        open_now += d
        peak_open = max(peak_open, open_now)

    if args.records:
        with open(args.records, "w") as f:
            for r in reqs:
                f.write(json.dumps({
                    "i": r.i, "due_s": round(r.due - t0, 6),
                    "start_lag_ms": round((r.t_start - r.due) * 1e3, 3),
                    "connect_ms": round((r.t_conn - r.t_start) * 1e3, 3) if r.t_conn else None,
                    "head_ms": round((r.t_head - r.due) * 1e3, 3) if r.t_head else None,
                    "latency_ms": round((r.t_end - r.due) * 1e3, 3),
                    "status": r.status, "error": r.error, "retry_after": r.retry_after,
                    "server": r.server,
                }) + "\n")

    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "label": args.label,
        "target": f"{host}:{port}",
        "rate": args.rate,
        "duration_s": args.duration,
        "timeout_s": args.timeout,
        "requests": n,
        "ok": len(ok),
        "failed": n - len(ok),
        "outcomes": kinds,
        "by_status": by_status,
        "error_samples": samples,
        "latency_ms_ok": dist_ms([r.t_end - r.due for r in ok]),
        "latency_ms_by_error": {k: dist_ms(v) for k, v in err_latency.items()},
        "served_by": served_by,
        "timeline": timeline,
        "peak_open": peak_open,
        "start_lag_ms": dist_ms(lags),
        "start_wall": wall0,
        "send_span_s": t_sent - t0,
        "wall_s": t1 - t0,
        "client_cpu_s": cpu,
        "params": {"path": args.path, "model": args.model, "max_tokens": args.max_tokens,
                   "body_bytes": len(body)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=parse_target, required=True, help="HOST:PORT")
    ap.add_argument("--rate", type=float, default=90.0, help="requests per second")
    ap.add_argument("--duration", type=parse_duration, default=parse_duration("30s"))
    ap.add_argument("--timeout", type=parse_duration, default=parse_duration("15s"),
                    help="per-request client limit, connect included")
    ap.add_argument("--start-at", type=float, default=0.0,
                    help="wall-clock time (epoch seconds) of the first request; default: now")
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--model", default="sim-model")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--records", help="write one JSON line per request to this file")
    ap.add_argument("--out", help="write the stats JSON here instead of stdout")
    ap.add_argument("--label", default="")
    ap.add_argument("--header", action="append", default=[],
                    help="an extra request header, 'name: value' (repeat for more)")
    args = ap.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        ap.error("--rate and --duration must be positive")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    res = asyncio.run(run(args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f)
            f.write("\n")
    else:
        json.dump(res, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
