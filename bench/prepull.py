"""Predictive pre-pull against pull-on-demand: the share of requests whose model was already local.

    python bench/prepull.py [--seed 7] [--people 50] [--weeks 4] [--budget-share 0.333] [--mb-s 50]

A synthetic trace: a team of --people in five groups in different time zones, each with its own
favourite models, asking during their working hours on weekdays (busier mid-morning and
mid-afternoon, a little at night and at weekends); from week 3 two groups take up a new model
(phi4:14b). The disk budget is --budget-share of the catalog (a third by default).

Replayed request by request against these policies, on one Ollama host:
- pull on demand + LRU: a request for a model that is not local pulls it, evicting the least
  recently used models to make room (the issue's baseline);
- pre-pull: serve as configured by Settings (defaults, or METAROUTER_* variables), with
  evict_enabled on (the baseline evicts too) and, as a second line, off (the default). The pre-pull
  job fires on `prepull_cron`'s schedule and runs `core.forecast.forecast` and `plan` with the
  settings' window, threshold and half-life, then pulls one model after another, as
  `PrePuller.run` does. A request for a model that is not local pulls it when it fits the budget, as
  serve does (serve never evicts on demand: when it does not fit, another, local model answers);
- pre-pull, eviction on, true rates: the same job and replay given the rates the trace is drawn
  from instead of the forecast (a perfect forecast): what is lost to pull time and to serve not
  evicting on demand, rather than to forecasting;
- no pre-pull, no eviction: serve with METAROUTER_PREPULL_ENABLED=false: pulls on demand while
  the budget allows, then answers from what is local;
- best set per hour, known in advance: for reference, the models that would have served the most of
  each hour's actual requests within the budget, there at the start of the hour for free. It knows
  the future; no policy that keeps one set of models through an hour can do better.

Pulls take size / --mb-s (50 MB/s by default) and go one after another over the host's link; a
request for a model that is still being pulled waits for it and counts as cold. Models used in the
last 5 minutes are loaded (Ollama's default keep-alive), and `plan` never evicts a loaded model.
The forecast reads every request's model, as serve's reads the model routing chose for each request.
--why lists the cold requests of the eviction-on line by week and model.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.config import Settings
from core.forecast import LOOKBACK, Expected, forecast, hour_slots, plan
from core.inventory import load_catalog
from core.scheduling import cron_trigger
from core.types import Inventory, ModelInfo

HOST = "http://127.0.0.1:11434"
START = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday
NEW_MODEL = "phi4:14b"
KEEP_ALIVE = timedelta(minutes=5)
# requests per person per hour on a weekday, by local hour
HOURLY = {8: 0.3, 9: 0.8, 10: 1.2, 11: 1.0, 12: 0.4, 13: 0.7, 14: 1.1, 15: 1.0, 16: 0.8, 17: 0.4}
# five groups in different time zones (their UTC offset in hours): at any hour two or three work
GROUPS = [
    (0, {"qwen2.5-coder:7b": 0.75, "deepseek-coder-v2:16b": 0.2, "llama3.2:3b": 0.05}),  # backend, Berlin
    (-5, {"qwen2.5-coder:1.5b": 0.7, "starcoder2:3b": 0.25, "codellama:7b": 0.05}),  # frontend, New York
    (-8, {"qwen2-math:7b": 0.75, "mathstral:7b": 0.2, "deepseek-r1:7b": 0.05}),  # data, San Francisco
    (5, {"llama3.1:8b": 0.7, "gemma2:9b": 0.25, "mistral:7b": 0.05}),  # product and writing, Bangalore
    (9, {"deepseek-r1:7b": 0.7, "qwen2.5:7b": 0.25, "llama3.2:3b": 0.05}),  # research, Tokyo
]


def _asks(group: int, t: datetime) -> tuple[float, dict[str, float]]:
    """A member of `group`'s requests per hour at `t`, and how they split among models."""
    offset, prefs = GROUPS[group]
    local = t + timedelta(hours=offset)
    rate = HOURLY.get(local.hour, 0.01) * (1.0 if local.weekday() < 5 else 0.03)
    if (t - START).days // 7 >= 2 and group in (0, 3):  # the new model takes over for two groups
        prefs = {NEW_MODEL: 0.6, **{m: w * 0.4 for m, w in prefs.items()}}
    return rate, prefs


def trace(people: int, weeks: int, rng: random.Random) -> list[tuple[datetime, str]]:
    out: list[tuple[datetime, str]] = []
    for hour in range(weeks * 7 * 24):
        t = START + timedelta(hours=hour)
        for person in range(people):
            rate, prefs = _asks(person % len(GROUPS), t)
            n = sum(rng.random() < rate / 4 for _ in range(4))  # ~Poisson, at most 4 an hour
            for _ in range(n):
                model = rng.choices(list(prefs), weights=list(prefs.values()))[0]
                out.append((t + timedelta(seconds=rng.uniform(0, 3599)), model))
    return sorted(out)


def true_forecast(people: int, now: datetime, window_h: float) -> list[Expected]:
    """What the trace is drawn from over the window: a perfect forecast, for reference."""
    out: dict[str, float] = {}
    for slot, share in hour_slots(now, now + timedelta(hours=window_h)):
        for group in range(len(GROUPS)):
            rate, prefs = _asks(group, slot)
            for m, w in prefs.items():
                out[m] = out.get(m, 0.0) + len(range(group, people, len(GROUPS))) * rate * w * share
    return sorted((Expected(m, v) for m, v in out.items()), key=lambda e: -e.requests)


@dataclass
class Host:
    """One Ollama host's disk within a budget: what is local (least recently used first), what is
    being pulled (until when) over its one link, and when each model was last used."""

    sizes: dict[str, float]
    budget: float
    mb_s: float
    local: OrderedDict[str, None] = field(default_factory=OrderedDict)
    pulling: dict[str, datetime] = field(default_factory=dict)
    link_free: datetime = START
    last_used: dict[str, datetime] = field(default_factory=dict)

    def settle(self, now: datetime) -> None:
        for m, done in sorted(self.pulling.items(), key=lambda x: x[1]):
            if done <= now:
                del self.pulling[m]
                self.local[m] = None

    def used(self) -> float:
        return sum(self.sizes[m] for m in (*self.local, *self.pulling))

    def fits(self, model: str) -> bool:
        return self.used() + self.sizes[model] <= self.budget + 1e-9

    def pull(self, model: str, now: datetime) -> None:
        start = max(now, self.link_free)
        self.link_free = start + timedelta(seconds=self.sizes[model] * 1000 / self.mb_s)
        self.pulling[model] = self.link_free

    def evict(self, model: str) -> None:
        self.local.pop(model, None)

    def inventory(self, now: datetime) -> Inventory:
        # a model being pulled already takes its room, as Ollama's partial download does
        present = set(self.local) | set(self.pulling)
        models = tuple(
            ModelInfo(
                name=m,
                local=m in present,
                hosts=(HOST,) if m in present else (),
                loaded_on=(HOST,) if now - self.last_used.get(m, START - KEEP_ALIVE) < KEEP_ALIVE else (),
                size_gb=s,
                parameters_b=None,
                context_length=None,
                specializations=(),
                scores={},
                catalogued=True,
            )
            for m, s in self.sizes.items()
        )
        return Inventory(models=models, hosts=(HOST,))


def firings(cron: str, weeks: int) -> list[datetime]:
    trigger = cron_trigger(cron)
    out: list[datetime] = []
    t = trigger.get_next_fire_time(None, START)
    while t is not None and t < START + timedelta(weeks=weeks):
        out.append(t.astimezone(UTC))
        t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
    return out


def replay(
    requests: list[tuple[datetime, str]],
    sizes: dict[str, float],
    budget: float,
    *,
    mb_s: float,
    weeks: int,
    settings: Settings | None,
    cold: Counter[tuple[int, str, str]] | None = None,
    perfect_for: int | None = None,
) -> list[tuple[int, int]]:
    """(warm, total) per week; `settings` None: pull on demand + LRU, else the pre-pull job. Counts
    the cold requests by (week, model, "pulling" or "absent") into `cold`. `perfect_for` (the team
    size): the job is given the trace's true rates instead of the forecast."""
    host = Host(sizes, budget, mb_s)
    per_week = [[0, 0] for _ in range(weeks)]
    history: list[tuple[str, datetime]] = []
    fires = firings(settings.prepull_cron, weeks) if settings and settings.prepull_enabled else []
    f = 0
    for t, model in requests:
        while f < len(fires) and fires[f] <= t:
            assert settings is not None
            now = fires[f]
            host.settle(now)
            lookback = [(m, at) for m, at in history if at >= now - LOOKBACK]
            expected = (
                true_forecast(perfect_for, now, settings.prepull_window_h)
                if perfect_for
                else forecast(
                    lookback, now, settings.prepull_window_h, halflife_days=settings.forecast_halflife_days
                )
            )
            p = plan(
                expected,
                host.inventory(now),
                budget_gb=settings.disk_budget_gb,
                min_expected=settings.prepull_min_expected,
                evict=settings.evict_enabled,
            )
            for m in p.evict:
                host.evict(m)
            for e in p.pull:
                host.pull(e.model, now)
            f += 1
        host.settle(t)
        week = (t - START).days // 7
        warm = model in host.local
        per_week[week][0] += warm
        per_week[week][1] += 1
        if warm:
            host.local.move_to_end(model)
        elif model not in host.pulling:
            if cold is not None:
                cold[(week + 1, model, "absent")] += 1
            if settings is None:
                while host.local and not host.fits(model):
                    host.evict(next(iter(host.local)))  # least recently used
            if host.fits(model):
                host.pull(model, t)
        elif cold is not None:
            cold[(week + 1, model, "pulling")] += 1
        host.last_used[model] = t
        history.append((model, t))
    return [(w, n) for w, n in per_week]


def best_per_hour(
    requests: list[tuple[datetime, str]], sizes: dict[str, float], budget: float, weeks: int
) -> list[tuple[int, int]]:
    """(warm, total) per week if each hour began with the set of models that serves most of its
    requests within the budget (a 0/1 knapsack in tenths of a GB)."""
    hours: dict[datetime, dict[str, int]] = {}
    for t, m in requests:
        c = hours.setdefault(t.replace(minute=0, second=0, microsecond=0), {})
        c[m] = c.get(m, 0) + 1
    per_week = [[0, 0] for _ in range(weeks)]
    cap = int(budget * 10)
    for h, counts in hours.items():
        best = [0] * (cap + 1)
        for m, n in counts.items():
            w = int(round(sizes[m] * 10))
            for c in range(cap, w - 1, -1):
                best[c] = max(best[c], best[c - w] + n)
        week = (h - START).days // 7
        per_week[week][0] += best[cap]
        per_week[week][1] += sum(counts.values())
    return [(w, n) for w, n in per_week]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--budget-share", type=float, default=1 / 3, help="of the catalog's total size")
    ap.add_argument("--mb-s", type=float, default=50.0, help="pull speed in MB/s")
    ap.add_argument("--why", action="store_true", help="list the cold requests of the eviction-on line")
    args = ap.parse_args()
    sizes = {e.name: e.size_gb or 4.0 for e in load_catalog()}
    budget = round(sum(sizes.values()) * args.budget_share, 1)
    requests = trace(args.people, args.weeks, random.Random(args.seed))
    print(
        f"seed {args.seed}: {len(requests)} requests from {args.people} people over {args.weeks} weeks, "
        f"{len(sizes)} catalogued models ({sum(sizes.values()):.1f} GB), disk budget {budget:.1f} GB, "
        f"pulls at {args.mb_s:g} MB/s"
    )
    print(
        f"{'policy':36} " + " ".join(f"{'week ' + str(w + 1):>7}" for w in range(args.weeks)) + f" {'all':>7}"
    )
    base = Settings(disk_budget_gb=budget)
    cold: Counter[tuple[int, str, str]] = Counter()
    policies: list[tuple[str, Settings | None, Counter[tuple[int, str, str]] | None]] = [
        ("pull on demand + LRU", None, None),
        ("pre-pull, eviction on", base.model_copy(update={"evict_enabled": True}), cold),
        ("pre-pull, eviction off (default)", base.model_copy(update={"evict_enabled": False}), None),
        ("no pre-pull, no eviction (serve)", base.model_copy(update={"prepull_enabled": False}), None),
    ]
    for name, settings, counter in policies:
        weeks = replay(
            requests, sizes, budget, mb_s=args.mb_s, weeks=args.weeks, settings=settings, cold=counter
        )
        _row(name, weeks)
    perfect = replay(
        requests,
        sizes,
        budget,
        mb_s=args.mb_s,
        weeks=args.weeks,
        settings=policies[1][1],
        perfect_for=args.people,
    )
    _row("pre-pull, eviction on, true rates", perfect)
    _row("best set per hour, known in advance", best_per_hour(requests, sizes, budget, args.weeks))
    if args.why:
        print("\ncold requests with eviction on (week, model, waiting for a pull or not local): n")
        for key, n in sorted(cold.items()):
            print(f"  {key}: {n}")


def _row(name: str, weeks: list[tuple[int, int]]) -> None:
    warm, total = sum(w for w, _ in weeks), sum(n for _, n in weeks)
    cells = " ".join(f"{w / n:>7.1%}" if n else f"{'–':>7}" for w, n in weeks)
    print(f"{name:36} {cells} {warm / total:>7.1%}   cold: {total - warm}")


if __name__ == "__main__":
    main()
