#!/usr/bin/env python3
"""Send a fixed number of tiny POSTs over keep-alive connections and print
how many were answered 200 (standard library only). For instruction counts
under callgrind, where a fixed count matters and speed does not.

    fixed_client.py HOST PORT TOTAL CONNECTIONS
"""
import asyncio, sys
host, port, total, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
body = b'{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
       + str(len(body)).encode() + b"\r\n\r\n" + body)
done = 0
async def worker(n):
    global done
    r, w = await asyncio.open_connection(host, port)
    for _ in range(n):
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
        await r.readexactly(length)
        done += 1
    w.close()
async def main():
    # The remainder goes to the first connections: exactly `total` in all.
    await asyncio.gather(*(worker(total // conns + (i < total % conns)) for i in range(conns)))
    print(done)
asyncio.run(main())
