"""The README's sample report chart: a week of a team's usage, seeded through the Store, then drawn by
the real `metarouter report`.

    python bench/sample_report.py [--out docs/report-sample.png] [--people 12] [--seed 3]

A temporary SQLite database gets a working week of a --people team in one time zone (weekdays
09:00-18:00 Berlin time, busier mornings): questions of each query type routed by the meta-router,
the local router or the decision cache (with the usual fallbacks: timeouts, rate limits, private
channels), answered by the models a team would use for them, some rated; plus the pulls, pre-pulls
and evictions of a week. Rows are written with the Store's own calls, then moved back to when they
happened (the Store stamps "now"). Then `metarouter report --since 7d --png OUT` runs against it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update

from core.store import Store, create_engine, upgrade_database
from core.store.models import Answer, Feedback, ModelEvent, Request, RouterCall
from core.types import Decision

HOST = "http://ollama-1:11434"
TZ = ZoneInfo("Europe/Berlin")
# query type: (share, [(model, share, satisfaction)])
MIX = {
    "coding": (0.40, [("qwen2.5-coder:7b", 0.7, 0.86), ("deepseek-coder-v2:16b", 0.3, 0.91)]),
    "general": (0.25, [("llama3.1:8b", 0.6, 0.82), ("llama3.2:3b", 0.4, 0.70)]),
    "reasoning": (0.13, [("deepseek-r1:7b", 0.6, 0.80), ("phi4:14b", 0.4, 0.88)]),
    "math": (0.12, [("qwen2-math:7b", 0.8, 0.84), ("mathstral:7b", 0.2, 0.78)]),
    "creative": (0.10, [("gemma2:9b", 1.0, 0.83)]),
}
HOURLY = {9: 0.6, 10: 1.2, 11: 1.1, 12: 0.5, 13: 0.6, 14: 1.0, 15: 1.0, 16: 0.8, 17: 0.4}
COMPLEXITY = ("simple", "moderate", "complex")


def _pick(rng: random.Random, options: dict[str, float]) -> str:
    return rng.choices(list(options), weights=list(options.values()))[0]


def _route(rng: random.Random) -> tuple[str, str | None, float, float]:
    """(source, fallback reason, decision ms, meta-router cost) of one decision."""
    kind = _pick(
        rng, {"openai": 0.50, "local": 0.34, "cache": 0.08, "timeout": 0.03, "rate": 0.01, "private": 0.04}
    )
    if kind == "openai":
        return "openai", None, rng.lognormvariate(6.4, 0.35), rng.uniform(0.00008, 0.00020)
    if kind == "cache":
        return "cache", None, rng.uniform(0.3, 1.5), 0.0
    if kind == "timeout":  # the meta-router was asked and paid for, then the local router took over
        return "local", "timeout", 4000 + rng.uniform(5, 20), rng.uniform(0.00008, 0.00020)
    if kind == "rate":
        return "local", "rate_limited", rng.uniform(5, 40), 0.0
    if kind == "private":
        return "local", "privacy", rng.uniform(4, 15), 0.0
    return "local", "local_confident", rng.uniform(4, 15), 0.0


async def _backdate(store: Store, table: type, row_id: int, at: datetime) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(update(table).where(table.id == row_id).values(created_at=at))


async def _last_id(store: Store, table: type) -> int:
    async with store.engine.begin() as conn:
        return int(await conn.scalar(select(func.max(table.id))) or 0)


async def seed(store: Store, people: int, rng: random.Random, now: datetime) -> int:
    start = (now - timedelta(days=7)).astimezone(TZ).replace(minute=0, second=0, microsecond=0)
    requests = 0
    t = start
    while t < now.astimezone(TZ) - timedelta(hours=1):
        rate = HOURLY.get(t.hour, 0.0) if t.weekday() < 5 else 0.0
        for _ in range(sum(rng.random() < rate / 4 for _ in range(4 * people))):
            at = (t + timedelta(seconds=rng.uniform(0, 3599))).astimezone(UTC)
            await _request(store, rng, at, user=f"U{rng.randrange(people):03d}")
            requests += 1
        t += timedelta(hours=1)
    # a week of model housekeeping: the pre-pull job before each working day (evicting to make room
    # twice), the pre-warm of the morning's model, and one pull by an admin
    workdays = [d for d in range(8) if (start + timedelta(days=d)).weekday() < 5]
    pulled = ("phi4:14b", "deepseek-coder-v2:16b", "mathstral:7b", "gemma2:9b", "deepseek-r1:7b")
    for i, d in enumerate(workdays[:5]):
        morning = (start + timedelta(days=d)).replace(hour=8, minute=0)
        if morning >= now.astimezone(TZ):
            break
        at = morning.astimezone(UTC)
        if i in (1, 3):
            evicted = "llama3.2:3b" if i == 1 else "qwen2-math:7b"
            await _event(store, evicted, "remove", at)
            await _event(store, evicted, "evict", at)
        await _event(store, pulled[i], "pull", at + timedelta(minutes=3))
        await _event(store, pulled[i], "prepull", at + timedelta(minutes=3))
        await _event(store, "qwen2.5-coder:7b", "load", at + timedelta(minutes=45))
    admin_pull = (start + timedelta(days=workdays[0])).replace(hour=11)
    await _event(store, "llama3.2:3b", "pull", admin_pull.astimezone(UTC))
    return requests


async def _event(store: Store, model: str, kind: str, at: datetime) -> None:
    await store.record_model_event(model, HOST, kind, {"sample": True})
    await _backdate(store, ModelEvent, await _last_id(store, ModelEvent), at)


async def _request(store: Store, rng: random.Random, at: datetime, user: str) -> None:
    qtype = _pick(rng, {k: v[0] for k, v in MIX.items()})
    models = MIX[qtype][1]
    model, _, satisfaction = rng.choices(models, weights=[m[1] for m in models])[0]
    source, reason, ms, cost = _route(rng)
    decision = Decision(
        recommended_model=model,
        confidence=round(rng.uniform(0.7, 0.97), 2),
        reasoning="sample",
        query_type=qtype,  # type: ignore[arg-type]
        complexity=_pick(rng, dict(zip(COMPLEXITY, (0.5, 0.35, 0.15), strict=True))),  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        fallback_reason=reason,  # type: ignore[arg-type]
        decision_ms=round(ms, 1),
        cost_usd=cost,
    )
    if cost:
        await store.record_router_call("gpt-4o-mini", reason or "ok", cost, ms)
        await _backdate(store, RouterCall, await _last_id(store, RouterCall), at)
    request_id = await store.record_request(
        platform=rng.choice(("slack", "slack", "discord")),
        channel_id="C-sample",
        user_id=user,
        query="(sample)",
        decision=decision,
    )
    await _backdate(store, Request, request_id, at)
    answer_id = await store.start_answer(request_id, model, HOST)
    ok = rng.random() > 0.01
    await store.finish_answer(
        answer_id,
        status="ok" if ok else "error",
        prompt_tokens=rng.randint(150, 1800) if ok else None,
        completion_tokens=rng.randint(80, 900) if ok else None,
    )
    await _backdate(store, Answer, answer_id, at)
    if ok and rng.random() < 0.3:  # about a third of answers get a reaction
        rating = 1 if rng.random() < satisfaction else -1
        await store.set_feedback(answer_id, user, rating, "+1" if rating > 0 else "-1")
        async with store.engine.begin() as conn:
            await conn.execute(
                update(Feedback).where(Feedback.answer_id == answer_id).values(created_at=at, updated_at=at)
            )


async def build(db_url: str, people: int, seed_: int) -> int:
    await upgrade_database(db_url)
    store = Store(create_engine(db_url))
    try:
        return await seed(store, people, random.Random(seed_), datetime.now(UTC))
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/report-sample.png")
    ap.add_argument("--people", type=int, default=12)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite+aiosqlite:///{Path(tmp) / 'sample.db'}"
        n = asyncio.run(build(db_url, args.people, args.seed))
        print(f"seeded {n} requests", file=sys.stderr)
        env = {**os.environ, "DATABASE_URL": db_url, "METAROUTER_DATA_DIR": tmp}
        env.pop("METAROUTER_CONFIG", None)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bot.cli", "report", "--since", "7d", "--png", args.out]
        raise SystemExit(subprocess.run(cmd, env=env, check=False).returncode)


if __name__ == "__main__":
    main()
