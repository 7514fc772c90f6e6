"""RabbitMQ clients for the end-to-end tests, written with pika as a user
would: a producer publishing persistent requests with reply_to and
correlation_id (the seed's RPC pattern), and readers of the reply and
dead-letter queues. Every command prints one JSON document on stdout.

  publish  --port P --queue Q --reply-to R --n N [--first K] [--body-json T]
  collect  --port P --queue R --n N [--timeout S]    replies, by correlation id
  raw      --port P --queue Q --reply-to R --body B [--header k=v] [--correlation-id C]
           [--content-type T] [--gzip] [--repeat K (the body K times)]
  count    --port P --queue Q                          ready messages
  drain    --port P --queue Q [--n N] [--timeout S]   dead letters with headers
"""

import argparse
import gzip
import json
import sys
import time

import pika


def connect(port):
    params = pika.ConnectionParameters(
        "127.0.0.1", port, connection_attempts=20, retry_delay=0.5, heartbeat=30
    )
    return pika.BlockingConnection(params)


def request(i):
    # Each request asks for its own number of tokens: its reply's usage
    # tells which request it answers.
    return {
        "model": "sim-model",
        "messages": [{"role": "user", "content": f"request {i}"}],
        "max_tokens": 1 + i % 40,
    }


def declare_replies(ch, queue):
    # Durable, so replies outlive a broker restart.
    ch.queue_declare(queue, durable=True)


def publish(a):
    conn = connect(a.port)
    ch = conn.channel()
    ch.confirm_delivery()
    declare_replies(ch, a.reply_to)
    for i in range(a.first, a.first + a.n):
        body = json.dumps(request(i)) if a.body_json is None else a.body_json
        ch.basic_publish(
            exchange="",
            routing_key=a.queue,
            body=body.encode(),
            properties=pika.BasicProperties(
                reply_to=a.reply_to,
                correlation_id=f"c-{i}",
                message_id=f"m-{i}",
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
            ),
        )
    conn.close()
    print(json.dumps({"published": a.n}))


def raw(a):
    conn = connect(a.port)
    ch = conn.channel()
    ch.confirm_delivery()
    declare_replies(ch, a.reply_to)
    headers = dict(h.split("=", 1) for h in a.header)
    body = a.body.encode() * a.repeat
    ch.basic_publish(
        exchange="",
        routing_key=a.queue,
        body=gzip.compress(body) if a.gzip else body,
        properties=pika.BasicProperties(
            reply_to=a.reply_to,
            correlation_id=a.correlation_id,
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type=a.content_type,
            content_encoding="gzip" if a.gzip else None,
            headers=headers or None,
        ),
    )
    conn.close()
    print(json.dumps({"published": 1}))


def text(v):
    return v.decode() if isinstance(v, bytes) else v


def read(a, with_headers):
    """Messages from a queue until n are in or the timeout passes; each is
    acked once read. Reconnects if the broker goes away meanwhile."""
    got = []
    deadline = time.monotonic() + a.timeout
    while len(got) < a.n and time.monotonic() < deadline:
        try:
            conn = connect(a.port)
            ch = conn.channel()
            if not with_headers:
                declare_replies(ch, a.queue)
            while len(got) < a.n and time.monotonic() < deadline:
                method, props, body = ch.basic_get(a.queue, auto_ack=False)
                if method is None:
                    conn.sleep(0.05)
                    continue
                item = {
                    "correlation_id": props.correlation_id,
                    "message_id": props.message_id,
                    "delivery_mode": props.delivery_mode,
                    "content_type": props.content_type,
                    "headers": {k: text(v) for k, v in (props.headers or {}).items()},
                    "body": body.decode(errors="replace"),
                }
                got.append(item)
                ch.basic_ack(method.delivery_tag)
            conn.close()
        except pika.exceptions.AMQPError as e:
            print(f"amqp_client: {e!r}; reconnecting", file=sys.stderr)
            time.sleep(0.5)
    print(json.dumps(got))


def count(a):
    conn = connect(a.port)
    ch = conn.channel()
    q = ch.queue_declare(a.queue, passive=True)
    print(json.dumps({"messages": q.method.message_count, "consumers": q.method.consumer_count}))
    conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["publish", "collect", "raw", "count", "drain"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--reply-to", default="replies")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--body", default="")
    p.add_argument("--body-json")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--correlation-id", default="c-raw")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    if a.command == "publish":
        publish(a)
    elif a.command == "raw":
        raw(a)
    elif a.command == "collect":
        read(a, with_headers=False)
    elif a.command == "drain":
        read(a, with_headers=True)
    else:
        count(a)


if __name__ == "__main__":
    main()
