"""Decision-cache hit latency: what a repeated question costs before any model is asked.

    python bench/cache_latency.py [--lookups 10000] [--models 30]

Two rows: the cache alone (key from query, thread and inventory fingerprint, then the lookup) and the
whole RoutingChain.route on a hit (adds the inventory check and the "cache" copy of the decision).
The keys cycle over 1,000 stored questions with a four-turn thread, on an inventory of --models models.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core.config import Settings
from core.routing.cache import DecisionCache, cache_key
from core.routing.chain import MemoryLedger, RoutingChain
from core.types import Decision, Inventory, ModelInfo, ModelStats, RouteRequest, Turn

STORED = 1000


class FirstModel:
    """A local router for filling the cache; a hit never reaches it."""

    async def decide(self, req: RouteRequest, inv: Inventory) -> Decision:
        return Decision(
            recommended_model=inv.models[0].name,
            confidence=0.5,
            reasoning="bench",
            query_type="general",
            complexity="simple",
            source="local",
        )


def inventory(n: int) -> Inventory:
    models = tuple(
        ModelInfo(
            name=f"model-{i}:7b",
            local=i % 3 == 0,
            hosts=("http://127.0.0.1:11434",) if i % 3 == 0 else (),
            loaded_on=(),
            size_gb=4.7,
            parameters_b=7.0,
            context_length=8192,
            specializations=("general",),
            scores={"general": 60.0},
            catalogued=True,
            stats=ModelStats(satisfaction=0.8, feedback_count=i),
        )
        for i in range(n)
    )
    return Inventory(models=models, hosts=("http://127.0.0.1:11434",))


def requests() -> list[RouteRequest]:
    history = tuple(
        Turn(role="user" if i % 2 == 0 else "assistant", content=f"Earlier message {i} " * 20)
        for i in range(6)
    )
    return [
        RouteRequest(query=f"How do I reverse a linked list in language number {i}?", history=history)
        for i in range(STORED)
    ]


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    q = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return q[49] / 1000, q[98] / 1000  # µs


async def measure(lookups: int, n_models: int) -> list[tuple[str, float, float]]:
    # Nothing is written: the data directory is only where a database would live.
    settings = Settings(data_dir=Path(tempfile.gettempdir()), meta_router_enabled=False)
    inv = inventory(n_models)
    reqs = requests()
    cache = DecisionCache(settings)
    chain = RoutingChain(settings, FirstModel(), None, cache, MemoryLedger())
    for r in reqs:
        await chain.route(r, inv)

    key_get: list[int] = []
    for i in range(lookups):
        r = reqs[i % STORED]
        t0 = time.perf_counter_ns()
        hit = await cache.get(cache_key(r, inv, settings))
        key_get.append(time.perf_counter_ns() - t0)
        assert hit is not None

    route: list[int] = []
    for i in range(lookups):
        t0 = time.perf_counter_ns()
        d = await chain.route(reqs[i % STORED], inv)
        route.append(time.perf_counter_ns() - t0)
        assert d.source == "cache"

    return [
        ("`cache_key` + `DecisionCache.get` (hit)", *percentiles(key_get)),
        ("`RoutingChain.route` (cache hit)", *percentiles(route)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--models", type=int, default=30)
    args = ap.parse_args()
    rows = asyncio.run(measure(args.lookups, args.models))
    command = f"python bench/cache_latency.py --lookups {args.lookups} --models {args.models}"
    print(f"`{command}` (Python {sys.version.split()[0]})\n")
    print(f"| cache hit, {args.lookups:,} lookups | p50 | p99 |")
    print("| --- | --- | --- |")
    for name, p50, p99 in rows:
        print(f"| {name} | {p50:.1f} µs | {p99:.1f} µs |")


if __name__ == "__main__":
    main()
