"""Predictive pre-pull against pull-on-demand: the share of requests whose model was already local.

    python bench/prepull.py [--seed 7] [--people 50] [--weeks 4]

A synthetic trace: a team of --people in five groups in different time zones, each with its own
favourite models, asking during their working hours on weekdays (busier mid-morning and
mid-afternoon, a little at weekends); in week 3 two groups take up a new model (phi4:14b). The disk
holds a third of the catalog.

Replayed hour by hour against two policies:
- baseline: pull a model when a request needs it, evicting the least recently used ones;
- ours: the pre-pull job at the top of every hour (core.forecast: the forecast for the next
  --window hours, then plan() with eviction on); a miss still pulls, evicting the least expected.
Pulls are taken to finish before the next request (as if the pull time were hidden), so the figure
is the share of requests that found their model local: a miss is a pull the user waited for.
"""

from __future__ import annotations

import argparse
import random
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from core.forecast import forecast, plan
from core.inventory import load_catalog
from core.types import Inventory, ModelInfo

HOST = "http://127.0.0.1:11434"
START = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday
NEW_MODEL = "phi4:14b"
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


def trace(people: int, weeks: int, rng: random.Random) -> list[tuple[datetime, str]]:
    out: list[tuple[datetime, str]] = []
    for hour in range(weeks * 7 * 24):
        t = START + timedelta(hours=hour)
        week = hour // (7 * 24)
        for person in range(people):
            group = person % len(GROUPS)
            offset, prefs = GROUPS[group]
            local = t + timedelta(hours=offset)
            rate = HOURLY.get(local.hour, 0.01) * (1.0 if local.weekday() < 5 else 0.03)
            if week >= 2 and group in (0, 3):  # the new model takes over for two groups
                prefs = {NEW_MODEL: 0.6, **{m: w * 0.4 for m, w in prefs.items()}}
            n = sum(rng.random() < rate / 4 for _ in range(4))  # ~Poisson, at most 4 an hour
            for _ in range(n):
                model = rng.choices(list(prefs), weights=list(prefs.values()))[0]
                out.append((t + timedelta(seconds=rng.uniform(0, 3599)), model))
    return sorted(out)


class Disk:
    """What is local, in least-recently-used order, within a budget in GB."""

    def __init__(self, sizes: dict[str, float], budget: float) -> None:
        self.sizes, self.budget = sizes, budget
        self.local: OrderedDict[str, None] = OrderedDict()

    def used(self) -> float:
        return sum(self.sizes[m] for m in self.local)

    def touch(self, model: str, expected: dict[str, float] | None = None) -> bool:
        """A request for `model`: True when it was local; otherwise pull it, evicting to make room:
        the least recently used first, or with `expected`, the least expected (then LRU)."""
        if model in self.local:
            self.local.move_to_end(model)
            return True
        while self.local and self.used() + self.sizes[model] > self.budget:
            order = list(self.local)  # least recently used first
            victim = (
                min(order, key=lambda m: (expected.get(m, 0.0), order.index(m))) if expected else order[0]
            )
            del self.local[victim]
        self.local[model] = None
        return False

    def inventory(self) -> Inventory:
        models = tuple(
            ModelInfo(
                name=m,
                local=m in self.local,
                hosts=(HOST,) if m in self.local else (),
                loaded_on=(),
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


def replay(
    requests: list[tuple[datetime, str]],
    sizes: dict[str, float],
    budget: float,
    *,
    ours: bool,
    window_h: float,
    weeks: int,
) -> list[tuple[int, int]]:
    """(warm, total) per week."""
    disk = Disk(sizes, budget)
    per_week = [[0, 0] for _ in range(weeks)]
    history: list[tuple[str, datetime]] = []
    i = 0
    for hour in range(weeks * 7 * 24):
        now = START + timedelta(hours=hour)
        wanted: dict[str, float] | None = None
        if ours:
            expected = forecast(history, now, window_h)
            wanted = {e.model: e.requests for e in expected}
            p = plan(expected, disk.inventory(), budget_gb=budget, min_expected=0.5, evict=True)
            for m in p.evict:
                disk.local.pop(m, None)
            for e in p.pull:
                disk.local[e.model] = None
        end = now + timedelta(hours=1)
        while i < len(requests) and requests[i][0] < end:
            t, model = requests[i]
            week = (t - START).days // 7
            per_week[week][0] += disk.touch(model, wanted)
            per_week[week][1] += 1
            history.append((model, t))
            i += 1
    return [(w, n) for w, n in per_week]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--people", type=int, default=50)
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--window", type=float, default=2.0, help="forecast window in hours")
    args = ap.parse_args()
    sizes = {e.name: e.size_gb or 4.0 for e in load_catalog()}
    budget = sum(sizes.values()) / 3
    requests = trace(args.people, args.weeks, random.Random(args.seed))
    print(
        f"{len(requests)} requests over {args.weeks} weeks, {len(sizes)} catalogued models "
        f"({sum(sizes.values()):.1f} GB), disk budget {budget:.1f} GB"
    )
    print(
        f"{'policy':22} " + " ".join(f"{'week ' + str(w + 1):>8}" for w in range(args.weeks)) + f" {'all':>8}"
    )
    for name, ours in (("pull on demand + LRU", False), ("forecast pre-pull", True)):
        weeks = replay(requests, sizes, budget, ours=ours, window_h=args.window, weeks=args.weeks)
        warm, total = sum(w for w, _ in weeks), sum(n for _, n in weeks)
        cells = " ".join(f"{w / n:>8.1%}" if n else f"{'–':>8}" for w, n in weeks)
        print(f"{name:22} {cells} {warm / total:>8.1%}   cold misses: {total - warm}")


if __name__ == "__main__":
    main()
