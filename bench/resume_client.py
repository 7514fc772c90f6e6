#!/usr/bin/env python3
"""Long streams through a proxy while its backends are killed mid-stream.

Starts --servers simulated backends itself (`ballast sim`, one process per
port, so one can be killed alone), keeps --concurrency streaming chat
completions going through --target for --duration seconds, and every
--kill-every seconds (with jitter, from a seeded RNG so every proxy faces the
same schedule) kills one backend at random with SIGKILL and starts it again
on the same port --down seconds later.

A stream is whole when the status is 200, the chunked body ends with its
terminating chunk, it carries no error event, its content is exactly the
simulated answer (`tok0 tok1 ... tok{N-1} `) and it ends with `data: [DONE]`.
Prints one JSON object. Standard library only.

    resume_client.py --bin target/release/ballast --ports 9101,9102,9103 \
        --target 127.0.0.1:9000 --duration 30 --tokens 100
"""

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time

from benchlib import dist_ms, parse_duration, parse_target


def expected(tokens):
    return "".join(f"tok{i} " for i in range(tokens))


async def read_chunked(reader):
    """The de-chunked body and whether it ended with its last chunk."""
    body = bytearray()
    while True:
        line = await reader.readline()
        if not line:
            return bytes(body), False
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            return bytes(body), False
        if size == 0:
            await reader.readline()
            return bytes(body), True
        try:
            data = await reader.readexactly(size + 2)
        except asyncio.IncompleteReadError as e:
            body += e.partial
            return bytes(body), False
        body += data[:-2]


def judge(status, body, ended, tokens):
    """Why the stream is not whole, or None."""
    if status != 200:
        return f"status {status}"
    if not ended:
        return "aborted"
    text, done = [], False
    for event in body.decode("utf-8", "replace").split("\n\n"):
        event = event.strip()
        if not event.startswith("data: "):
            continue
        data = event[6:]
        if data == "[DONE]":
            done = True
            continue
        try:
            v = json.loads(data)
        except ValueError:
            return "unreadable event"
        if "error" in v:
            return "error event"
        for c in v.get("choices", []):
            t = (c.get("delta") or {}).get("content")
            if t:
                text.append(t)
    if not done:
        return "no [DONE]"
    if "".join(text) != expected(tokens):
        return "text differs"
    return None


async def one_stream(host, port, tokens, timeout):
    body = json.dumps({
        "model": "sim-model",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "stream": True,
    }).encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode() + body
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return "connect failed", 0.0
    try:
        writer.write(req)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        chunked = b"transfer-encoding: chunked" in head.lower()
        if chunked:
            data, ended = await asyncio.wait_for(read_chunked(reader), timeout)
        else:
            data, ended = await asyncio.wait_for(reader.read(), timeout), True
        return judge(status, data, ended, tokens), time.perf_counter() - t0
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError) as e:
        return type(e).__name__, time.perf_counter() - t0
    finally:
        writer.close()


class Backends:
    def __init__(self, binary, ports, tokens, interval):
        self.binary, self.ports = binary, ports
        self.args = ["--tokens", str(tokens), "--token-interval", interval]
        self.procs = {}

    def start(self, port):
        self.procs[port] = subprocess.Popen(
            [self.binary, "sim", "--listen", f"127.0.0.1:{port}", "--name", f"sim-{port}", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self, port):
        p = self.procs.pop(port, None)
        if p:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def stop(self):
        for port in list(self.procs):
            p = self.procs.pop(port)
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_up(port, limit=10.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise SystemExit(f"backend :{port} did not start")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--ports", required=True, help="comma-separated backend ports")
    ap.add_argument("--target", required=True, help="host:port of the proxy")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--token-interval", default="20ms")
    ap.add_argument("--kill-every", type=float, default=3.0)
    ap.add_argument("--down", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    host, port = parse_target(a.target)
    ports = [int(p) for p in a.ports.split(",")]
    backends = Backends(a.bin, ports, a.tokens, a.token_interval)
    for p in ports:
        backends.start(p)
    try:
        for p in ports:
            await wait_up(p)
        # Let the proxy see its backends (health, pools) before the clock starts.
        await asyncio.sleep(1.0)
        rng = random.Random(a.seed)
        stop_at = time.monotonic() + a.duration
        results = []

        # Each client starts a stream at most once per stream's length: a
        # proxy that fails fast is not asked more often (closed-loop clients
        # would spin on quick 502s and skew the share).
        pace = a.tokens * parse_duration(a.token_interval)

        async def client():
            while time.monotonic() < stop_at:
                started = time.monotonic()
                results.append(await one_stream(host, port, a.tokens, timeout=60))
                await asyncio.sleep(max(0.0, pace - (time.monotonic() - started)))

        async def killer():
            kills = 0
            while True:
                await asyncio.sleep(a.kill_every * rng.uniform(0.5, 1.5))
                if time.monotonic() >= stop_at:
                    return kills
                victim = rng.choice(ports)
                backends.kill(victim)
                kills += 1
                await asyncio.sleep(a.down)
                backends.start(victim)
                await wait_up(victim)

        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(client() for _ in range(a.concurrency)))
        kills = await kill_task
    finally:
        backends.stop()
    reasons = {}
    for why, _ in results:
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    whole = sum(1 for why, _ in results if why is None)
    print(json.dumps({
        "streams": len(results),
        "whole": whole,
        "whole_share": round(whole / len(results), 4) if results else 0.0,
        "kills": kills,
        "not_whole": reasons,
        "duration_ms": dist_ms([d for why, d in results if why is None]),
    }))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
