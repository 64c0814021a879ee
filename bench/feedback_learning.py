"""Does routing learn from ratings? A simulated stream of coding questions where the catalog's favourite
is secretly worse than a comparable alternative.

    python bench/feedback_learning.py [--requests 1500] [--per-day 50] [--rate-share 0.3] [--seeds 20]

Every catalogued model is local. The real model choice (core/routing/selection.py) picks a model for
each question from the inventory's statistics, which the real feedback code (core/feedback.py) builds
from the ratings so far, counted per day and decayed by age exactly as the store does. Users rate a
share of answers, thumbs-up with the served model's true satisfaction.

Scenario "worse from the start": qwen2.5-coder:7b (catalog 88 for coding, the deterministic pick)
satisfies 45% of the time, qwen2.5:7b (85) 80%: the oracle serves qwen2.5:7b.
Scenario "turns worse": qwen2.5-coder:7b satisfies 85% until day 10, then 45% (a bad new build under
the same tag); counted from the change.
Scenario "hidden gem": qwen2.5-coder:7b satisfies 90%, qwen2.5:7b 97%, better than its catalog score
says: a greedy router never finds out, since the model it serves never looks worse than the other's
prior. This is the case exploration is for.

Reported per policy, over the seeds: requests until routing prefers the better model (in >= 90% of a
sliding window of 50 requests; "never" if not within the stream), the share served by the oracle's
model over the last 500 requests, and cumulative regret (sum of the oracle's true satisfaction minus
the served model's, in expected thumbs-up).
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from core.feedback import DEFAULT_HALFLIFE_DAYS, RatingCount, tally
from core.inventory import load_catalog
from core.routing.selection import Exploration, select_model
from core.types import Inventory, ModelInfo, ModelStats

WORSE, BETTER = "qwen2.5-coder:7b", "qwen2.5:7b"
# true satisfaction of the other close models; everything else is far behind on the catalog anyway
OTHERS = {"phi4:14b": 0.70, "deepseek-coder-v2:16b": 0.65}
DEFAULT_TRUE = 0.4
WINDOW = 50
PREFERS = 0.9
START = datetime(2026, 11, 1, 8, tzinfo=UTC)


@dataclass(frozen=True)
class Policy:
    name: str
    learn: bool
    explore: bool
    halflife_days: float = DEFAULT_HALFLIFE_DAYS


POLICIES = (
    Policy("no learning (catalog only)", learn=False, explore=False),
    Policy("learning, no exploration", learn=True, explore=False),
    Policy("learning + exploration (margin 0.05)", learn=True, explore=True),
    Policy("learning + exploration, no decay", learn=True, explore=True, halflife_days=1e9),
)


def true_satisfaction(model: str, day: float, scenario: str) -> float:
    if scenario == "gem":
        return {WORSE: 0.90, BETTER: 0.97}.get(model, OTHERS.get(model, DEFAULT_TRUE))
    if model == WORSE:
        return 0.45 if scenario == "worse" or day >= 10 else 0.85
    if model == BETTER:
        return 0.80
    return OTHERS.get(model, DEFAULT_TRUE)


def base_models() -> list[ModelInfo]:
    return [
        ModelInfo(
            name=e.name,
            local=True,
            hosts=("http://gpu1:11434",),
            loaded_on=(),
            size_gb=e.size_gb,
            parameters_b=e.parameters_b,
            context_length=e.context_length,
            specializations=e.specializations,
            scores=dict(e.scores),
            catalogued=True,
        )
        for e in load_catalog()
    ]


def inventory(models: list[ModelInfo], counts: dict[tuple[str, int, object], int], now: datetime, p: Policy):
    if not p.learn:
        return Inventory(models=tuple(models), hosts=("http://gpu1:11434",))
    rows = (
        RatingCount(model, "coding", rating, n, datetime.combine(day, time(12), tzinfo=UTC))  # type: ignore[arg-type]
        for (model, rating, day), n in counts.items()
    )
    by_model = tally(rows, now=now, halflife_days=p.halflife_days)
    with_stats = [
        m
        if m.name not in by_model
        else ModelInfo(**{**m.__dict__, "stats": ModelStats(by_type=by_model[m.name])})
        for m in models
    ]
    return Inventory(models=tuple(with_stats), hosts=("http://gpu1:11434",))


def run(p: Policy, scenario: str, seed: int, args: argparse.Namespace) -> tuple[int | None, float, float]:
    users = random.Random(seed)
    explore = Exploration(0.05, random.Random(seed + 10_000)) if p.explore else None
    models = base_models()
    counts: dict[tuple[str, int, object], int] = {}
    window: deque[bool] = deque(maxlen=WINDOW)
    regret = 0.0
    found: int | None = None
    tail: list[bool] = []
    change = 10 * args.per_day if scenario == "turns" else 0
    for i in range(args.requests):
        day = i / args.per_day
        now = START + timedelta(days=day)
        chosen = select_model("coding", "moderate", inventory(models, counts, now, p), explore=explore).model
        sats = {m.name: true_satisfaction(m.name, day, scenario) for m in models}
        oracle = max(sats, key=lambda n: sats[n])
        regret += sats[oracle] - sats[chosen] if i >= change else 0.0
        if i >= change:
            window.append(chosen == BETTER)
            if found is None and len(window) == WINDOW and sum(window) >= PREFERS * WINDOW:
                found = i - change + 1
        if i >= args.requests - 500:
            tail.append(chosen == oracle)
        if users.random() < args.rate_share:
            rating = 1 if users.random() < sats[chosen] else -1
            key = (chosen, rating, now.date())
            counts[key] = counts.get(key, 0) + 1
    return found, sum(tail) / len(tail), regret


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--per-day", type=int, default=50)
    ap.add_argument("--rate-share", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    print(
        f"{args.requests} coding requests, {args.per_day}/day, {args.rate_share:.0%} rated, "
        f"{args.seeds} seeds; medians over seeds (requests counted from the change)\n"
    )
    for scenario, title in (
        ("worse", f"{WORSE} worse from the start (45% vs 80%)"),
        ("turns", f"{WORSE} turns worse on day 10 (85% -> 45%, vs 80%)"),
        ("gem", f"{BETTER} better than its catalog score (97% vs 90%)"),
    ):
        print(f"Scenario: {title}")
        print("| policy | requests until it prefers the better model | oracle's model, last 500 | regret |")
        print("| --- | ---: | ---: | ---: |")
        for p in POLICIES:
            results = [run(p, scenario, seed, args) for seed in range(args.seeds)]
            reached = [f for f, _, _ in results if f is not None]
            if len(reached) * 2 > len(results):
                # a seed that never got there counts as the longest possible
                found = statistics.median([f if f is not None else args.requests for f, _, _ in results])
                shown = f"{found:.0f}" + (
                    f" ({len(results) - len(reached)} never)" if len(reached) < len(results) else ""
                )
            else:
                shown = f"never ({len(results) - len(reached)}/{len(results)} seeds)"
            tail = statistics.median(t for _, t, _ in results)
            regret = statistics.median(r for _, _, r in results)
            print(f"| {p.name} | {shown} | {tail:.0%} | {regret:.1f} |")
        print()


if __name__ == "__main__":
    main()
