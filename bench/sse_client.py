#!/usr/bin/env python3
"""Open many concurrent streaming chat completions and time them.

One stream per TCP connection (HTTP/1.1, keep-alive not reused):
POST /v1/chat/completions with "stream": true. Connections are opened in
batches (--batch every --batch-interval) so the ramp is fast but not a single
burst. Per stream it records:

  t_connect  connect() started          t_send   request written (connected)
  t_head     response head complete     t_first  first body byte after the head
  t_done     `data: [DONE]` seen        t_end    body complete / connection closed

and counts `data: ` lines by scanning the raw bytes (chunk-size lines of a
chunked body never contain `data: `, so no de-chunking is needed). A stream is
OK when the status is 200, it saw at least --tokens data lines besides
`data: [DONE]`, and it saw `data: [DONE]`.

Prints one JSON object with the stats on stdout. Standard library only.

    sse_client.py --target 127.0.0.1:9001 [--target ...] --streams 1000 --tokens 20
"""

import argparse
import asyncio
import errno
import json
import resource
import sys
import time

from benchlib import dist_ms, parse_duration, parse_target

now = time.perf_counter

DATA = b"data: "
DONE = b"data: [DONE]"
TAIL = len(DONE) - 1  # bytes kept between reads so split markers are still found
LAST_CHUNK = b"\r\n0\r\n\r\n"
MAX_HEAD = 64 * 1024
SAMPLE = 400  # response bytes kept per stream for the failure samples


class Stream(asyncio.Protocol):
    __slots__ = (
        "req", "tokens", "finished", "transport", "timer",
        "t_connect", "t_send", "t_head", "t_first", "t_done", "t_end",
        "status", "hbuf", "tail", "data_lines", "done", "framing", "remaining",
        "error", "sample",
    )

    def __init__(self, req, tokens, finished):
        self.req = req
        self.tokens = tokens
        self.finished = finished  # callback(stream), called exactly once
        self.transport = None
        self.timer = None
        self.t_connect = self.t_send = self.t_head = self.t_first = None
        self.t_done = self.t_end = None
        self.status = None
        self.hbuf = b""
        self.tail = b""
        self.data_lines = 0  # `data: ` lines, `data: [DONE]` included
        self.done = False
        self.framing = None  # "chunked" | "length" | "close"
        self.remaining = 0
        self.error = None
        self.sample = b""  # first bytes of the response, shown for failed streams

    # -- asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        self.t_send = now()
        transport.write(self.req)

    def data_received(self, data):
        t = now()
        if self.t_end is not None:
            return
        if len(self.sample) < SAMPLE:
            self.sample += data[:SAMPLE - len(self.sample)]
        if self.t_head is None:
            self.hbuf += data
            i = self.hbuf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.hbuf) > MAX_HEAD:
                    self.finish("response head too large")
                return
            self.t_head = t
            head, data = self.hbuf[:i], self.hbuf[i + 4:]
            self.hbuf = None
            lines = head.split(b"\r\n")
            try:
                self.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                self.finish("bad status line")
                return
            self.framing = "close"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value:
                    self.framing = "chunked"
                elif name == b"content-length" and self.framing != "chunked":
                    self.framing, self.remaining = "length", int(value)
            if self.framing == "length" and self.remaining == 0:
                self.finish(None)
                return
            if not data:
                return
        if self.t_first is None:
            self.t_first = t
        buf = self.tail + data
        # Markers wholly inside the kept tail were counted on the previous read.
        self.data_lines += buf.count(DATA) - self.tail.count(DATA)
        if not self.done and DONE in buf:
            self.done = True
            self.t_done = t
        self.tail = buf[-TAIL:]
        if self.framing == "chunked":
            if self.done and buf.endswith(LAST_CHUNK):
                self.finish(None)
        elif self.framing == "length":
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.finish(None)

    def connection_lost(self, exc):
        if self.t_end is None:
            if self.t_head is None:
                what = "closed before response head"
            elif self.framing == "close":
                what = None  # body delimited by EOF
            else:
                what = "closed mid-body"
            if what and exc is not None:
                what += f" ({type(exc).__name__})"
            self.finish(what, close=False)

    def eof_received(self):
        return False  # close the transport

    # -- ours
    def on_timeout(self):
        self.timer = None
        if self.t_end is None:
            self.finish("timeout" if self.t_head else "timeout before response head")

    def finish(self, error, close=True):
        if self.t_end is not None:
            return
        self.t_end = now()
        self.error = error
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if close and self.transport is not None:
            self.transport.close()
        self.finished(self)

    def ok(self):
        return self.status == 200 and self.done and self.data_lines - 1 >= self.tokens

    def failure(self):
        """Why the stream is not OK (None when it is)."""
        if self.ok():
            return None
        if self.status is not None and self.status != 200:
            return f"status {self.status}"
        if self.error and not self.done:
            return self.error
        if not self.done:
            return "no data: [DONE]"
        return "missing tokens"


async def run(args):
    loop = asyncio.get_running_loop()
    n = args.streams
    body = json.dumps({
        "model": args.model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }, separators=(",", ":")).encode()
    reqs = []
    for host, port in args.target:
        reqs.append((
            f"POST {args.path} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        ).encode() + body)

    streams = []
    connect_errors = {}
    remaining = n
    all_done = loop.create_future()

    def finished(_s):
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not all_done.done():
            all_done.set_result(None)

    # Event-loop lag: how late a 10ms sleep wakes up (client saturation).
    lags = []

    async def lag_probe():
        while True:
            t = now()
            await asyncio.sleep(0.01)
            lags.append(now() - t - 0.01)

    probe = asyncio.ensure_future(lag_probe())

    async def open_one(i):
        host, port = args.target[i % len(args.target)]
        s = Stream(reqs[i % len(reqs)], args.tokens, finished)
        streams.append(s)
        s.t_connect = now()
        s.timer = loop.call_later(args.timeout, s.on_timeout)
        try:
            await loop.create_connection(lambda: s, host, port)
        except OSError as e:
            name = type(e).__name__
            if e.errno is not None:
                name = errno.errorcode.get(e.errno, name)
            connect_errors[name] = connect_errors.get(name, 0) + 1
            s.finish(f"connect: {name}", close=False)

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = now()
    for b in range(0, n, args.batch):
        await asyncio.gather(*(open_one(i) for i in range(b, min(b + args.batch, n))))
        if b + args.batch < n and args.batch_interval > 0:
            await asyncio.sleep(args.batch_interval)
    t_ramp = now()
    if n:
        await all_done
    t1 = now()
    probe.cancel()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)

    ok = [s for s in streams if s.ok()]
    failures = {}
    samples = {}  # one example response per failure kind
    for s in streams:
        f = s.failure()
        if f:
            failures[f] = failures.get(f, 0) + 1
            if f not in samples:
                samples[f] = {
                    "after_ms": (s.t_end - s.t_send) * 1e3 if s.t_send is not None else None,
                    "response_start": s.sample.decode("utf-8", "replace"),
                }

    # Streams open at the same time, from the client's point of view.
    events = []
    for s in streams:
        if s.t_send is not None:
            events.append((s.t_send, 1))
            events.append((s.t_end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    open_now = peak_open = 0
    for _, d in events:
        open_now += d
        peak_open = max(peak_open, open_now)
    sent = [s for s in streams if s.t_send is not None]
    all_open_ms = None
    if sent and len(sent) == n:
        all_open_ms = max(0.0, (min(s.t_end for s in sent) - max(s.t_send for s in sent)) * 1e3)

    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "label": args.label,
        "targets": [f"{h}:{p}" for h, p in args.target],
        "streams": n,
        "tokens": args.tokens,
        "ok": len(ok),
        "failed": n - len(ok),
        "failures": failures,
        "failure_samples": samples,
        "connect_errors": connect_errors,
        "ttfb_ms": dist_ms([s.t_first - s.t_send for s in ok]),
        "head_ms": dist_ms([s.t_head - s.t_send for s in ok]),
        "connect_ms": dist_ms([s.t_send - s.t_connect for s in sent]),
        "stream_ms": dist_ms([s.t_done - s.t_send for s in ok]),
        "data_lines_per_ok_stream": {"min": min(s.data_lines for s in ok),
                                     "max": max(s.data_lines for s in ok)} if ok else None,
        "peak_open": peak_open,
        "all_open_ms": all_open_ms,
        "ramp_ms": (t_ramp - t0) * 1e3,
        "wall_ms": (t1 - t0) * 1e3,
        "client_cpu_s": cpu,
        "client_cpu_share": cpu / (t1 - t0) if t1 > t0 else None,
        "loop_lag_ms": dist_ms(lags),
        "params": {
            "batch": args.batch,
            "batch_interval_ms": args.batch_interval * 1e3,
            "timeout_s": args.timeout,
            "path": args.path,
            "model": args.model,
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", type=parse_target, required=True,
                    help="HOST:PORT; repeat to spread the streams round-robin")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=20, help="token events a complete stream carries")
    ap.add_argument("--batch", type=int, default=200, help="connections opened together")
    ap.add_argument("--batch-interval", type=parse_duration, default=parse_duration("10ms"),
                    help="pause between batches (e.g. 10ms)")
    ap.add_argument("--timeout", type=parse_duration, default=parse_duration("120s"),
                    help="per-stream limit, connect included")
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--model", default="sim-model")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if args.streams + 64 > soft:
        print(f"warning: {args.streams} streams but RLIMIT_NOFILE is {soft}", file=sys.stderr)

    res = asyncio.run(run(args))
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
