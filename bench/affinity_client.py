#!/usr/bin/env python3
"""A multi-turn chat workload: many conversations at once, each a sequence
of streamed chat completions whose history grows turn by turn, all behind
one shared system prompt.

Each conversation keeps one keep-alive HTTP/1.1 connection and sends its
turns one after another: the system prompt, its own document and every
earlier question and answer, then the new question. Per request it records
the time to first token (the first `data: ` event after the response head)
and the whole request. Prints one JSON object on stdout. Standard library
only.

    affinity_client.py --target 127.0.0.1:8080 --conversations 32 --turns 8
"""

import argparse
import asyncio
import json
import random
import time

from benchlib import dist_ms, parse_target

now = time.perf_counter

SYSTEM = (
    "You are a careful assistant for a support team. Answer from the document "
    "the user gives, quote it where you can, and say so when it does not say. "
) * 8
def answer(tokens: int) -> str:
    """What the simulated server answers (and so what the history holds)."""
    return "".join(f"tok{i} " for i in range(tokens))


def document(c: int) -> str:
    return "".join(f"Section {s} of manual {c}: the device resets when held for {s} seconds. " for s in range(36))


def messages(c: int, turn: int, tokens: int) -> list:
    m = [{"role": "system", "content": SYSTEM}]
    for t in range(turn + 1):
        question = f"Question {t} about manual {c}: what happens after {t + 3} seconds? " * 3
        if t == 0:
            question = document(c) + "\n\n" + question
        m.append({"role": "user", "content": question})
        if t < turn:
            m.append({"role": "assistant", "content": answer(tokens)})
    return m


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head


async def read_chunked(reader, first_event):
    """Read a chunked body to its end; call first_event() at the first
    `data: ` event. Returns whether `data: [DONE]` was seen."""
    seen_first = False
    done = False
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return done
        chunk = await reader.readexactly(size + 2)
        if not seen_first and b"data: " in chunk:
            seen_first = True
            first_event()
        if b"data: [DONE]" in chunk:
            done = True


async def conversation(host, port, c, args, ttft, total, failures):
    turns, tokens = args.turns, args.tokens
    rng = random.Random(c)
    # Users do not all start at once, and read each answer before the next
    # question: without that think time, a conversation's next turn would
    # find the slot its last one just freed, and least-outstanding would
    # look like affinity.
    await asyncio.sleep(rng.uniform(0, args.think_max))
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for turn in range(turns):
            if turn:
                await asyncio.sleep(rng.uniform(args.think_min, args.think_max))
            body = json.dumps(
                {"model": "sim-model", "messages": messages(c, turn, tokens), "stream": True}
            ).encode()
            req = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            t0 = now()
            writer.write(req)
            await writer.drain()
            status, head = await read_head(reader)
            if status != 200 or b"chunked" not in head.lower():
                failures.append(f"conversation {c} turn {turn}: status {status}")
                return
            first = []
            ok = await read_chunked(reader, lambda: first.append(now()))
            if not ok or not first:
                failures.append(f"conversation {c} turn {turn}: stream incomplete")
                return
            ttft.append(first[0] - t0)
            total.append(now() - t0)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        failures.append(f"conversation {c}: {type(e).__name__}: {e}")
    finally:
        writer.close()


async def run(args):
    host, port = parse_target(args.target)
    ttft, total, failures = [], [], []
    t0 = now()
    await asyncio.gather(
        *(
            conversation(host, port, c, args, ttft, total, failures)
            for c in range(args.conversations)
        )
    )
    elapsed = now() - t0
    return {
        "target": args.target,
        "requests": len(total),
        "failures": failures[:10],
        "failed": len(failures),
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(len(total) / elapsed, 2) if elapsed > 0 else 0,
        "ttft_ms": dist_ms(ttft),
        "request_ms": dist_ms(total),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="host:port")
    p.add_argument("--conversations", type=int, default=32)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--tokens", type=int, default=16, help="tokens per answer (the servers' --tokens)")
    p.add_argument("--think-min", type=float, default=0.2, help="seconds between an answer and the next question, at least")
    p.add_argument("--think-max", type=float, default=1.0, help="and at most")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
