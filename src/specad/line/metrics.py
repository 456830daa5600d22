"""What `specad serve` tells an operations team, in Prometheus' text format (docs/line.md says
what each series means). Each app has its own registry, so several apps live in one process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from specad.metrics.drift import DriftState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: from a few milliseconds (a small cube on RX) to a large cube on a slow runtime."""
ROUTES = ("/score", "/health", "/model", "/metrics", "/reload", "/feedback")
"""Request paths counted under their own name; anything else is ``other``, so that a scan of
random paths cannot grow the series without bound."""


class Metrics:
    """The series, registered in a registry of their own."""

    def __init__(self, batch_size: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "specad_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "specad_score_seconds",
            "Time from a /score request's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "specad_verdicts", "Cubes scored, by verdict", ["verdict"], registry=r
        )
        self.queue_depth = Gauge(
            "specad_queue_depth", "Cubes waiting for the scoring worker", registry=r
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, batch_size})
        self.batch = Histogram(
            "specad_batch_size", "Cubes per scoring batch", buckets=buckets, registry=r
        )
        self.reloads = Counter(
            "specad_model_reloads", "Model reloads by outcome", ["outcome"], registry=r
        )
        self.generation = Gauge(
            "specad_model_generation", "Loads of the model so far (1: the first)", registry=r
        )
        self.feedback = Counter("specad_feedback", "Cubes queued as normal feedback", registry=r)

    def watch_drift(self, state: Callable[[], DriftState | None]) -> None:
        """Gauges read from ``state`` (the serving model's drift watch, None without one) at
        each scrape: the running comparison of the line's scores against the calibration."""
        series = {
            "specad_drift_alarm_rate": (
                "Share of all cubes scored that were flagged",
                "alarm_rate",
            ),
            "specad_drift_calibrated_rate": (
                "Rate at which the threshold flags normal cubes, from the calibration",
                "calibrated_rate",
            ),
            "specad_drift_window_alarms": (
                "Cubes flagged among the recent window",
                "window_alarms",
            ),
            "specad_drift_alarm_bound": ("window_alarms at or above this is drift", "alarm_bound"),
            "specad_drift_score_statistic": (
                "KS statistic of recent normal scores against the calibration's",
                "score_statistic",
            ),
            "specad_drift_score_bound": (
                "score_statistic at or above this is drift",
                "score_bound",
            ),
            "specad_drifting": (
                "1 while the line's scores have drifted from the calibration",
                "drifting",
            ),
        }
        for name, (text, field) in series.items():
            gauge = Gauge(name, text, registry=self.registry)
            gauge.set_function(lambda field=field: _field(state(), field))


def _field(state: DriftState | None, field: str) -> float:
    """A drift state's field as a gauge value (NaN without a drift watch)."""
    return float("nan") if state is None else float(getattr(state, field))


Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class CountRequests:
    """ASGI middleware counting every answer by route and status, errors included: it sits
    outside the error handlers, and never reads the body."""

    def __init__(self, app: Callable[..., Awaitable[None]], counter: Counter) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.counter.labels(route, str(status)).inc()
