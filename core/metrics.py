"""/metrics in Prometheus text format, from a registry the app owns (not prometheus_client's global).

Request, decision, fallback, feedback, pull and latency figures are read from the database at
scrape time rather than counted in memory: they are then the fleet's totals, they survive restarts,
and the code that answers questions needs no instrumentation. Every replica reports the same totals,
so aggregate them with max(), not sum(). Scheduler runs and misfires are per process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from core.scheduling import JobCounters
from core.store import BufferedStore, Store, UsageTotals

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DECISION_BOUNDS_MS = [1, 5, 25, 100, 250, 500, 1000, 2500, 5000, 10000]
GENERATION_BOUNDS_MS = [250, 1000, 2500, 5000, 10000, 30000, 60000, 120000]


class Metrics:
    def __init__(self, store: Store | None, jobs: JobCounters | None = None) -> None:
        self.store = store
        self.jobs = jobs or JobCounters()
        self.registry = CollectorRegistry(auto_describe=False)
        self._totals: UsageTotals | None = None
        self._db_up = store is not None
        self.registry.register(_Collector(self))

    async def render(self) -> bytes:
        """Read the database's totals, then the exposition text."""
        if self.store is not None:
            try:
                self._totals = await self.store.usage_totals(DECISION_BOUNDS_MS + GENERATION_BOUNDS_MS)
                self._db_up = True
            except Exception:
                log.warning("metrics: database unavailable", exc_info=True)
                self._totals, self._db_up = None, False
        return generate_latest(self.registry)


def _histogram(name: str, doc: str, bounds: list[float], data: tuple[list[int], int, float]) -> Metric:
    cumulative, count, total = data
    buckets = [(str(b / 1000), c) for b, c in zip(bounds, cumulative, strict=True)]
    buckets.append(("+Inf", count))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total / 1000)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield GaugeMetricFamily("metarouter_database_up", "1 when the database answered", value=int(m._db_up))
        if isinstance(m.store, BufferedStore):
            b = m.store.buffer_state()
            yield GaugeMetricFamily(
                "metarouter_database_buffered",
                "Writes waiting for the database (this process)",
                value=b.pending,
            )
            yield CounterMetricFamily(
                "metarouter_database_buffer_dropped",
                "Writes lost because the buffer was full (this process)",
                value=b.dropped,
            )
        runs = CounterMetricFamily(
            "metarouter_job_runs", "Scheduled job runs in this process", labels=["job", "status"]
        )
        for (job, status), n in sorted(m.jobs.runs.items()):
            runs.add_metric([job, status], n)
        yield runs
        missed = CounterMetricFamily("metarouter_job_misfires", "Scheduled firings missed", labels=["job"])
        for job, n in sorted(m.jobs.misfires.items()):
            missed.add_metric([job], n)
        yield missed
        t = m._totals
        if t is None:
            return
        requests = CounterMetricFamily(
            "metarouter_requests", "Routed requests by decision source", labels=["source"]
        )
        for source, n in sorted(t.requests.items()):
            requests.add_metric([source], n)
        yield requests
        fallbacks = CounterMetricFamily(
            "metarouter_fallbacks", "Requests the meta-router did not decide", labels=["reason"]
        )
        for reason, n in sorted(t.fallbacks.items()):
            fallbacks.add_metric([reason], n)
        yield fallbacks
        feedback = CounterMetricFamily("metarouter_feedback", "Ratings given", labels=["rating"])
        for rating, n in sorted(t.feedback.items()):
            feedback.add_metric(["positive" if rating > 0 else "negative"], n)
        yield feedback
        events = CounterMetricFamily(
            "metarouter_model_events", "Pulls, pre-pulls, removals, loads", labels=["kind"]
        )
        for kind, n in sorted(t.model_events.items()):
            events.add_metric([kind], n)
        yield events
        answers = CounterMetricFamily("metarouter_answers", "Answers by final status", labels=["status"])
        for status, n in sorted(t.answers.items()):
            if status != "streaming":
                answers.add_metric([status], n)
        yield answers
        yield GaugeMetricFamily(
            "metarouter_answers_in_flight",
            "Answers streaming now (across replicas): the generation queue's depth",
            value=t.answers.get("streaming", 0),
        )
        yield CounterMetricFamily(
            "metarouter_completion_tokens", "Tokens generated", value=t.completion_tokens
        )
        n_dec = len(DECISION_BOUNDS_MS)
        dec_cum = t.decision_ms[0][:n_dec]
        gen_cum = t.generation_ms[0][n_dec:]
        yield _histogram(
            "metarouter_decision_seconds",
            "Routing decision time",
            DECISION_BOUNDS_MS,
            (dec_cum, t.decision_ms[1], t.decision_ms[2]),
        )
        yield _histogram(
            "metarouter_generation_seconds",
            "Answer generation time",
            GENERATION_BOUNDS_MS,
            (gen_cum, t.generation_ms[1], t.generation_ms[2]),
        )
