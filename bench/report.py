#!/usr/bin/env python3
"""Writes REPORT.md and its charts from the suite's suite.json.

    report.py bench/results/suite.json      # writes next to it

Every figure is a median of the suite's interleaved repeats; ratios compare
figures from the same run only.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "direct": "direct", "ballast": "Ballast", "ballast-plain": "Ballast (openai off)",
    "pingora": "pingora-proxy (bare)", "nginx": "nginx", "haproxy": "HAProxy",
    "sglang": "sglang-router", "vllm": "vllm-router", "litellm": "LiteLLM proxy",
}
COLORS = {
    "direct": "#999999", "ballast": "#d62728", "ballast-plain": "#ff9896",
    "pingora": "#ff7f0e", "nginx": "#2ca02c", "haproxy": "#1f77b4",
    "sglang": "#9467bd", "vllm": "#8c564b", "litellm": "#e377c2",
}
PEERS = ["pingora", "nginx", "haproxy", "sglang", "vllm", "litellm"]


def lab(n):
    return LABELS.get(n, n)


def f(v, digits=0, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{digits}f}×"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def per_core(t):
    cpu = t.get("cpu_us_per_req")
    return 1e6 / cpu if cpu else None


def bar(path, title, ylabel, names, values, errs=None, log=False):
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    xs = range(len(names))
    ax.bar(xs, [v or 0 for v in values], color=[COLORS.get(n, "#777") for n in names],
           yerr=errs, capsize=3 if errs else 0)
    ax.set_xticks(list(xs), [lab(n) for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    for x, v in zip(xs, values):
        if v:
            ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.1f}", (x, v), ha="center",
                        va="bottom", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def small_section(d, out, charts):
    s = d["small"]
    T = s["targets"]
    order = [n for n in ["direct", "ballast", "ballast-plain", "pingora", "nginx", "haproxy",
                         "sglang", "vllm", "litellm"] if n in T and T[n].get("rps")]
    b = T.get("ballast", {})
    rows = []
    for n in order:
        t = T[n]
        rows.append([lab(n), f(t["rps"]), f(t.get("cpu_us_per_req"), 1), f(per_core(t)),
                     f(t["p50_ms"], 2), f(t["p99_ms"], 2), f(t["p99_9_ms"], 2),
                     f(t.get("errors")), "" if n in ("ballast", "direct") else
                     ratio(per_core(b), per_core(t))])
    out.append("## 1. Small requests (keep-alive)\n")
    p = s["params"]
    out.append(f"wrk, {p['conns']} connections, one thread, `POST /v1/chat/completions` with a "
               f"{p['body_bytes']}-byte body and `max_tokens: 1`, {p['duration_s']} s per run, "
               f"median of {p['repeats']} interleaved runs. *req/s* is what wrk got; the proxy "
               "is not always the bottleneck (wrk and the backends share the other core), so "
               "*per core* divides by the proxy's own CPU time (`perf stat -e task-clock`): "
               "the requests one fully used core would carry.\n")
    out.append(table(["target", "req/s", "proxy CPU µs/req", "req/s per core", "p50 ms",
                      "p99 ms", "p99.9 ms", "errors", "Ballast ÷ this (per core)"], rows))
    names = [n for n in order if n != "direct"]
    bar(charts / "small-per-core.png", "Small requests: requests per second per proxy core "
        "(higher is better)", "req/s per core", names, [per_core(T[n]) for n in names], log=True)
    out.append("\n![requests per core](small-per-core.png)\n")
    u = d.get("small_unpinned", {}).get("targets", {})
    if u:
        rows = [[lab(n), f(t.get("rps")), f(t.get("p99_ms"), 2),
                 "" if n in ("ballast", "direct") else ratio(u.get("ballast", {}).get("rps"),
                                                             t.get("rps"))]
                for n, t in u.items()]
        out.append("\nUnpinned (two workers each, nothing pinned; wrk with two threads, "
                   "everything shares both cores):\n")
        out.append(table(["target", "req/s", "p99 ms", "Ballast ÷ this"], rows))


def rate_section(d, out, charts):
    r = d["rate"]
    out.append("\n## 2. Added latency at a fixed rate\n")
    out.append(f"`loadgen rate` (bench/loadgen): requests sent on a fixed schedule over "
               f"{r['params']['conns']} keep-alive connections, each on its own schedule; a "
               "request's latency counts from when it was due if its connection was still busy "
               "(coordinated omission). *Added* is the target's percentile minus direct's, both "
               f"medians of {r['params']['repeats']} interleaved runs of "
               f"{r['params']['duration_s']} s.\n")
    for rate, x in r["by_rate"].items():
        T = x["targets"]
        dct = T.get("direct", {})
        rows = []
        for n, t in T.items():
            if t.get("p50") is None:
                continue
            add = ["" if n == "direct" else f"+{(t[k] - dct[k]) / 1000:.3f}"
                   if dct.get(k) is not None else "—" for k in ("p50", "p99", "p99_9")]
            rows.append([lab(n), f(t["p50"] / 1000, 3), f(t["p99"] / 1000, 3),
                         f(t["p99_9"] / 1000, 3)] + add + [f(t.get("cpu_us_per_req"), 1),
                                                           f(t.get("errors"))])
        out.append(f"\n**{rate} req/s**" + (f" (not run: {', '.join(lab(s) for s in x['skipped'])}"
                                             ", whose ceiling in §1 is below 1.25× this rate)"
                                             if x["skipped"] else "") + "\n")
        out.append(table(["target", "p50 ms", "p99 ms", "p99.9 ms", "added p50", "added p99",
                          "added p99.9", "proxy CPU µs/req", "errors"], rows))
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
        qs = ["p50", "p75", "p90", "p99", "p99_9", "p99_99"]
        for n, t in T.items():
            if t.get("p50") is None:
                continue
            ax.plot(range(len(qs)), [t[q] / 1000 for q in qs], marker="o", label=lab(n),
                    color=COLORS.get(n), linewidth=2.2 if n == "ballast" else 1.2)
        ax.set_xticks(range(len(qs)), ["50", "75", "90", "99", "99.9", "99.99"])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency, ms (log)")
        ax.set_yscale("log")
        ax.set_title(f"Latency distribution at {rate} req/s (lower is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(charts / f"latency-{rate}.png")
        plt.close(fig)
        out.append(f"\n![latency at {rate} req/s](latency-{rate}.png)\n")


def streams_section(d, out, charts):
    s = d["streams"]
    out.append("\n## 3. Streaming (SSE)\n")
    out.append("`loadgen streams`: every stream is its own connection sending a streaming chat "
               "completion; the simulated backend sends the head at once and a token every "
               "interval. *TTFB* is the time to the first event; *gap* is the time between reads "
               "that carried events; both are shown as added over direct. RSS is the proxy's "
               "(all its processes), sampled every 100 ms: *active* is (peak − before) ÷ streams "
               "open, *idle* the same while every stream had its head and none its first token. "
               "CPU per 1,000 events counts each `data:` line relayed (tokens, the final chunk "
               "and `[DONE]`).\n")
    for name, c in s["cases"].items():
        p = c["params"]
        T = c["targets"]
        dct = T.get("direct", {})
        rows = []
        for n, t in T.items():
            if "ttfb_us" not in t:
                rows.append([lab(n), "failed: " + str(t.get("failed"))[:80]] + [""] * 7)
                continue

            def add(k, q):
                if n == "direct" or not dct.get(k):
                    return f((t[k][q] or 0) / 1000, 1)
                return f"+{((t[k][q] or 0) - (dct[k][q] or 0)) / 1000:.1f}"
            fails = sum(t["failed"].values()) if isinstance(t["failed"], dict) else t["failed"]
            rows.append([lab(n), f"{t['ok']} / {fails}", add("ttfb_us", "p50"),
                         add("ttfb_us", "p99"), add("gap_us", "p50"), add("gap_us", "p99"),
                         f(t.get("rss_idle_kib_per_stream"), 1),
                         f(t.get("rss_active_kib_per_stream"), 1),
                         f(t.get("cpu_ms_per_1k_events"), 1)])
        out.append(f"\n**{p['streams']:,} streams × {p['tokens']} tokens, one every "
                   f"{p['interval_ms']} ms**\n")
        out.append(table(["target", "ok / failed", "TTFB p50 ms", "TTFB p99 ms", "gap p50 ms",
                          "gap p99 ms", "RSS KiB/stream idle", "RSS KiB/stream active",
                          "CPU ms per 1k events"], rows))
        names = [n for n, t in T.items() if t.get("rss_active_kib_per_stream") is not None]
        if names:
            fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
            xs = range(len(names))
            idle = [T[n].get("rss_idle_kib_per_stream") or 0 for n in names]
            act = [T[n]["rss_active_kib_per_stream"] for n in names]
            ax.bar([x - 0.2 for x in xs], idle, 0.4, label="idle", color="#aec7e8")
            ax.bar([x + 0.2 for x in xs], act, 0.4, label="active",
                   color=[COLORS.get(n) for n in names])
            for x, v in zip(xs, act):
                ax.annotate(f"{v:.1f}", (x + 0.2, v), ha="center", va="bottom", fontsize=7)
            ax.set_xticks(list(xs), [lab(n) for n in names], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("KiB per open stream")
            ax.set_title(f"Memory per open stream, {p['streams']:,} streams (lower is better)",
                         fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            fig.savefig(charts / f"rss-per-stream-{name}.png")
            plt.close(fig)
            out.append(f"\n![RSS per stream]( rss-per-stream-{name}.png)\n".replace("( ", "("))


def busy_section(d, out, charts):
    b = d["busy"]
    p = b["params"]
    out.append("\n## 4. Busy: overload and faults\n")
    out.append(f"Three simulated backends, each answering after {p['latency_ms']} ms and taking "
               f"{p['slots']} requests at once (`ballast sim --max-concurrency {p['slots']}`: a "
               "fifth gets 503 \"server busy\", whatever proxy is in front). "
               f"An open-loop client (bench/busy_client.py, a new connection per request, 15 s "
               f"limit) offers {p['rate']} req/s for {p['duration_s']} s, about 1.5× what the "
               f"three can serve; backend 2 turns to answering 503 every {p['flap_every_s']:.0f} s "
               f"and back, and backend 3 is killed at {p['kill_at_s']:.0f} s. Each proxy is set "
               "up as an operator would for this: a cap of 4 per backend where it has one, and "
               "a queue of at most 150 requests waiting at most 5 s where it has one (Ballast "
               "`max_depth = 150`, HAProxy `maxqueue 50` per server and `timeout queue 5s`, the "
               "routers' `--max-concurrent-requests 12 --queue-size 150`; nginx has no queue, "
               "LiteLLM has `max_parallel_requests = 4` per backend), "
               "retries of 502/503/504 and connect errors, 1 s health checks, and passive "
               "ejection where the proxy has it (Ballast and nginx: `max_fails = 3`, "
               "`fail_timeout = 10s`; Ballast also `probe_interval = 500ms`). Once backend 3 is dead the remaining capacity cannot carry the load: "
               "the question is how many requests are still served, and whether the rest get an "
               "honest answer fast.\n")
    T = b["targets"]
    rows = []
    for n, t in T.items():
        if "success_share" not in t:
            rows.append([lab(n), "failed: " + str(t.get("failed"))[:80], "", "", "", ""])
            continue
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(t["outcomes"].items(), key=lambda kv:
                                                           -kv[1]) if k != "2xx")
        lat = t.get("latency_ms_ok") or {}
        by = t.get("served_by") or {}
        served = " / ".join(str(by.get(b, 0)) for b in ("b1", "b2", "b3")) \
            if by and set(by) <= {"b1", "b2", "b3"} else "—"
        rows.append([lab(n), f"{t['success_share'] * 100:.1f} %", errs or "none", served,
                     f(lat.get("p50")), f(lat.get("p99"))])
    out.append(table(["proxy", "answered 2xx", "the others", "2xx from b1 / b2 / b3",
                      "p50 ms (2xx)", "p99 ms (2xx)"], rows))
    names = [n for n, t in T.items() if "success_share" in t]
    bar(charts / "busy-success.png", "Busy: share of requests answered 2xx (higher is better)",
        "% answered 2xx", names, [T[n]["success_share"] * 100 for n in names])
    out.append("\n![busy](busy-success.png)\n")


def compressed_section(d, out):
    c = d["compressed"]
    p = c["params"]
    C = c["cases"]
    out.append("\n## 5. Compressed prompts\n")
    out.append(f"A {p['body_bytes'] / 1024:.0f} KiB chat request (random words, so about as "
               f"compressible as text: {p['br_bytes'] / 1024:.0f} KiB with Brotli) at "
               f"{p['rate']} req/s for {p['duration_s']} s, through Ballast as JSON and as "
               "`content-encoding: br`, which Ballast decodes before the backend sees it (nginx "
               "and HAProxy pass request bodies through undecoded, and the backends measured "
               "here cannot read Brotli, so they have no row).\n")
    rows = [[n, f(t.get("p50"), 0), f(t.get("p99"), 0), f(t.get("cpu_us_per_req"), 0),
             f"{t.get('ok')}/{t.get('sent')}"] for n, t in C.items()]
    out.append(table(["case", "p50 µs", "p99 µs", "Ballast CPU µs/req", "ok/sent"], rows))
    br, plain = C.get("ballast-br", {}), C.get("ballast", {})
    if br.get("cpu_us_per_req") and plain.get("cpu_us_per_req"):
        out.append(f"\nDecoding costs Ballast {br['cpu_us_per_req'] - plain['cpu_us_per_req']:,.0f}"
                   f" µs of CPU per request ({p['body_bytes'] / 1024:.0f} KiB out), and the client "
                   f"sends {p['body_bytes'] / max(1, p['br_bytes']):.1f}× fewer bytes.\n")


def newconn_section(d, out, charts):
    c = d["newconn"]
    T = c["targets"]
    b = T.get("ballast", {})
    out.append("\n## 6. A new connection per request\n")
    out.append(f"wrk with `connection: close`, {c['params']['conns']} connections, "
               f"{c['params']['duration_s']} s runs, median of {c['params']['repeats']}.\n")
    rows = [[lab(n), f(t.get("rps")), f(t.get("cpu_us_per_req"), 1), f(per_core(t)),
             f(t.get("p99_ms"), 2), f(t.get("errors")),
             "" if n in ("ballast", "direct") else ratio(per_core(b), per_core(t))]
            for n, t in T.items() if t.get("rps")]
    out.append(table(["target", "req/s", "proxy CPU µs/req", "req/s per core", "p99 ms",
                      "errors", "Ballast ÷ this (per core)"], rows))
    names = [n for n, t in T.items() if t.get("cpu_us_per_req")]
    bar(charts / "newconn-per-core.png", "New connection per request: requests per core",
        "req/s per core", names, [per_core(T[n]) for n in names])
    out.append("\n![new connections](newconn-per-core.png)\n")


def goals(d):
    """The issue's goals, met or missed, with the figures."""
    rows = []
    T = d.get("small", {}).get("targets", {})
    b = per_core(T.get("ballast", {}))
    for peer in ("pingora", "nginx", "haproxy"):
        p = per_core(T.get(peer, {}))
        if b and p:
            rows.append([f"small requests per core ≥ {lab(peer)}", f"{b:,.0f} vs {p:,.0f}",
                         ratio(b, p), "met" if b >= p else f"missed by {(1 - b / p) * 100:.0f} %"])
    for rate, x in d.get("rate", {}).get("by_rate", {}).items():
        R = x["targets"]
        dct, bl, ng = R.get("direct"), R.get("ballast"), R.get("nginx")
        if not (dct and bl and ng and bl.get("p50") and ng.get("p50")):
            continue
        for q in ("p50", "p99", "p99_9"):
            ab, an = bl[q] - dct[q], ng[q] - dct[q]
            rows.append([f"added {q.replace('_', '.')} at {rate} req/s ≤ nginx",
                         f"+{ab} µs vs +{an} µs", "",
                         "met" if ab <= an else f"missed by {ab - an} µs"])
        if rate == "2000":
            ab = bl["p99"] - dct["p99"]
            rows.append(["added p99 at 2,000 req/s < 100 µs", f"+{ab} µs", "",
                         "met" if ab < 100 else f"missed by {ab - 100} µs"])
    big = d.get("streams", {}).get("cases", {}).get("10k", {})
    S = big.get("targets", {})
    bi = S.get("ballast", {}).get("rss_idle_kib_per_stream")
    for peer in ("nginx", "haproxy"):
        pi = S.get(peer, {}).get("rss_idle_kib_per_stream")
        if bi is not None and pi is not None:
            rows.append([f"RSS per idle stream ({big['params']['streams']:,}) < {lab(peer)}",
                         f"{bi:.1f} vs {pi:.1f} KiB", ratio(bi, pi),
                         "met" if bi < pi else f"missed: {bi / pi:.1f}× theirs"])
    B = d.get("busy", {}).get("targets", {})
    bs = B.get("ballast", {}).get("success_share")
    if bs is not None:
        others = {n: t["success_share"] for n, t in B.items()
                  if n != "ballast" and "success_share" in t}
        # The goal names nginx and the LLM gateways; HAProxy is
        # shown on a row of its own.
        groups = [("nginx and every LLM router", [n for n in others if n != "haproxy"]),
                  ("HAProxy", [n for n in others if n == "haproxy"])]
        for what, names in groups:
            if not names:
                continue
            best = max(names, key=lambda n: others[n])
            rows.append([f"busy: success share above {what}",
                         f"{bs * 100:.1f} % vs {lab(best)} {others[best] * 100:.1f} %"
                         + (" (the best of them)" if len(names) > 1 else ""),
                         "", "met" if bs > others[best] else
                         f"missed by {(others[best] - bs) * 100:.1f} points"])
    return rows


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/suite.json")
    d = json.loads(src.read_text())
    charts = src.parent
    v = d["versions"]
    out = ["# Ballast benchmark report\n",
           f"Written by `bench/run` on {d['started']} from Ballast `{v['ballast']}`"
           + (" (a quick run: shorter, fewer repeats; do not quote it)" if d.get("quick") else "")
           + f"; the whole run took {d['wall_s'] / 60:.1f} min. Raw figures: "
           "[suite.json](suite.json). How it is measured: [bench/README.md](../README.md#run-the-suite).\n",
           "**Machine.** " + f"{v['cpu']}, {v['cores']} cores, {v['memory_gib']} GiB, Linux "
           f"{v['kernel']}, open-file limit {v['nofile_limit']:,}. A shared machine: every "
           "figure is the median of interleaved repeats, and only figures from the same run "
           "are compared.\n",
           "**Versions.** " + ", ".join(f"{k} {v[k]}" for k in
                                        ("nginx", "haproxy", "pingora-proxy", "sglang-router",
                                         "vllm-router", "litellm", "wrk")) + ".\n",
           "**Set-up.** Each proxy runs with one worker (Ballast `server.threads = 1`, nginx "
           "`worker_processes 1`, HAProxy `nbthread 1`, pingora-proxy one thread, the routers "
           "`TOKIO_WORKER_THREADS=1`, LiteLLM one uvicorn worker) pinned to core 0 with "
           "`taskset`; the load generators and the simulated backends (`ballast sim`, three "
           "servers) share core 1. Ballast runs as a user would front a model server: "
           "`openai = true` (body validation, model routing, stream end detection), "
           "least-loaded selection, passive ejection; no access log line per request, as nginx "
           "with `access_log off`. nginx: `least_conn`, `max_fails`, upstream keep-alive, "
           "`proxy_buffering off`. HAProxy: `balance leastconn`, `http-reuse always`, "
           "`option http-no-delay` (without it event streams are held back). The routers: "
           "`round_robin`. *direct* is the backends with no proxy.\n",
           "## Goals\n"]
    rows = goals(d)
    out.append(table(["goal", "figures", "ratio", "result"], rows) if rows else "(no figures)")
    out.append("")
    if "small" in d:
        small_section(d, out, charts)
    if "rate" in d:
        rate_section(d, out, charts)
    if "streams" in d:
        streams_section(d, out, charts)
    if "busy" in d:
        busy_section(d, out, charts)
    if "compressed" in d:
        compressed_section(d, out)
    if "newconn" in d:
        newconn_section(d, out, charts)
    (charts / "REPORT.md").write_text("\n".join(out) + "\n")
    print(f"wrote {charts / 'REPORT.md'}")


if __name__ == "__main__":
    main()
