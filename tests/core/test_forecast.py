"""Predictive pre-pull: the forecast follows hour-of-week usage, and the pre-pull job pulls the
expected model through the real ollama client within the disk budget, recording what it did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from core.forecast import Expected, PrePuller, forecast, plan
from core.generation import Generator
from core.inventory import InventoryService, load_catalog
from core.store import Store, create_engine, upgrade_database
from core.types import Inventory, ModelInfo
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
    # 6 on past Monday mornings, half-blended with the same hour on the last five working days (6 once)
    assert expected[0].requests == pytest.approx(0.5 * 6 + 0.5 * 6 / 5, rel=0.01)
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


async def test_prepull_pulls_the_forecast_model_before_the_working_hours_burst(
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
    # Sunday morning nobody asks: the job pulls nothing
    assert (await puller.run(MONDAY - timedelta(days=1))).pull == []
    assert CODER not in ollama_double.models
    # Monday 08:30, before the 09:00 crowd: the coder model is pulled and local when they come
    plan = await puller.run(MONDAY)
    assert [e.model for e in plan.pull] == [CODER]
    assert (await puller.inventory.snapshot(refresh=True)).get(CODER).local
    assert CHAT not in ollama_double.models
    assert "llama3.2:1b" in ollama_double.models  # eviction is off by default
    events = await store.model_events(MONDAY - timedelta(weeks=52))
    kinds = [(e.model, e.kind) for e in events]
    assert (CODER, "pull") in kinds and (CODER, "prepull") in kinds
    # the next firing finds it local and pulls nothing
    assert (await puller.run(MONDAY)).pull == []
    assert len(ollama_double.calls("/api/pull")) == 1


async def test_a_model_taken_up_this_morning_is_pulled_within_hours(
    store, ollama_double, make_settings
) -> None:
    for model, t in _history():
        await seed_answer(store, model, t)
    # this Monday the team starts asking for MATH, never used before, from 09:00 on
    now = MONDAY.replace(hour=11, minute=0)
    for i in range(8):
        await seed_answer(store, MATH, now - timedelta(hours=2) + timedelta(minutes=15 * i))
    ollama_double.add_pullable(MATH, 4.1)
    ollama_double.add_pullable(CODER, 4.7)
    puller = await _prepuller(store, make_settings(ollama_host=ollama_double.url, disk_budget_gb=20))
    plan = await puller.run(now)
    assert MATH in [e.model for e in plan.pull]
    assert MATH in ollama_double.models


async def test_a_model_routing_chose_but_could_not_get_is_still_forecast(store) -> None:
    # on past Monday mornings routing chose MATH, which did not fit the disk, so CODER answered
    for model, t in _history():
        if model == CODER:
            await seed_answer(store, CODER, t, recommended_model=MATH)
    from core.config import Settings
    from core.forecast import expected_demand

    expected = await expected_demand(store, Settings(prepull_window_h=2), MONDAY)
    assert [e.model for e in expected] == [MATH]


def _inventory(local: dict[str, float], remote: dict[str, float], loaded: tuple[str, ...] = ()) -> Inventory:
    host = "http://127.0.0.1:11434"
    return Inventory(
        models=tuple(
            ModelInfo(
                name=name,
                local=name in local,
                hosts=(host,) if name in local else (),
                loaded_on=(host,) if name in loaded else (),
                size_gb=size,
                parameters_b=None,
                context_length=None,
                specializations=(),
                scores={},
                catalogued=True,
            )
            for name, size in {**local, **remote}.items()
        ),
        hosts=(host,),
    )


def test_the_disk_gets_the_models_that_serve_the_most_requests_not_the_most_asked_one() -> None:
    big, coder, math = "phi4:14b", CODER, MATH
    expected = [Expected(big, 5.0), Expected(coder, 3.0), Expected(math, 3.0)]
    p = plan(
        expected,
        _inventory({}, {big: 9.1, coder: 4.7, math: 4.1}),
        budget_gb=10,
        min_expected=0.5,
        evict=True,
    )
    # 9.1 GB serves 5 requests; the two others fit together and serve 6
    assert sorted(e.model for e in p.pull) == sorted([coder, math])
    assert p.skipped and p.skipped[0][0] == big


def test_eviction_spares_a_loaded_model_and_needs_the_setting() -> None:
    expected = [Expected(CODER, 6.0)]
    inv = _inventory({MATH: 4.1, CHAT: 5.4}, {CODER: 4.7}, loaded=(CHAT,))
    assert plan(expected, inv, budget_gb=10.5, min_expected=0.5, evict=False).pull == []
    p = plan(expected, inv, budget_gb=10.5, min_expected=0.5, evict=True)
    assert p.evict == [MATH] and [e.model for e in p.pull] == [CODER]  # CHAT is answering right now
    assert plan(expected, inv, budget_gb=6, min_expected=0.5, evict=True).pull == []  # only CHAT's room


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
