"""Prometheus metrics, on a registry of the app's own (never the process-wide default one), so several
apps in one process (tests, workers) never clash.

Event counts (requests, inference times) are recorded as they happen; everything the app state
already knows (fallbacks, queues, models) is read from it at scrape time, so there is one source of truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.backends.base import (
    BACKEND_UNAVAILABLE,
    DISABLED_BY_REQUEST,
    LIBRARY_MISSING,
    MODEL_ERROR,
    OUT_OF_MEMORY,
    WEIGHTS_MISSING,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from app.state import AppState

OTHER_ROUTE = "other"  # the route label of requests no route matched (404s): never the raw URL
FALLBACK_REASONS = (
    WEIGHTS_MISSING,
    LIBRARY_MISSING,
    OUT_OF_MEMORY,
    DISABLED_BY_REQUEST,
    MODEL_ERROR,
    BACKEND_UNAVAILABLE,
)
# Seconds; an upscale runs from tens of milliseconds (small image, GPU) to minutes (large image, CPU).
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
INFERENCE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The app's metrics: request and inference events as they happen, and (after `watch`) what the
    app state knows, read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "upscaler_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "upscaler_request_duration_seconds",
            "Time from request to the end of the response, by route template",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "upscaler_inference_seconds",
            "Model run time of one upscale (every pass and tile), without queue wait",
            ["model", "backend"],
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self._state_collector: StateCollector | None = None

    def watch(self, state: AppState) -> None:
        """Expose `state` (readiness, queues, models, fallbacks, budget) at every scrape, instead of
        the state watched before (a restarted lifespan builds a new one)."""
        if self._state_collector is not None:
            self.registry.unregister(self._state_collector)
        self._state_collector = StateCollector(state)
        self.registry.register(self._state_collector)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_inference(self, model: str, backend: str, seconds: float) -> None:
        """Thread-safe: called on the device threads."""
        self.inference_seconds.labels(model, backend).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Reads the app state at scrape time."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []  # unknown until collected: the registry must not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        state = self.state
        ready = GaugeMetricFamily("upscaler_ready", "1 once start-up loading is done")
        draining = GaugeMetricFamily("upscaler_draining", "1 while shutting down (new work is refused)")
        ready.add_metric([], 1.0 if state.ready else 0.0)
        draining.add_metric([], 1.0 if state.draining else 0.0)
        yield ready
        yield draining
        service = state.service
        fallbacks = CounterMetricFamily(
            "upscaler_fallbacks",
            "Requests answered with LANCZOS instead of a model, by reason",
            labels=["reason"],
        )
        counts = dict(service.fallbacks)
        for reason in sorted(set(FALLBACK_REASONS) | set(counts)):
            fallbacks.add_metric([reason], float(counts.get(reason, 0)))
        yield fallbacks

        depth = GaugeMetricFamily(
            "upscaler_queue_depth", "Requests waiting for the device", labels=["device"]
        )
        in_flight = GaugeMetricFamily(
            "upscaler_queue_in_flight", "Requests waiting or running on the device", labels=["device"]
        )
        capacity = GaugeMetricFamily(
            "upscaler_queue_capacity", "Requests that may wait before 503 overloaded", labels=["device"]
        )
        cancelled = GaugeMetricFamily(
            "upscaler_queue_cancelled",
            "Requests in flight whose client left or timed out (dropped before the model)",
            labels=["device"],
        )
        for queue in list(service.queues.values()):
            depth.add_metric([queue.device], float(max(0, queue.waiting)))
            in_flight.add_metric([queue.device], float(queue.in_flight))
            capacity.add_metric([queue.device], float(queue.queue_size))
            cancelled.add_metric([queue.device], float(queue.cancelled))
        yield from (depth, in_flight, capacity, cancelled)

        available = GaugeMetricFamily(
            "upscaler_model_available", "1 when the model can serve, 0 when not", labels=["model", "backend"]
        )
        # One series per (model, backend): a name with several files (duplicates) is one model.
        series: dict[tuple[str, str], float] = {}
        for entry in list(state.registry.models):
            key = (entry.name, entry.backend)
            series[key] = max(series.get(key, 0.0), 1.0 if entry.available else 0.0)
        for (model, backend), value in sorted(series.items()):
            available.add_metric([model, backend], value)
        yield available

        budget = GaugeMetricFamily(
            "upscaler_memory_budget_bytes",
            "Estimated memory a request may need before it is refused (413 image_too_large)",
        )
        budget.add_metric([], float(service.budget.total))
        yield budget
