"""Scheduled jobs fire once per firing across replicas sharing a database, and report misfires."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import ConfigError
from core.scheduling import Job, Scheduler, cron_trigger
from core.store import Store, create_engine, upgrade_database


async def _store(url: str) -> Store:
    await upgrade_database(url)
    return Store(create_engine(url))


async def test_two_replicas_run_each_firing_once(db_url: str) -> None:
    # two schedulers, each with its own engine (as two processes would have), one database
    stores = [await _store(db_url), await _store(db_url)]
    runs: Counter[str] = Counter()

    def job_for(replica: str) -> Job:
        async def tick() -> None:
            runs[replica] += 1
            await asyncio.sleep(0.05)

        return Job("tick", "* * * * * *", tick)  # every second

    schedulers = [Scheduler(s, [job_for(f"r{i}")]) for i, s in enumerate(stores)]
    try:
        for s in schedulers:
            await s.start()
        await asyncio.sleep(3.2)
    finally:
        for s in schedulers:
            await s.close()
    fired = await stores[0].job_runs("tick")
    for s in stores:
        await s.close()
    assert len(fired) >= 2
    assert sum(runs.values()) == len(fired)  # every firing ran exactly once, on one replica or the other
    assert len({t for t, _ in fired}) == len(fired)
    assert all(status == "ok" for _, status in fired)


async def test_the_same_firing_started_at_once_on_two_replicas_runs_once(db_url: str) -> None:
    stores = [await _store(db_url), await _store(db_url)]
    ran: list[int] = []

    def job(i: int) -> Job:
        async def work() -> None:
            ran.append(i)
            await asyncio.sleep(0.2)

        return Job("report", "0 9 * * 1", work)

    a, b = Scheduler(stores[0], [job(0)]), Scheduler(stores[1], [job(1)])
    fire = datetime(2026, 11, 23, 9, tzinfo=UTC)
    results = await asyncio.gather(a.run("report", fire), b.run("report", fire))
    for s in stores:
        await s.close()
    assert sorted(results) == [False, True]
    assert len(ran) == 1


async def test_a_firing_missed_while_down_is_reported_and_run_once_at_start(db_url: str) -> None:
    store = await _store(db_url)
    # the job last ran three hours ago; hourly firings were missed since
    last = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    assert await store.claim_job_run("prepull", last)
    await store.finish_job_run("prepull", last, "ok")
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    sched = Scheduler(store, [Job("prepull", "0 * * * *", work)], misfire_grace_s=60)
    await sched.start()
    for _ in range(50):
        if ran:
            break
        await asyncio.sleep(0.05)
    await sched.close()
    runs = await store.job_runs("prepull")
    await store.close()
    assert ran == [1]
    assert sched.counters.misfires == {"prepull": 1}
    # every missed firing is coalesced into one run, recorded as the latest, so no later start repeats it
    assert runs[1][0] == datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def test_a_failing_job_is_recorded_and_the_scheduler_goes_on(tmp_path) -> None:
    store = await _store(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")

    async def broken() -> None:
        raise RuntimeError("boom")

    sched = Scheduler(store, [Job("broken", "0 * * * *", broken)])
    fire = datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert await sched.run("broken", fire)
    assert await store.job_runs("broken") == [(fire, "error")]
    assert sched.counters.runs == {("broken", "error"): 1}
    await store.close()


def test_crontab_weekday_numbers_count_from_sunday() -> None:
    monday_9 = cron_trigger("0 9 * * 1").get_next_fire_time(None, datetime(2026, 11, 27, tzinfo=UTC))
    assert monday_9 == datetime(2026, 11, 30, 9, tzinfo=UTC)
    assert monday_9.weekday() == 0


def test_a_bad_cron_string_names_its_setting() -> None:
    async def nothing() -> None:
        return None

    with pytest.raises(ConfigError, match="METAROUTER_REPORT_CRON"):
        Scheduler(None, [Job("report", "0 25 * * *", nothing, setting="report_cron")])


def test_an_unknown_time_zone_names_its_setting() -> None:
    with pytest.raises(ConfigError, match="METAROUTER_SCHEDULER_TIMEZONE"):
        Scheduler(None, [], timezone="Mars/Olympus_Mons")
