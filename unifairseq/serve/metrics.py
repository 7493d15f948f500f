"""The server's metrics in Prometheus' text exposition format (version 0.0.4): counters, gauges and
histograms with labels, safe to update from any thread. Written here rather than taken from
prometheus_client: the server needs a dozen series, and one dependency fewer is one pin fewer."""
from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Dict, Sequence, Tuple

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
INF_LE = 'le="+Inf"'


def _labels(names: Sequence[str], values: Tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._values: Dict[tuple, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when scraped (the queue depth, the deltas served)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]):
        super().__init__(name, help_text)
        self.read = read

    def render(self) -> list:
        return self.header() + [f"{self.name} {_num(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(buckets)
        self._series: Dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            s = self._series.setdefault(labels, [0] * len(self.buckets) + [0.0, 0])
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, *labels: str) -> int:
        return self._series.get(labels, [0])[-1]

    def render(self) -> list:
        out = self.header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for k, s in items:
            cum = 0
            for b, c in zip(self.buckets, s):
                cum += c
                le = 'le="%s"' % _num(b)
                out.append(f"{self.name}_bucket{_labels(self.label_names, k, le)} {cum}")
            out.append(f"{self.name}_bucket{_labels(self.label_names, k, INF_LE)} {s[-1]}")
            out.append(f"{self.name}_sum{_labels(self.label_names, k)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, k)} {s[-1]}")
        return out


class Metrics:
    """Every series the server exports; `render()` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0, deltas: Callable[[], float] = lambda: 0):
        p = "unifairseq_serve_"
        self.requests = Counter(p + "requests_total", "Requests answered, by endpoint, delta and HTTP status",
                                ("endpoint", "delta", "status"))
        self.rejected = Counter(p + "rejected_total", "Requests refused before queueing (queue full, draining)",
                                ("reason",))
        self.dropped = Counter(p + "dropped_total", "Queued requests not computed (client gone, timed out)",
                               ("reason",))
        self.batches = Counter(p + "batches_total", "Batches computed, by kind", ("kind",))
        self.batch_size = Histogram(p + "batch_size", "Requests per computed batch", SIZE_BUCKETS)
        self.batch_deltas = Histogram(p + "batch_deltas", "Distinct deltas per computed batch", SIZE_BUCKETS)
        self.latency = Histogram(p + "request_seconds", "Time from accepted to answered", LATENCY_BUCKETS,
                                 ("endpoint",))
        self.queue_wait = Histogram(p + "queue_wait_seconds", "Time a request waited in the queue", LATENCY_BUCKETS)
        self.compute = Histogram(p + "batch_seconds", "Compute time of one batch", LATENCY_BUCKETS, ("kind",))
        self.queue = Gauge(p + "queue_depth", "Requests waiting in the queue", queue_depth)
        self.served = Gauge(p + "deltas", "Deltas served", deltas)
        self._all = [self.requests, self.rejected, self.dropped, self.batches, self.batch_size, self.batch_deltas,
                     self.latency, self.queue_wait, self.compute, self.queue, self.served]

    def render(self) -> str:
        return "\n".join(line for m in self._all for line in m.render()) + "\n"
