"""Helpers shared by the Python load clients in bench/ (argument parsing
and latency statistics)."""

import argparse
import re


def parse_duration(s):
    """'10ms', '2s', '1.5m', '500us' (bare number: seconds) -> seconds."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(us|ms|s|m)?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration: {s!r}")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def parse_target(s):
    """'HOST:PORT' -> (host, port)."""
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"bad target (want HOST:PORT): {s!r}")
    return host, int(port)


def pct(values, p):
    """Nearest-rank percentile of a list (sorted in place); None if empty."""
    if not values:
        return None
    values.sort()
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def dist_ms(values):
    """Distribution of durations given in seconds, reported in milliseconds."""
    if not values:
        return None
    v = sorted(x * 1e3 for x in values)
    return {"n": len(v), "min": v[0], "p50": pct(v, 50), "p90": pct(v, 90),
            "p99": pct(v, 99), "max": v[-1], "mean": sum(v) / len(v)}
