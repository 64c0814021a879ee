"""Scheduled jobs: APScheduler's AsyncIOScheduler firing plain async functions on cron strings.

Why our own `job_runs` table and not APScheduler's SQLAlchemyJobStore: that store needs a sync
driver (psycopg2 is not a dependency), and APScheduler 3 does not support several schedulers sharing
one job store: each would run every job. Our jobs are defined by settings anyway, so each replica
builds them in memory and the database keeps what must be shared and must survive restarts: one row
per firing. The replica that inserts a firing's row runs it (once across replicas); a PostgreSQL
advisory lock held for the run keeps a slow run from overlapping the next firing elsewhere. At start
the last recorded firing tells whether one was missed while no replica ran: it is reported as a
misfire and run once, late (coalesced), like APScheduler's own misfires while running.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from core.errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

    from core.chat import ReportSink
    from core.config import Settings
    from core.generation import Generator
    from core.inventory import InventoryService
    from core.routing.local import LocalRouter
    from core.store import Store

log = logging.getLogger(__name__)

# first key of the two-key advisory lock: our namespace, apart from the upgrade lock
_LOCK_NAMESPACE = 0x6D72  # "mr"


def cron_trigger(expr: str, timezone: str = "UTC") -> CronTrigger:
    """5 fields (crontab) or 6 with seconds first; raises ValueError on a bad expression.

    Weekday numbers mean what they mean in crontab (0 or 7 Sunday): APScheduler 3 counts from Monday,
    so "0 9 * * 1" would otherwise fire on Tuesdays. Numbers become names, which both read alike.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"{expr!r}: a cron expression has 5 fields or 6 (seconds first)")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, dow = fields
    dow = re.sub(r"(?<![/\d])(\d+)", lambda m: _WEEKDAYS[int(m.group(1)) % 7], dow)
    return CronTrigger(
        second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=timezone
    )


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass
class Job:
    id: str
    cron: str
    func: Callable[[], Awaitable[Any]]
    setting: str = ""  # the setting the cron string came from, for error messages


@dataclass
class JobCounters:
    """Per-process tallies; the metrics endpoint reads them."""

    runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (job, status) -> n
    misfires: dict[str, int] = field(default_factory=dict)

    def ran(self, job: str, status: str) -> None:
        self.runs[(job, status)] = self.runs.get((job, status), 0) + 1

    def missed(self, job: str) -> None:
        self.misfires[job] = self.misfires.get(job, 0) + 1


class Scheduler:
    def __init__(
        self,
        store: Store | None,
        jobs: list[Job],
        *,
        timezone: str = "UTC",
        misfire_grace_s: float = 300.0,
        counters: JobCounters | None = None,
    ) -> None:
        self.store = store
        self.timezone = timezone
        self.grace = timedelta(seconds=misfire_grace_s)
        self.counters = counters or JobCounters()
        self.jobs: dict[str, Job] = {}
        self._triggers: dict[str, CronTrigger] = {}
        try:
            cron_trigger("0 0 * * *", timezone)
        except LookupError:
            raise ConfigError(f"METAROUTER_SCHEDULER_TIMEZONE: unknown time zone {timezone!r}") from None
        for job in jobs:
            try:
                self._triggers[job.id] = cron_trigger(job.cron, timezone)
            except ValueError as exc:
                name = job.setting or job.id
                raise ConfigError(f"METAROUTER_{name.upper()}: {exc}") from None
            self.jobs[job.id] = job
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._scheduler: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        from apscheduler.events import EVENT_JOB_MISSED
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(timezone=self.timezone)
        for job_id, trigger in self._triggers.items():
            self._scheduler.add_job(
                self._fire,
                trigger,
                args=[job_id],
                id=job_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=int(self.grace.total_seconds()),
            )
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self._scheduler.start()
        for job_id in self._triggers:
            self._spawn(self._catch_up(job_id))

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop firing; runs in progress get `grace_s` to finish, then are cancelled."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_missed(self, event: Any) -> None:
        for t in event.scheduled_run_times or [event.scheduled_run_time]:
            log.warning("job %s missed its firing at %s", event.job_id, t)
            self.counters.missed(event.job_id)

    def scheduled_time(
        self, job_id: str, now: datetime | None = None, since: datetime | None = None
    ) -> datetime:
        """The firing `now` belongs to: the latest fire time of the job's cron in [since, now]
        (since defaults to the misfire grace before now); `now` itself if there is none."""
        now = now or datetime.now(UTC)
        trigger = self._triggers[job_id]
        t = trigger.get_next_fire_time(None, since or now - self.grace)
        latest = None
        while t is not None and t <= now:
            latest = t
            t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
        return (latest or now).astimezone(UTC)

    async def _fire(self, job_id: str) -> None:
        # in a task of our own: APScheduler cancels its executor's futures at shutdown, and a job
        # in the middle of a run should finish instead (close() waits for it)
        self._spawn(self.run(job_id, self.scheduled_time(job_id)))

    async def _catch_up(self, job_id: str) -> None:
        """A firing missed while no replica ran: report it and run it once now."""
        if self.store is None:
            return
        try:
            last = await self.store.last_job_fire(job_id)
        except Exception:
            log.warning("cannot read the last run of job %s", job_id, exc_info=True)
            return
        if last is None:
            return  # a new job: nothing was missed
        now = datetime.now(UTC)
        missed = self._triggers[job_id].get_next_fire_time(None, last + timedelta(microseconds=1))
        if missed is None or missed >= now - self.grace:
            return  # the scheduler fires it (or already did) within the grace time
        # every firing since then is coalesced into one run, recorded as the latest of them, so the
        # next start does not find the same gap again
        latest = self.scheduled_time(job_id, now, since=missed)
        log.warning("job %s missed its firing at %s while no replica ran; running it now", job_id, missed)
        self.counters.missed(job_id)
        await self.run(job_id, latest)

    async def run(self, job_id: str, fire_time: datetime) -> bool:
        """Run one firing of a job unless another replica has (or is running it). True if it ran here."""
        job = self.jobs[job_id]
        if self.store is None:  # no database: one process, nothing to share
            return await self._call(job, fire_time)
        if self.store.engine.dialect.name != "postgresql":
            # SQLite serves one process; the lock only keeps overlapping runs apart within it
            lock = self._local_locks.setdefault(job_id, asyncio.Lock())
            if lock.locked():
                return False
            async with lock:
                return await self._claimed_run(job, fire_time)
        key = zlib.crc32(job_id.encode()) - 2**31  # a signed int4, stable across processes
        try:
            async with self.store.engine.connect() as conn, conn.begin():
                got = await conn.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:ns, :k)"), {"ns": _LOCK_NAMESPACE, "k": key}
                )
                if not got:
                    log.info("job %s is running on another replica", job_id)
                    return False
                return await self._claimed_run(job, fire_time)
        except Exception:
            log.warning("job %s: database unavailable, not run", job_id, exc_info=True)
            return False

    async def _claimed_run(self, job: Job, fire_time: datetime) -> bool:
        assert self.store is not None
        try:
            if not await self.store.claim_job_run(job.id, fire_time):
                return False  # another replica took this firing
        except Exception:
            log.warning("job %s: cannot claim its firing; not run", job.id, exc_info=True)
            return False
        return await self._call(job, fire_time)

    async def _call(self, job: Job, fire_time: datetime) -> bool:
        status, error = "ok", None
        try:
            await job.func()
        except Exception as exc:
            log.exception("job %s failed", job.id)
            status, error = "error", type(exc).__name__
        self.counters.ran(job.id, status)
        if self.store is not None:
            try:
                await self.store.finish_job_run(job.id, fire_time, status, error)
            except Exception:
                log.warning("job %s: cannot record its end", job.id, exc_info=True)
        return True


def build_jobs(
    settings: Settings,
    *,
    store: Store | None,
    inventory: InventoryService,
    generator: Generator,
    sinks: Mapping[str, ReportSink],
    router: LocalRouter | None = None,
) -> list[Job]:
    """The jobs the settings ask for, as plain async functions over the app's parts."""
    from core.forecast import PrePuller

    jobs: list[Job] = []
    if store is None:
        return jobs  # pre-pull forecasts and reports read the usage history
    puller = PrePuller(settings, store, inventory, generator)
    if settings.prepull_enabled and settings.prepull_cron:

        async def prepull() -> None:
            await puller.run()

        jobs.append(Job("prepull", settings.prepull_cron, prepull, setting="prepull_cron"))
    if settings.prewarm_cron:

        async def prewarm() -> None:
            await puller.prewarm()

        jobs.append(Job("prewarm", settings.prewarm_cron, prewarm, setting="prewarm_cron"))
    if settings.report_channels and settings.report_cron:

        async def report() -> None:
            await post_report(settings, store, sinks)

        jobs.append(Job("report", settings.report_cron, report, setting="report_cron"))
    if settings.train_router_cron:

        async def train_router() -> None:
            from core.routing.distill import nightly

            await nightly(settings, store, router)

        jobs.append(
            Job("train_router", settings.train_router_cron, train_router, setting="train_router_cron")
        )
    return jobs


async def post_report(settings: Settings, store: Store, sinks: Mapping[str, ReportSink]) -> int:
    """Build the report for the last `report_since_days` and post it to every configured channel
    whose platform is running; returns how many channels got it."""
    from core.reports import report_for

    text, png = await report_for(store, timedelta(days=settings.report_since_days))
    posted = 0
    for target in settings.report_channels:
        platform, _, channel = target.partition(":")
        sink = sinks.get(platform)
        if sink is None:
            log.warning("report channel %s: %s is not running", target, platform)
            continue
        try:
            await sink.post_report(channel, text, png)
            posted += 1
        except Exception:
            log.warning("could not post the report to %s", target, exc_info=True)
    return posted
