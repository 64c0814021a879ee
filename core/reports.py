"""The usage report: the design sketch's dashboard as figures, a text and a chart.

    report = await build_report(store, since)
    print(render_text(report)); png = render_png(report)

matplotlib is imported inside `render_png` only: `metarouter route` must not pay for it.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.store import ModelEventRecord, RequestRecord, Store
from core.types import QUERY_TYPES

GENERATED = ("ok", "incomplete")


@dataclass(frozen=True)
class ModelUsage:
    model: str
    answers: int
    positive: int
    negative: int
    completion_tokens: int

    @property
    def satisfaction(self) -> float | None:
        rated = self.positive + self.negative
        return self.positive / rated if rated else None


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    requests: int
    answers: int
    by_model: list[ModelUsage]  # most answers first
    by_query_type: dict[str, int]
    by_source: dict[str, int]  # openai | local | cache
    fallbacks: dict[str, int]  # reason -> requests
    positive: int
    negative: int
    decision_p50_ms: float | None
    decision_p95_ms: float | None
    router_cost_usd: float  # every meta-router call, failed ones too
    prompt_tokens: int
    completion_tokens: int
    pulls: int
    prepulls: int
    evictions: int
    prepull_hits: int  # requests answered by a model that was pre-pulled before it was asked for
    events: list[ModelEventRecord] = field(default_factory=list)
    daily: list[tuple[str, int]] = field(default_factory=list)  # (YYYY-MM-DD, requests)

    @property
    def satisfaction(self) -> float | None:
        rated = self.positive + self.negative
        return self.positive / rated if rated else None

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallbacks.values()) / self.requests if self.requests else 0.0

    @property
    def cost_per_query_usd(self) -> float:
        return self.router_cost_usd / self.requests if self.requests else 0.0


def parse_since(value: str) -> timedelta:
    """ "7d", "12h", "30m", "2w" -> a timedelta; raises ValueError otherwise."""
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    v = value.strip().lower()
    if len(v) < 2 or v[-1] not in units:
        raise ValueError(f"{value!r}: use a number and a unit, e.g. 7d, 12h, 30m, 2w")
    try:
        n = float(v[:-1])
    except ValueError:
        raise ValueError(f"{value!r}: use a number and a unit, e.g. 7d, 12h, 30m, 2w") from None
    if n <= 0:
        raise ValueError(f"{value!r}: the period must be positive")
    return timedelta(seconds=n * units[v[-1]])


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a reported time is one a request really took)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def _prepull_hits(records: list[RequestRecord], events: list[ModelEventRecord]) -> int:
    """Answers by a model whose presence came from a pre-pull: pre-pulled before the request and not
    removed in between."""
    history: dict[str, list[ModelEventRecord]] = {}
    for e in events:
        if e.kind in ("prepull", "remove", "evict"):
            history.setdefault(e.model, []).append(e)
    hits = 0
    for r in records:
        if r.model is None or r.status not in GENERATED:
            continue
        state = None
        for e in history.get(r.model, ()):
            if e.created_at > r.created_at:
                break
            state = e.kind
        hits += state == "prepull"
    return hits


async def build_report(store: Store, since: datetime, until: datetime | None = None) -> Report:
    until = until or datetime.now(UTC)
    records = [r for r in await store.request_records(since) if r.created_at <= until]
    # pre-pulls from before the period still explain hits within it
    events = [e for e in await store.model_events(since - timedelta(days=30)) if e.created_at <= until]
    spent = await store.router_spend_since(since)

    answered = [r for r in records if r.model is not None and r.status in GENERATED]
    models: dict[str, list[RequestRecord]] = {}
    for r in answered:
        models.setdefault(r.model or "", []).append(r)
    by_model = sorted(
        (
            ModelUsage(
                model=m,
                answers=len(rs),
                positive=sum(r.positive for r in rs),
                negative=sum(r.negative for r in rs),
                completion_tokens=sum(r.completion_tokens for r in rs),
            )
            for m, rs in models.items()
        ),
        key=lambda u: (-u.answers, u.model),
    )
    types = Counter(r.query_type for r in records)
    in_period = [e for e in events if e.created_at >= since]
    days = Counter(r.created_at.astimezone(UTC).strftime("%Y-%m-%d") for r in records)
    return Report(
        since=since,
        until=until,
        requests=len(records),
        answers=len(answered),
        by_model=by_model,
        by_query_type={t: types[t] for t in QUERY_TYPES if types[t]},
        by_source=dict(Counter(r.source for r in records).most_common()),
        fallbacks=dict(Counter(r.fallback_reason for r in records if r.fallback_reason).most_common()),
        positive=sum(r.positive for r in records),
        negative=sum(r.negative for r in records),
        decision_p50_ms=_percentile([r.decision_ms for r in records], 50),
        decision_p95_ms=_percentile([r.decision_ms for r in records], 95),
        router_cost_usd=spent,
        prompt_tokens=sum(r.prompt_tokens for r in records),
        completion_tokens=sum(r.completion_tokens for r in records),
        pulls=sum(e.kind == "pull" for e in in_period),
        prepulls=sum(e.kind == "prepull" for e in in_period),
        evictions=sum(e.kind == "evict" for e in in_period),
        prepull_hits=_prepull_hits(records, events),
        events=[e for e in in_period if e.kind in ("pull", "pull_failed", "prepull", "evict", "remove")],
        daily=sorted(days.items()),
    )


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "–"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f} ms"


def render_text(report: Report) -> str:
    r = report
    n = r.requests
    span = f"{r.since:%Y-%m-%d %H:%M} – {r.until:%Y-%m-%d %H:%M} UTC"
    lines = [f"MetaRouter usage report, {span}", ""]
    if not n:
        lines.append("No requests in this period.")
    sat = "–" if r.satisfaction is None else f"{r.satisfaction:.0%} of {r.positive + r.negative} ratings"
    lines += [
        f"Requests: {n}  (answered: {r.answers})",
        f"Satisfaction: {sat}",
        "Decided by: " + (", ".join(f"{s} {c} ({_pct(c, n)})" for s, c in r.by_source.items()) or "–"),
        f"Fallback rate: {_pct(sum(r.fallbacks.values()), n)}"
        + (" — " + ", ".join(f"{k} {v}" for k, v in r.fallbacks.items()) if r.fallbacks else ""),
        f"Decision time: p50 {_ms(r.decision_p50_ms)}, p95 {_ms(r.decision_p95_ms)}",
        f"Router cost: ${r.router_cost_usd:.4f} total, ${r.cost_per_query_usd:.6f} per query",
        f"Generation tokens: {r.prompt_tokens} prompt, {r.completion_tokens} completion",
        f"Pulls: {r.pulls} (pre-pulls {r.prepulls}), evictions: {r.evictions}, "
        f"pre-pull hits: {r.prepull_hits} requests",
    ]
    if r.by_query_type:
        lines += ["", "By query type:"]
        lines += [f"  {t:10} {c:6}  {_pct(c, n):>4}" for t, c in r.by_query_type.items()]
    if r.by_model:
        lines += ["", "By model:", f"  {'MODEL':28} {'ANSWERS':>7}  {'SATISFACTION':>12}  {'TOKENS':>8}"]
        for u in r.by_model:
            s = "–" if u.satisfaction is None else f"{u.satisfaction:.0%} of {u.positive + u.negative}"
            lines.append(f"  {u.model:28} {u.answers:>7}  {s:>12}  {u.completion_tokens:>8}")
    if r.events:
        lines += ["", "Model events:"]
        lines += [
            f"  {e.created_at:%Y-%m-%d %H:%M} {e.kind:11} {e.model} on {e.host}" for e in r.events[-20:]
        ]
    return "\n".join(lines) + "\n"


def render_png(report: Report) -> bytes:
    """The report as one chart image: the key figures, then requests per day, per model, decision
    sources and query types."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a server
    from matplotlib.figure import Figure

    r = report
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    sat = "–" if r.satisfaction is None else f"{r.satisfaction:.0%} of {r.positive + r.negative} ratings"
    fig.suptitle(
        f"MetaRouter — {r.since:%Y-%m-%d} to {r.until:%Y-%m-%d} — {r.requests} requests\n"
        f"satisfaction {sat} · fallback {r.fallback_rate:.0%} · decision p50 {_ms(r.decision_p50_ms)},"
        f" p95 {_ms(r.decision_p95_ms)} · router ${r.router_cost_usd:.3f}\n"
        f"pulls {r.pulls} (pre-pulls {r.prepulls}) · evictions {r.evictions} · "
        f"pre-pull hits {r.prepull_hits} requests",
        fontsize=11,
    )
    (a, b), (c, d) = fig.subplots(2, 2)

    a.set_title("Requests per day (UTC)")
    days = _days(r)
    if days:
        a.bar([f"{day:%a}\n{day:%m-%d}" for day, _ in days], [v for _, v in days], color="#4c72b0")
        a.tick_params(axis="x", labelsize=8)
    a.set_ylabel("requests")

    b.set_title("Answers per model (label: satisfaction)")
    top = r.by_model[:8]
    if top:
        names = [u.model for u in top][::-1]
        b.barh(names, [u.answers for u in top][::-1], color="#55a868")
        for i, u in enumerate(top[::-1]):
            if u.satisfaction is not None:
                b.text(u.answers, i, f" {u.satisfaction:.0%}", va="center", fontsize=8)
        b.tick_params(axis="y", labelsize=8)
        b.set_xlim(0, max(u.answers for u in top) * 1.12)  # room for the labels
    b.set_xlabel("answers")

    c.set_title("Decided by")
    if r.by_source:
        c.pie(
            list(r.by_source.values()),
            labels=[f"{s} ({n})" for s, n in r.by_source.items()],
            autopct="%1.0f%%",
            textprops={"fontsize": 9},
            startangle=90,
        )

    d.set_title("Requests per query type")
    if r.by_query_type:
        d.bar(list(r.by_query_type), list(r.by_query_type.values()), color="#c44e52")
    d.set_ylabel("requests")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _days(r: Report) -> list[tuple[datetime, int]]:
    """Requests on every day of the period, quiet ones (weekends) included."""
    counts = dict(r.daily)
    day = r.since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out: list[tuple[datetime, int]] = []
    while day <= r.until and counts:
        out.append((day, counts.get(f"{day:%Y-%m-%d}", 0)))
        day += timedelta(days=1)
    return out


async def report_for(store: Store, period: timedelta) -> tuple[str, bytes]:
    """The last `period`'s report as (text, chart PNG), the chart drawn off the event loop."""
    import asyncio

    report = await build_report(store, datetime.now(UTC) - period)
    return render_text(report), await asyncio.to_thread(render_png, report)
