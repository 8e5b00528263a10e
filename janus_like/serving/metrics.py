"""The server's Prometheus metrics in the text exposition format.

Written here rather than with prometheus_client, which is not a dependency of this package: a few
counters, gauges and one histogram do not justify a new one."""

from __future__ import annotations

import bisect
import collections
import os
import threading
import time

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RATE_WINDOW_S = 60.0  # tokens and images per second are averaged over this past window


class ServerMetrics:
    """Counters the request handlers and generation threads update (under one lock) and `render` reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0  # admitted requests not yet answered
        self.waiting = 0  # generations started but not yet producing (queued for a batch slot)
        self.active_rows = 0  # batch rows of the generations producing now
        self.cancelled = 0  # generations stopped early because their client went away
        self.tokens = 0
        self.images = 0
        self.rejected = 0  # requests refused with 429
        self._requests: collections.Counter = collections.Counter()  # (endpoint, status) -> count
        self._latency: dict[str, list] = {}  # endpoint -> [bucket counts, count, sum]
        self._recent: collections.deque = collections.deque()  # (time, tokens, images) within the window

    def add(self, **deltas: int) -> None:
        """Add to the named gauges or counters (negative deltas for gauges)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def generated(self, tokens: int, images: int) -> None:
        with self._lock:
            self.tokens += tokens
            self.images += images
            self._recent.append((time.monotonic(), tokens, images))

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[endpoint, status] += 1
            entry = self._latency.setdefault(endpoint, [[0] * len(LATENCY_BUCKETS), 0, 0.0])
            for i in range(bisect.bisect_left(LATENCY_BUCKETS, seconds), len(LATENCY_BUCKETS)):
                entry[0][i] += 1  # cumulative buckets: every bucket whose bound is >= seconds
            entry[1] += 1
            entry[2] += seconds

    def _rates(self) -> tuple[float, float]:
        """Tokens and images per second over the past RATE_WINDOW_S."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        return (sum(r[1] for r in self._recent) / RATE_WINDOW_S, sum(r[2] for r in self._recent) / RATE_WINDOW_S)

    def render(self) -> str:
        """The text exposition format (version 0.0.4)."""
        with self._lock:
            tokens_per_s, images_per_s = self._rates()
            out = [
                *_metric(
                    "janus_like_requests_in_flight",
                    "gauge",
                    "admitted requests not yet answered",
                    [("", self.in_flight)],
                ),
                *_metric(
                    "janus_like_queue_length", "gauge", "generations waiting for a batch slot", [("", self.waiting)]
                ),
                *_metric("janus_like_active_rows", "gauge", "batch rows generating now", [("", self.active_rows)]),
                *_metric(
                    "janus_like_generated_tokens_total",
                    "counter",
                    "tokens generated (text tokens and image codes)",
                    [("", self.tokens)],
                ),
                *_metric("janus_like_generated_images_total", "counter", "images generated", [("", self.images)]),
                *_metric(
                    "janus_like_tokens_per_second",
                    "gauge",
                    f"tokens per second over the past {RATE_WINDOW_S:g} s",
                    [("", round(tokens_per_s, 3))],
                ),
                *_metric(
                    "janus_like_images_per_second",
                    "gauge",
                    f"images per second over the past {RATE_WINDOW_S:g} s",
                    [("", round(images_per_s, 3))],
                ),
                *_metric(
                    "janus_like_cancelled_generations_total",
                    "counter",
                    "generations stopped because their client disconnected",
                    [("", self.cancelled)],
                ),
                *_metric(
                    "janus_like_rejected_requests_total",
                    "counter",
                    "requests refused with 429 (queue full)",
                    [("", self.rejected)],
                ),
                *_metric(
                    "janus_like_requests_total",
                    "counter",
                    "answered requests by endpoint and status",
                    [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self._requests.items())],
                ),
                *self._histogram(),
                *_metric(
                    "process_resident_memory_bytes",
                    "gauge",
                    "resident memory of the server process",
                    [("", _resident_bytes())],
                ),
            ]
        return "\n".join(out) + "\n"

    def _histogram(self) -> list[str]:
        name = "janus_like_request_duration_seconds"
        lines = [
            f"# HELP {name} time from a request's arrival to its last byte, by endpoint",
            f"# TYPE {name} histogram",
        ]
        for endpoint, (buckets, count, total) in sorted(self._latency.items()):
            label = f'endpoint="{endpoint}"'
            lines += [
                f'{name}_bucket{{{label},le="{le:g}"}} {n}' for le, n in zip(LATENCY_BUCKETS, buckets, strict=True)
            ]
            lines += [
                f'{name}_bucket{{{label},le="+Inf"}} {count}',
                f"{name}_count{{{label}}} {count}",
                f"{name}_sum{{{label}}} {total:.6f}",
            ]
        return lines


def _metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> list[str]:
    return [
        f"# HELP {name} {help_}",
        f"# TYPE {name} {kind}",
        *(f"{name}{labels} {value}" for labels, value in samples),
    ]


def _resident_bytes() -> int:
    """The process's resident set size (Linux /proc; 0 where it is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
