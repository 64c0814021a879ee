"""Ensemble routing latency: asking members in parallel costs the slowest member, not the sum.

    python bench/ensemble.py [--decisions 30] [--delays-ms 200,300,400] [--timeout-s 2.0]

Three loopback OpenAI doubles answer after an injected delay each (member i after delays[i] ms). For
1, 2 and 3 members, --decisions questions go through the whole RoutingChain.route (real openai client,
structured output, vote, ledger; no cache) one after another, and the table gives the decision time's
p50 and p99 next to the max and the sum of the members' delays. Two more rows: the same three members
asked one after another (what a sequential ensemble would cost), and three members of which the last
never answers in time (the decision waits for the timeout, no longer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cache_latency import FirstModel, inventory  # noqa: E402
from core.config import Settings  # noqa: E402
from core.routing.chain import MemoryLedger, RoutingChain  # noqa: E402
from core.routing.ensemble import Ensemble  # noqa: E402
from core.types import RouteRequest  # noqa: E402
from tests.doubles.openai import OpenAIDouble, Reply  # noqa: E402


def responder(delay_s: float):
    return lambda req: Reply.decision(confidence=0.9, delay_s=delay_s, model=req.body["model"])


def settings(doubles: list[OpenAIDouble], timeout_s: float, data_dir: Path) -> Settings:
    members = [
        {"name": f"m{i + 1}", "model": "gpt-4o-mini", "base_url": d.base_url} for i, d in enumerate(doubles)
    ]
    return Settings(
        data_dir=data_dir,
        meta_router_enabled=True,
        meta_routers=members,
        decision_timeout_s=timeout_s,
        cache_decisions=False,
        use_local_for_simple_queries=False,
        confidence_threshold=0.0,
        max_requests_per_hour=10**9,
    )


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def measure(s: Settings, n: int, *, sequential: bool = False) -> list[float]:
    ensemble = Ensemble.from_settings(s)
    chain = RoutingChain(s, FirstModel(), ensemble, None, MemoryLedger())
    inv = inventory(12)
    times = []
    try:
        await chain.route(RouteRequest(query="warm-up"), inv)  # connections opened, code paths warm
        for i in range(n):
            req = RouteRequest(query=f"question {i}: why does my recursion never stop?")
            started = time.perf_counter()
            if sequential:
                for m in ensemble.members:
                    await m.decide(req, inv)
            else:
                d = await chain.route(req, inv)
                assert d.source == "openai", d.fallback_reason
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await ensemble.aclose()
    return times


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--decisions", type=int, default=30)
    p.add_argument("--delays-ms", default="200,300,400")
    p.add_argument("--timeout-s", type=float, default=2.0)
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the hung member's timeouts are the point, not news
    delays = [int(x) / 1000 for x in args.delays_ms.split(",")]
    doubles = [await OpenAIDouble(responder=responder(d)).start() for d in delays]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(1, len(doubles) + 1):
                s = settings(doubles[:k], args.timeout_s, Path(tmp))
                rows.append(
                    (
                        f"{k} member{'s' if k > 1 else ''}, parallel",
                        delays[:k],
                        await measure(s, args.decisions),
                    )
                )
            s = settings(doubles, args.timeout_s, Path(tmp))
            rows.append(
                (
                    f"{len(doubles)} members, one after another",
                    delays,
                    await measure(s, args.decisions, sequential=True),
                )
            )
            doubles[-1].responder = responder(30.0)  # never in time
            hung = [*delays[:-1], args.timeout_s]
            rows.append((f"{len(doubles)} members, last one hung", hung, await measure(s, args.decisions)))
    finally:
        for d in doubles:
            await d.stop()

    print(f"{args.decisions} decisions per row; delays {args.delays_ms} ms; timeout {args.timeout_s:g} s\n")
    print(f"| {'ensemble':34} | max delay | sum delays | p50 ms | p99 ms |")
    print(f"| {'-' * 34} | --------: | ---------: | -----: | -----: |")
    for name, ds, times in rows:
        print(
            f"| {name:34} | {max(ds) * 1000:9.0f} | {sum(ds) * 1000:10.0f} | "
            f"{statistics.median(times):6.0f} | {pct(times, 99):6.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
