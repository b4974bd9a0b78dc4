"""Prometheus metrics of one server (their own registry, so several servers can share a process)."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Seconds: a unary Act takes ~0.1-0.5 ms end to end, an Adapt milliseconds to seconds.
LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class SerialHistogram(Collector):
    """A histogram for observations made one at a time (no lock: ~0.3 µs instead of ~1.5 µs),
    exported like ``prometheus_client.Histogram``. The batcher observes every forward pass."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts = list(self.counts)
        cumulative, running = [], 0
        for bound, count in zip([*self.bounds, math.inf], counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, sum_value=self.sum)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "metarl_grpc_requests",
            "gRPC calls handled, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "metarl_grpc_request_duration_seconds",
            "Time to handle a gRPC call (a stream: its whole life), by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_steps = Counter(
            "metarl_stream_steps", "Actions served on StreamAct streams", registry=r
        )
        self.sessions = Gauge("metarl_sessions", "Live sessions", registry=r)
        self.sessions_created = Counter("metarl_sessions_created", "Sessions created", registry=r)
        self.sessions_removed = Counter(
            "metarl_sessions_removed",
            "Sessions ended, by reason (deleted, expired)",
            ["reason"],
            registry=r,
        )
        self.adaptations = Counter(
            "metarl_adaptations",
            "Adapt calls by outcome (ok, invalid, diverged, busy, rejected, error, timeout; "
            "cancelled: computed but the caller was gone; skipped: not computed, the caller "
            "was gone or its deadline passed before its turn)",
            ["outcome"],
            registry=r,
        )
        self.adapt_seconds = Histogram(
            "metarl_adaptation_seconds",
            "Inner-loop compute time of successful adaptations (in the worker)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.adapt_pending = Gauge(
            "metarl_adaptations_pending", "Adaptations queued or running", registry=r
        )
        self.batch_calls = SerialHistogram(
            "metarl_act_batch_calls", "Act calls computed by one forward pass", BATCH_BUCKETS
        )
        self.batch_param_sets = SerialHistogram(
            "metarl_act_batch_parameter_sets",
            "Distinct parameter sets (adapted sessions, or a version's θ) stacked in one pass",
            BATCH_BUCKETS,
        )
        r.register(self.batch_calls)
        r.register(self.batch_param_sets)
        self.policy_versions = Gauge(
            "metarl_policy_versions_loaded", "Policy versions loaded", registry=r
        )
        self.checkpoints = Counter(
            "metarl_checkpoints",
            "Checkpoints handled by the model registry, by result (loaded, refused, unloaded)",
            ["result"],
            registry=r,
        )
        self._children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._http: Any = None

    def request_counter(self, method: str, code: str) -> Any:
        """The labelled child of ``requests`` (cached: ``labels()`` costs a lock and a lookup)."""
        key = (method, code)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children[key] = self.requests.labels(method, code)
        return child

    def observe_batch(self, calls: int, param_sets: int) -> None:
        """Called by the batcher's leader only (one at a time), on every forward pass."""
        self.batch_calls.observe(calls)
        self.batch_param_sets.observe(param_sets)

    def gauge_from(self, gauge: Gauge, fn: Callable[[], float]) -> None:
        gauge.set_function(fn)

    def serve_http(self, port: int, addr: str = "0.0.0.0") -> int:
        """Exposes ``/metrics`` on ``addr`` (the server passes its ``--host``), ``port`` (0
        picks a free one); returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
