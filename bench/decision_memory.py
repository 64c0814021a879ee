"""What the decision memory costs the meta-router path: loading, searching and topping up.

    python bench/decision_memory.py [--rows 20000] [--queries 300] [--db sqlite|postgresql]

Seeds a fresh database with `rows` recorded requests (spread over 60 days, a third rated) and their
embeddings, then times DecisionMemory: the first search (loads the matrix), warm searches (matrix
product, top-k, one query for the matching decisions), searches that also top up from the database
(refresh every call, as a replica does every 5 s), and `remember`. A search waits at most 0.5 s for
the first load and goes on without examples; the load finishes in the background. Embeddings are
random unit vectors (a tenth private); each query is a stored one plus noise, so searches find
matches and read them back. The encoder is not timed: on the hot path the local router has embedded
the question already.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from core.config import Settings
from core.routing.memory import DecisionMemory
from core.store import Store, create_engine, upgrade_database
from core.store.models import Answer, Feedback, Request, RequestEmbedding

DIM = 384
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


async def seed(store: Store, vectors: np.ndarray) -> None:
    now = datetime.now(UTC)
    rng = np.random.default_rng(1)
    n = len(vectors)
    at = [now - timedelta(days=float(d)) for d in rng.uniform(0, 60, n)]
    requests = [
        {
            "id": i + 1,
            "platform": "slack",
            "channel_id": f"C{i % 20}",
            "user_id": "U1",
            "query_text": f"question number {i} about something",
            "query_hash": "0" * 64,
            "created_at": at[i],
            "decision": {},
            "recommended_model": "qwen2.5-coder:7b",
            "query_type": "coding",
            "complexity": "simple",
            "source": "local",
            "confidence": 0.9,
            "decision_ms": 10.0,
            "cost_usd": 0.0,
        }
        for i in range(n)
    ]
    answers = [
        {
            "id": i + 1,
            "request_id": i + 1,
            "model": "qwen2.5-coder:7b",
            "host": "h",
            "status": "ok",
            "created_at": at[i],
        }
        for i in range(n)
    ]
    ratings = [
        {
            "answer_id": i + 1,
            "user_id": "U2",
            "rating": 1 if i % 2 else -1,
            "reaction": "+1",
            "created_at": at[i],
            "updated_at": at[i],
        }
        for i in range(0, n, 3)
    ]
    embeddings = [
        {
            "request_id": i + 1,
            "created_at": at[i],
            "private": i % 10 == 0,
            "embedding": vectors[i].astype(np.float16).tobytes(),
        }
        for i in range(n)
    ]
    async with store.engine.begin() as conn:
        for table, rows in (
            (Request, requests),
            (Answer, answers),
            (Feedback, ratings),
            (RequestEmbedding, embeddings),
        ):
            for start in range(0, len(rows), 2000):
                await conn.execute(insert(table), rows[start : start + 2000])


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def bench(url: str, args: argparse.Namespace) -> None:
    await upgrade_database(url)
    store = Store(create_engine(url))
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(args.rows, DIM)))
    await seed(store, vectors)
    queries = unit(
        vectors[rng.integers(0, args.rows, args.queries)] + rng.normal(scale=0.03, size=(args.queries, DIM))
    )
    current = {"q": queries[0]}
    settings = Settings(meta_router_enabled=False)

    def embed(_: str) -> np.ndarray:
        return current["q"]

    async def timed(memory: DecisionMemory) -> tuple[list[float], int]:
        times, hits = [], 0
        for q in queries:
            current["q"] = q
            t = time.perf_counter()
            found = await memory.similar("q")
            times.append((time.perf_counter() - t) * 1000)
            hits += bool(found)
        return times, hits

    memory = DecisionMemory(settings, store, embed, refresh_s=3600)
    t = time.perf_counter()
    await memory.load()
    load_ms = (time.perf_counter() - t) * 1000
    warm, hits = await timed(memory)
    topping = DecisionMemory(settings, store, embed, refresh_s=0.0)
    await topping.similar("q")
    refreshed, _ = await timed(topping)
    remember = []
    for _ in range(100):
        t = time.perf_counter()
        # request 1 has its embedding already: the insert is a no-op, the round trip is what is timed
        await memory.remember(1, "q", private=False)
        remember.append((time.perf_counter() - t) * 1000)
    await store.close()

    size_mb = len(memory) * DIM * 4 / 1e6
    print(
        f"{args.rows} past decisions ({len(memory)} loaded, {size_mb:.0f} MB as float32), {url.split(':')[0]}"
    )
    print("| operation | p50 | p99 |")
    print("| --- | ---: | ---: |")
    print(f"| first load of the matrix | {load_ms:.0f} ms | |")
    print(
        f"| search, warm ({hits}/{len(queries)} with matches) "
        f"| {pct(warm, 50):.2f} ms | {pct(warm, 99):.2f} ms |"
    )
    print(
        f"| search + top-up from the database | {pct(refreshed, 50):.2f} ms | {pct(refreshed, 99):.2f} ms |"
    )
    print(f"| remember (one insert) | {pct(remember, 50):.2f} ms | {pct(remember, 99):.2f} ms |")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            await bench(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", args)
        return
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        await bench(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", args)
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
