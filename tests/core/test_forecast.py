"""Predictive pre-pull: the forecast follows hour-of-week usage, and the pre-pull job pulls the
expected model through the real ollama client within the disk budget, recording what it did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.forecast import PrePuller, forecast
from core.generation import Generator
from core.inventory import InventoryService, load_catalog
from core.store import Store, create_engine, upgrade_database
from tests.helpers_usage import seed_answer

# a Monday, 08:30 UTC: people start asking at 09:00
MONDAY = datetime(2026, 11, 30, 8, 30, tzinfo=UTC)
CODER, CHAT, MATH = "qwen2.5-coder:7b", "gemma2:9b", "mathstral:7b"


def _history(weeks: int = 3) -> list[tuple[str, datetime]]:
    h: list[tuple[str, datetime]] = []
    for w in range(1, weeks + 1):
        monday_9 = MONDAY.replace(hour=9, minute=0) - timedelta(weeks=w)
        h += [(CODER, monday_9 + timedelta(minutes=5 * i)) for i in range(6)]  # a Monday-morning crowd
        h += [(CHAT, monday_9 + timedelta(days=2, hours=6, minutes=i)) for i in range(8)]  # Wednesdays 15:00
    return sorted(h, key=lambda x: x[1])


def test_the_forecast_picks_the_model_used_at_that_hour_of_the_week() -> None:
    expected = forecast(_history(), MONDAY, window_h=2)
    assert expected[0].model == CODER
    assert expected[0].requests == pytest.approx(6 * 0.7, rel=0.01)  # 6 a Monday morning, less the blend
    assert CHAT not in {e.model for e in expected}  # used on Wednesdays only, not this week
    wednesday = forecast(_history(), MONDAY + timedelta(days=2, hours=6), window_h=2)
    assert wednesday[0].model == CHAT


def test_recent_weeks_weigh_more_than_old_ones() -> None:
    # the team moved from CODER to MATH on Monday mornings last week
    h = [(m, t) for m, t in _history() if t > MONDAY - timedelta(weeks=1)]
    h += [(CODER, t) for m, t in _history() if m == CODER and t < MONDAY - timedelta(weeks=1)]
    h = [(MATH if t > MONDAY - timedelta(weeks=1) and m == CODER else m, t) for m, t in h]
    expected = forecast(sorted(h, key=lambda x: x[1]), MONDAY, window_h=2, halflife_days=3)
    assert expected[0].model == MATH


def test_no_history_no_forecast() -> None:
    assert forecast([], MONDAY, window_h=2) == []


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await upgrade_database(db_url)
    s = Store(create_engine(db_url))
    yield s
    await s.close()


async def _prepuller(store: Store, settings) -> PrePuller:
    inv = InventoryService(settings, settings.hosts, store.model_stats, load_catalog())
    gen = Generator(settings, inv, store_events=store.record_model_event)
    return PrePuller(settings, store, inv, gen)


async def test_prepull_pulls_the_forecast_model_within_the_budget(
    store, ollama_double, make_settings
) -> None:
    for model, t in _history():
        await seed_answer(store, model, t)
    ollama_double.add_pullable(CODER, 4.7)
    ollama_double.add_pullable(CHAT, 5.4)
    ollama_double.add_model("llama3.2:1b", size_gb=1.3)
    # 6 GB: room for the coder model next to what is there, not for a second big one
    settings = make_settings(ollama_host=ollama_double.url, disk_budget_gb=6.5, prepull_window_h=2)
    puller = await _prepuller(store, settings)
    plan = await puller.run(MONDAY)
    assert [e.model for e in plan.pull] == [CODER]
    assert CODER in ollama_double.models and CHAT not in ollama_double.models
    assert "llama3.2:1b" in ollama_double.models  # eviction is off by default
    events = await store.model_events(MONDAY - timedelta(weeks=52))
    kinds = [(e.model, e.kind) for e in events]
    assert (CODER, "pull") in kinds and (CODER, "prepull") in kinds
    # the next firing finds it local and pulls nothing
    assert (await puller.run(MONDAY)).pull == []
    assert len(ollama_double.calls("/api/pull")) == 1


async def test_a_full_disk_evicts_the_least_expected_model_only_when_allowed(
    store, ollama_double, make_settings
) -> None:
    for model, t in _history():
        await seed_answer(store, model, t)
    ollama_double.add_pullable(CODER, 4.7)
    ollama_double.add_model(MATH, size_gb=4.1)  # present, never asked for on Monday mornings
    kept = await (
        await _prepuller(store, make_settings(ollama_host=ollama_double.url, disk_budget_gb=6))
    ).run(MONDAY)
    assert kept.pull == [] and CODER not in ollama_double.models and MATH in ollama_double.models

    settings = make_settings(ollama_host=ollama_double.url, disk_budget_gb=6, evict_enabled=True)
    plan = await (await _prepuller(store, settings)).run(MONDAY)
    assert plan.evict == [MATH] and [e.model for e in plan.pull] == [CODER]
    assert CODER in ollama_double.models and MATH not in ollama_double.models
    kinds = [(e.model, e.kind) for e in await store.model_events(MONDAY - timedelta(weeks=52))]
    assert (MATH, "remove") in kinds and (MATH, "evict") in kinds and (CODER, "prepull") in kinds


async def test_prewarm_loads_the_most_expected_local_model(store, ollama_double, make_settings) -> None:
    for model, t in _history():
        await seed_answer(store, model, t)
    ollama_double.add_model(CODER, size_gb=4.7)
    puller = await _prepuller(store, make_settings(ollama_host=ollama_double.url))
    assert await puller.prewarm(MONDAY) == CODER
    assert CODER in ollama_double.loaded
    kinds = [(e.model, e.kind) for e in await store.model_events(MONDAY - timedelta(weeks=52))]
    assert (CODER, "load") in kinds
