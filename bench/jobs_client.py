#!/usr/bin/env python3
"""A burst far above capacity beside steady interactive traffic, offered
synchronously or as asynchronous jobs (`Prefer: respond-async`).

Interactive: one request every --interactive-every seconds for --duration
seconds. Burst: --burst requests at once, --burst-at seconds in, either sent
and waited for (--mode sync) or submitted as jobs and polled until each has
finished (--mode async). Prints one JSON object: the interactive requests'
success share and latency, the burst's success share and latency (sync) or
submission latency, completion time and lost jobs (async). Standard library
only.
"""

import argparse
import asyncio
import json
import time

from benchlib import dist_ms, parse_target

BODY = json.dumps({
    "model": "sim-model",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 8,
}).encode()


async def request(host, port, method, path, body=b"", headers=(), timeout=60):
    """(status, body bytes, seconds); status 0 when the exchange failed."""
    t0 = time.perf_counter()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    for k, v in headers:
        head += f"{k}: {v}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return 0, b"", time.perf_counter() - t0
    try:
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
        status = int(raw.split(b" ", 2)[1])
        payload = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
        return status, payload, time.perf_counter() - t0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return 0, b"", time.perf_counter() - t0
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--mode", choices=["sync", "async"], required=True)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--interactive-every", type=float, default=0.25)
    ap.add_argument("--burst", type=int, default=80)
    ap.add_argument("--burst-at", type=float, default=5)
    a = ap.parse_args()
    host, port = parse_target(a.target)
    start = time.monotonic()
    interactive = []

    async def one_interactive():
        interactive.append(await request(host, port, "POST", "/v1/chat/completions", BODY))

    async def steady():
        tasks = []
        while time.monotonic() - start < a.duration:
            tasks.append(asyncio.create_task(one_interactive()))
            await asyncio.sleep(a.interactive_every)
        await asyncio.gather(*tasks)

    burst = {}

    async def offer_burst():
        await asyncio.sleep(a.burst_at)
        t0 = time.monotonic()
        if a.mode == "sync":
            res = await asyncio.gather(*(
                request(host, port, "POST", "/v1/chat/completions", BODY) for _ in range(a.burst)))
            ok = [r for r in res if r[0] == 200]
            burst.update({
                "offered": a.burst,
                "succeeded": len(ok),
                "success_share": round(len(ok) / a.burst, 4),
                "statuses": sorted({r[0] for r in res}),
                "latency_ms": dist_ms([r[2] for r in ok]),
            })
            return
        subs = await asyncio.gather(*(
            request(host, port, "POST", "/v1/chat/completions", BODY,
                    headers=[("Prefer", "respond-async")]) for _ in range(a.burst)))
        ids = [json.loads(b)["id"] for s, b, _ in subs if s == 202]
        pending, done, failed = set(ids), {}, 0
        while pending and time.monotonic() - t0 < 300:
            await asyncio.sleep(0.2)
            for jid in list(pending):
                s, b, _ = await request(host, port, "GET", f"/v1/jobs/{jid}")
                if s != 200:
                    continue
                v = json.loads(b)
                if v["status"] in ("succeeded", "failed", "cancelled"):
                    pending.discard(jid)
                    done[jid] = time.monotonic() - t0
                    failed += v["status"] != "succeeded"
        burst.update({
            "offered": a.burst,
            "accepted": len(ids),
            "submit_ms": dist_ms([r[2] for r in subs]),
            "succeeded": len(done) - failed,
            "failed": failed,
            "lost": len(ids) - len(done),
            "all_done_s": round(max(done.values()), 2) if done else None,
            "done_s": dist_ms(list(done.values())),
        })

    await asyncio.gather(steady(), offer_burst())
    ok = [r for r in interactive if r[0] == 200]
    print(json.dumps({
        "mode": a.mode,
        "interactive": {
            "sent": len(interactive),
            "success_share": round(len(ok) / len(interactive), 4) if interactive else 0,
            "statuses": sorted({r[0] for r in interactive}),
            "latency_ms": dist_ms([r[2] for r in ok]),
        },
        "burst": burst,
    }))


if __name__ == "__main__":
    asyncio.run(main())
