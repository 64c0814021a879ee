"""Predictive pre-pull: which models will be wanted in the next hours, and getting them local first.

The forecast, per model and clock hour of the window, blends two seasonal views: the same hour of
the week in past weeks (recency-weighted), and the same hour on the last few days of the same kind
(working day or weekend), so that the first week has a forecast and this week's changes count
before a week has passed. On top of that comes the surplus of the last RECENT_H hours: what a model
was asked for beyond what was forecast for those hours goes on at that rate, so a model the team
took up this morning is expected within hours. The history is the model routing chose for each
request, which is the demand even when another model had to answer.

`plan()` is pure (forecast + inventory -> what to pull and evict): the set of models expected to
serve the most requests within the disk budget. `PrePuller` carries it out through the Generator,
which records each pull and removal, and marks them here as `prepull` / `evict` events so reports
can tell them apart and count the requests they served.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import ollama

from core.config import Settings
from core.errors import GenerationError
from core.generation import Generator
from core.inventory import InventoryService
from core.store import Store
from core.types import Inventory

log = logging.getLogger(__name__)

HOURS_PER_WEEK = 168
LOOKBACK = timedelta(weeks=8)
# share of the forecast from the same hour on the last DAILY_DAYS days of the same kind (working days
# or weekend), against the same hour of the week in past weeks
DAILY_WEIGHT = 0.5
DAILY_DAYS = 5
# hours of recent answers compared with their forecast: a model asked for more than expected is
# expected to go on being asked for at that surplus rate
RECENT_H = 2


def hour_of_week(t: datetime) -> int:
    t = t.astimezone(UTC)
    return t.weekday() * 24 + t.hour


@dataclass(frozen=True)
class Expected:
    model: str
    requests: float  # expected answers in the window


def _hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def forecast(
    history: list[tuple[str, datetime]],
    now: datetime,
    window_h: float,
    *,
    halflife_days: float = 14.0,
) -> list[Expected]:
    """Expected answers per model in [now, now + window_h), most expected first: the seasonal
    forecast, plus what the last RECENT_H hours saw of a model beyond what it forecast for them (a
    model that just became popular is expected within hours, not after weeks of history)."""
    if not history:
        return []
    counts: dict[datetime, dict[str, int]] = {}
    for model, t in history:
        bucket = counts.setdefault(_hour(t), {})
        bucket[model] = bucket.get(model, 0) + 1
    start = min(counts)
    halflife_h = halflife_days * 24.0

    def seasonal(begin: datetime, end: datetime) -> dict[str, float]:
        out: dict[str, float] = {}
        for slot, share in hour_slots(begin, end):
            for model, v in _seasonal(counts, slot, start, now, halflife_h).items():
                out[model] = out.get(model, 0.0) + v * share
        return out

    expected = seasonal(now, now + timedelta(hours=window_h))
    recent_start = now - timedelta(hours=RECENT_H)
    seen: dict[str, float] = {}
    for model, t in history:
        if recent_start <= t < now:
            seen[model] = seen.get(model, 0.0) + 1
    if seen:
        foreseen = seasonal(max(recent_start, start), now)
        for model, n in seen.items():
            surplus = n - foreseen.get(model, 0.0)
            if surplus > 0:
                expected[model] = expected.get(model, 0.0) + surplus * window_h / RECENT_H
    out = [Expected(m, v) for m, v in expected.items() if v > 0]
    return sorted(out, key=lambda e: (-e.requests, e.model))


def hour_slots(begin: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """Each clock hour [begin, end) touches, with the share of it covered."""
    slots: list[tuple[datetime, float]] = []
    h = _hour(begin)
    while h < end:
        overlap = (min(end, h + timedelta(hours=1)) - max(begin, h)).total_seconds() / 3600
        slots.append((h, overlap))
        h += timedelta(hours=1)
    return slots


def _seasonal(
    counts: dict[datetime, dict[str, int]],
    slot: datetime,
    start: datetime,
    now: datetime,
    halflife_h: float,
) -> dict[str, float]:
    """Expected answers per model in one clock hour, from the history before it."""
    weeks = LOOKBACK // timedelta(weeks=1)
    # the same hour of the week in each past week the history covers, nearer weeks weighing more
    past = [slot - timedelta(weeks=k) for k in range(1, weeks + 1)]
    weekly = _mean(
        counts, [(p, 0.5 ** ((now - p).total_seconds() / 3600 / halflife_h)) for p in past if p >= start]
    )
    # the same hour on the last few days of the same kind (working day or weekend): what changed
    # this week (a model that just became popular), and all there is before a week of history
    weekend = slot.weekday() >= 5
    days = [slot - timedelta(days=k) for k in range(1, 15)]
    alike = [d for d in days if d >= start and (d.weekday() >= 5) == weekend][:DAILY_DAYS]
    daily = _mean(counts, [(d, 1.0) for d in alike])
    a = DAILY_WEIGHT if weekly is not None else 1.0
    return {
        model: (1 - a) * (weekly or {}).get(model, 0.0) + a * (daily or {}).get(model, 0.0)
        for model in (weekly or {}).keys() | (daily or {}).keys()
    }


def _mean(
    counts: dict[datetime, dict[str, int]], hours: list[tuple[datetime, float]]
) -> dict[str, float] | None:
    """Weighted mean answers per model over the given clock hours; None without any hour."""
    exposure = sum(w for _, w in hours)
    if not exposure:
        return None
    out: dict[str, float] = {}
    for h, w in hours:
        for model, n in counts.get(h, {}).items():
            out[model] = out.get(model, 0.0) + n * w / exposure
    return out


@dataclass(frozen=True)
class Plan:
    pull: list[Expected]
    evict: list[str]
    skipped: list[tuple[str, str]]  # (model, why)


def plan(
    expected: list[Expected],
    inv: Inventory,
    *,
    budget_gb: float,
    min_expected: float,
    evict: bool,
) -> Plan:
    """The models to have local: of the local ones and those expected at least `min_expected`
    times, the set expected to serve the most requests within the disk budget. Pull what it lacks,
    most expected first; evict what it leaves out only when `evict` is on, never a loaded model, and
    only to make room for a pull."""
    up = [h for h in inv.hosts if h not in inv.hosts_down]
    if not up:
        return Plan([], [], [(e.model, "no Ollama host is up") for e in expected])
    want = {e.model: e.requests for e in expected}
    # the Generator pulls onto the host with the most room: plan against that host
    host = min(up, key=lambda h: sum(m.size_gb or 0.0 for m in inv.models if h in m.hosts))
    local = {m.name: m.size_gb or 0.0 for m in inv.models if host in m.hosts}
    loaded = {m.name for m in inv.models if m.loaded_on}
    # what stays whatever the forecast: all of it without eviction; a model answering right now; one
    # of unknown size, whose eviction frees nothing the plan can count on
    kept = {n for n in local if not evict or n in loaded or not local[n]}
    candidates: dict[str, float] = {}
    skipped: list[tuple[str, str]] = []
    for e in expected:
        info = inv.get(e.model)
        if e.requests < min_expected or info is None or info.local:
            continue
        if info.size_gb is None:
            skipped.append((e.model, "size unknown"))
            continue
        candidates[e.model] = info.size_gb
    room = budget_gb - sum(local[n] for n in kept)
    optional = {n: local[n] for n in local if n not in kept} | candidates
    # keeping a model wins a tie with pulling one: a pull costs bandwidth and time
    chosen = _most_expected_within(
        optional, {n: want.get(n, 0.0) + (n in local) * 1e-6 for n in optional}, room
    )
    pulls = [e for e in expected if e.model in candidates and e.model in chosen]
    evictions = sorted(
        (n for n in optional if n in local and n not in chosen), key=lambda n: want.get(n, 0.0)
    )
    if not pulls:
        evictions = []
    for e in expected:
        if e.model in candidates and e.model not in chosen:
            size = candidates[e.model]
            skipped.append((e.model, f"{size:.1f} GB does not fit the disk budget of {budget_gb:g} GB"))
    return Plan(pulls, evictions, skipped)


def _most_expected_within(sizes: dict[str, float], value: dict[str, float], room_gb: float) -> set[str]:
    """The subset of `sizes` of greatest total value within `room_gb` (0/1 knapsack in tenths of
    a GB, sizes rounded up so that the chosen set really fits)."""
    cap = int(room_gb * 10 + 1e-9)
    if cap < 0:
        return set()
    names = list(sizes)
    weights = [math.ceil(sizes[n] * 10 - 1e-9) for n in names]
    best = [0.0] * (cap + 1)
    took: list[list[bool]] = []
    for n, w in zip(names, weights, strict=True):
        row = [False] * (cap + 1)
        for c in range(cap, w - 1, -1):
            if best[c - w] + value[n] > best[c]:
                best[c] = best[c - w] + value[n]
                row[c] = True
        took.append(row)
    chosen: set[str] = set()
    c = cap
    for i in range(len(names) - 1, -1, -1):
        if took[i][c]:
            chosen.add(names[i])
            c -= weights[i]
    return chosen


async def expected_demand(store: Store, settings: Settings, now: datetime | None = None) -> list[Expected]:
    """The forecast for the next `prepull_window_h` hours from the stored usage history."""
    now = now or datetime.now(UTC)
    history = await store.demand_times(now - LOOKBACK)
    return forecast(history, now, settings.prepull_window_h, halflife_days=settings.forecast_halflife_days)


class PrePuller:
    def __init__(self, settings: Settings, store: Store, inventory: InventoryService, generator: Generator):
        self.settings = settings
        self.store = store
        self.inventory = inventory
        self.generator = generator
        self._forecast: tuple[float, list[Expected]] | None = None

    async def expected(self, now: datetime | None = None) -> list[Expected]:
        return await expected_demand(self.store, self.settings, now)

    async def run(self, now: datetime | None = None) -> Plan:
        """Forecast, then pull (and evict, if configured) on the Ollama hosts. Never raises for a
        failed pull: the next firing tries again."""
        s = self.settings
        expected = await self.expected(now)
        inv = await self.inventory.snapshot(refresh=True)
        p = plan(
            expected,
            inv,
            budget_gb=s.disk_budget_gb,
            min_expected=s.prepull_min_expected,
            evict=s.evict_enabled,
        )
        for model, why in p.skipped:
            log.info("pre-pull: not pulling %s: %s", model, why)
        for name in p.evict:
            try:
                hosts = await self.generator.remove(name)
            except GenerationError as exc:
                log.warning("pre-pull: could not evict %s: %s", name, exc)
                continue
            for h in hosts:
                await self._mark(name, h, "evict", {"expected": round(_expected_of(expected, name), 3)})
        for e in p.pull:
            try:
                async for _ in self.generator.pull(e.model):
                    pass
            except GenerationError as exc:
                log.warning("pre-pull: could not pull %s: %s", e.model, exc)
                continue
            info = (await self.inventory.snapshot(refresh=True)).get(e.model)
            for h in info.hosts if info else ():
                detail = {"expected": round(e.requests, 3), "window_h": s.prepull_window_h}
                await self._mark(e.model, h, "prepull", detail)
        return p

    async def prewarm(self, now: datetime | None = None) -> str | None:
        """Load the most expected local model into memory before people start asking."""
        inv = await self.inventory.snapshot(refresh=True)
        for e in await self.expected(now):
            info = inv.get(e.model)
            if info is None or not info.local:
                continue
            if info.loaded_on:
                return e.model
            host = info.hosts[0]
            client = ollama.AsyncClient(host=host, timeout=self.settings.stream_idle_timeout_s)
            try:
                # an empty chat loads the model and returns (Ollama's documented way to preload)
                await client.chat(model=e.model, messages=[], keep_alive="1h")
            except Exception as exc:  # a failed warm-up only costs the first user a load
                log.warning("pre-warm of %s on %s failed: %s", e.model, host, exc)
                return None
            finally:
                await client.close()
            await self._mark(e.model, host, "load", {"expected": round(e.requests, 3)})
            self.inventory.invalidate()
            return e.model
        return None

    async def _mark(self, model: str, host: str, kind: str, detail: dict[str, float]) -> None:
        try:
            await self.store.record_model_event(model, host, kind, detail)
        except Exception:
            log.warning("could not record %s of %s", kind, model, exc_info=True)


def _expected_of(expected: list[Expected], model: str) -> float:
    return next((e.requests for e in expected if e.model == model), 0.0)
