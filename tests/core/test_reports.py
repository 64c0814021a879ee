"""Usage reports: the figures for a seeded database, the text, and a chart that decodes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.reports import build_report, parse_since, render_png, render_text
from core.store import Store, create_engine, upgrade_database
from tests.helpers_usage import move_events, seed_answer

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await upgrade_database(db_url)
    s = Store(create_engine(db_url))
    yield s
    await s.close()


async def _seed(store: Store) -> None:
    day = timedelta(days=1)
    # four requests in the period, one before it
    await seed_answer(
        store,
        "qwen2.5-coder:7b",
        NOW - 3 * day,
        ratings=(1, 1),
        query_type="coding",
        source="openai",
        decision_ms=400.0,
        completion_tokens=100,
    )
    await seed_answer(
        store,
        "qwen2.5-coder:7b",
        NOW - 2 * day,
        ratings=(-1,),
        query_type="coding",
        source="cache",
        decision_ms=1.0,
        completion_tokens=50,
    )
    await seed_answer(
        store,
        "llama3.2:3b",
        NOW - day,
        query_type="general",
        source="local",
        fallback_reason="timeout",
        decision_ms=4000.0,
        completion_tokens=20,
    )
    await seed_answer(
        store,
        "llama3.2:3b",
        NOW - day / 2,
        ratings=(1,),
        query_type="general",
        source="local",
        fallback_reason="no_api_key",
        decision_ms=3.0,
        completion_tokens=30,
    )
    await seed_answer(store, "llama3.2:3b", NOW - 30 * day, ratings=(-1, -1), source="local")
    await store.record_router_call("gpt-4o-mini", "ok", 0.0003, 400.0)
    await store.record_router_call("gpt-4o-mini", "timeout", 0.0001, 4000.0)
    # llama3.2:3b was pre-pulled two days ago: both its answers in the period are pre-pull hits
    await store.record_model_event("llama3.2:3b", "http://127.0.0.1:11434", "pull", "pulled")
    await store.record_model_event("llama3.2:3b", "http://127.0.0.1:11434", "prepull", {"expected": 2.0})
    await move_events(store, "llama3.2:3b", "prepull", NOW - 2 * day)
    await move_events(store, "llama3.2:3b", "pull", NOW - 2 * day)


async def test_report_figures_for_a_seeded_database(store: Store) -> None:
    await _seed(store)
    r = await build_report(store, NOW - timedelta(days=7))
    assert r.requests == 4 and r.answers == 4
    assert [(u.model, u.answers, u.positive, u.negative) for u in r.by_model] == [
        ("llama3.2:3b", 2, 1, 0),
        ("qwen2.5-coder:7b", 2, 2, 1),
    ]
    assert r.by_query_type == {"coding": 2, "general": 2}
    assert r.by_source == {"local": 2, "openai": 1, "cache": 1}
    assert r.fallbacks == {"timeout": 1, "no_api_key": 1}
    assert r.fallback_rate == 0.5
    assert r.satisfaction == pytest.approx(3 / 4)
    assert (r.decision_p50_ms, r.decision_p95_ms) == (3.0, 4000.0)
    assert r.router_cost_usd == pytest.approx(0.0004)
    assert r.cost_per_query_usd == pytest.approx(0.0001)
    assert r.completion_tokens == 200 and r.prompt_tokens == 20
    assert (r.pulls, r.prepulls, r.evictions, r.prepull_hits) == (1, 1, 0, 2)

    text = render_text(r)
    assert "Requests: 4" in text
    assert "Satisfaction: 75% of 4 ratings" in text
    assert "Fallback rate: 50% — timeout 1, no_api_key 1" in text
    assert "p50 3.0 ms, p95 4000.0 ms" in text
    assert "pre-pull hits: 2 requests" in text


async def test_the_chart_is_a_png_that_decodes(store: Store) -> None:
    await _seed(store)
    png = render_png(await build_report(store, NOW - timedelta(days=7)))
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    img.verify()
    assert img.format == "PNG" and img.size == (1100, 750)


async def test_an_empty_period_reports_no_requests(store: Store) -> None:
    r = await build_report(store, NOW - timedelta(days=1))
    assert r.requests == 0 and r.satisfaction is None and r.decision_p50_ms is None
    assert "No requests in this period." in render_text(r)
    assert render_png(r).startswith(b"\x89PNG\r\n\x1a\n")


def test_periods_parse() -> None:
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("12h") == timedelta(hours=12)
    assert parse_since("2w") == timedelta(weeks=2)
    for bad in ("7", "d", "-1d", "7y", "xd"):
        with pytest.raises(ValueError):
            parse_since(bad)
