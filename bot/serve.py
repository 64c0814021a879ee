"""`metarouter serve`: every configured platform on one event loop, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any, Protocol

from bot.app import App, build_app
from bot.console import Console
from bot.http import HealthCheck, HealthInfo, HttpServer
from core.config import Settings
from core.metrics import Metrics
from core.recovery import Notify, Recovery
from core.routing.distill import watch_router
from core.scheduling import JobCounters, Scheduler, build_jobs
from core.store import UnfinishedAnswer

log = logging.getLogger(__name__)

# CONTRACT.md: exit within 30 s in the middle of answers; leave room for closing the database.
DRAIN_S = 25.0


class Adapter(Protocol):
    async def start(self) -> None: ...
    async def close(self, grace_s: float = ...) -> None: ...


def platform_adapters(settings: Settings, app: App, http: HttpServer) -> list[Adapter]:
    """One adapter per platform whose credentials are set. Built before the HTTP listener starts,
    because Slack's HTTP mode adds its route to it."""
    adapters: list[Adapter] = []
    if settings.slack_bot_token is not None:
        from bot.slack.app import SlackAdapter

        adapters.append(SlackAdapter(settings, app.service, http))
    if settings.discord_bot_token is not None:
        from bot.discord.client import DiscordAdapter

        adapters.append(DiscordAdapter(settings, app.service))
    return adapters


async def serve(settings: Settings) -> int:
    app = await build_app(settings, outage_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    http = HttpServer(settings)
    adapters = platform_adapters(settings, app, http)
    counters = JobCounters()
    http.ops(health_checks(app, adapters), Metrics(app.store, counters), info=buffer_info(app))
    sinks = {
        type(a).__name__.removesuffix("Adapter").lower(): a for a in adapters if hasattr(a, "post_report")
    }
    scheduler: Scheduler | None = None
    recovery: Recovery | None = None
    started: list[Adapter] = []
    watcher: asyncio.Task[None] | None = None
    if app.store is not None and settings.router_reload_s > 0:
        # another replica's nightly run, or `metarouter train-router`, may activate a new version
        watcher = asyncio.create_task(
            watch_router(app.store, app.local_router, settings.router_reload_s), name="router-versions"
        )
    try:
        await _start_http(http, slack_http=bool(settings.slack_bot_token and not settings.slack_app_token))
        for adapter in adapters:
            await adapter.start()
            started.append(adapter)
        if app.store is not None:
            # after the adapters: answers a stopped process left are edited on their platform
            recovery = Recovery(
                app.store, heartbeat_s=settings.replica_heartbeat_s, notify=_notifier(started)
            )
            await recovery.start()
        if settings.scheduler_enabled:
            svc = app.service
            jobs = build_jobs(
                settings,
                store=app.store,
                inventory=svc.inventory,
                generator=svc.generator,
                sinks=sinks,  # type: ignore[arg-type]
                router=app.local_router,
            )
            scheduler = Scheduler(
                app.store,
                jobs,
                timezone=settings.scheduler_timezone,
                misfire_grace_s=settings.misfire_grace_s,
                counters=counters,
            )
            await scheduler.start()
        if adapters:
            log.info("serving on %d platform(s)", len(adapters))
            await stop.wait()
        else:
            await _console(app, stop)
    finally:
        if watcher is not None:
            watcher.cancel()
        # together, so two busy platforms (and a job mid-run) still finish within the contract's 30 s
        closing = [a.close(grace_s=DRAIN_S) for a in started]
        if scheduler is not None:
            closing.append(scheduler.close(grace_s=DRAIN_S))
        await asyncio.gather(*closing, return_exceptions=True)
        if recovery is not None:
            await recovery.close()
        await http.close()
        await app.close()
    return 0


def buffer_info(app: App) -> HealthInfo | None:
    """/healthz shows how many database writes wait for the database (an outage loses none)."""
    store = app.store
    if store is None:
        return None

    def info() -> dict[str, Any]:
        b = store.buffer_state()
        oldest = b.oldest.isoformat() if b.oldest else None
        return {
            "database_buffer": {
                "pending": b.pending,
                "dropped": b.dropped,
                "failed": b.failed,
                "oldest": oldest,
            }
        }

    return info


def _notifier(adapters: list[Adapter]) -> Notify:
    """Hands each platform's interrupted answers to its adapter, which marks them in the chat."""
    by_platform = {
        type(a).__name__.removesuffix("Adapter").lower(): a
        for a in adapters
        if hasattr(a, "mark_interrupted")
    }

    async def notify(answers: list[UnfinishedAnswer]) -> None:
        for platform, adapter in by_platform.items():
            mine = [a for a in answers if a.messages and a.messages[0].platform == platform]
            if mine:
                await adapter.mark_interrupted(mine)  # type: ignore[attr-defined]

    return notify


async def _start_http(http: HttpServer, *, slack_http: bool) -> None:
    """Health and metrics are worth a warning when the port is taken; Slack's Events API needs it."""
    try:
        await http.start()
    except OSError as exc:
        if slack_http:
            raise
        log.warning("no /healthz and /metrics: cannot listen on port %s (%s)", http.settings.http_port, exc)


def health_checks(app: App, adapters: list[Adapter]) -> list[HealthCheck]:
    """What /healthz reports: the database, each Ollama host, each platform."""
    checks: list[HealthCheck] = []
    store = app.store
    if store is not None:

        async def database() -> dict[str, bool]:
            return {"database": await store.ping()}

        checks.append(database)
    inventory = app.service.inventory

    async def ollama() -> dict[str, bool]:
        inv = await inventory.snapshot(refresh=True)
        return {f"ollama {h}": h not in inv.hosts_down for h in inv.hosts}

    checks.append(ollama)
    for adapter in adapters:
        name = type(adapter).__name__.removesuffix("Adapter").lower()
        checks.append(_platform_check(name, adapter))
    return checks


def _platform_check(name: str, adapter: Adapter) -> HealthCheck:
    """Slack in Socket Mode: its websocket; Discord: its gateway session; otherwise: running."""

    async def check() -> dict[str, bool]:
        if getattr(adapter, "closing", False):
            return {name: False}
        handler = getattr(adapter, "handler", None)  # Slack Socket Mode
        if handler is not None:
            return {name: await handler.client.is_connected()}
        client = getattr(adapter, "client", None)
        if name == "discord" and client is not None:
            return {name: client.is_ready() and not client.is_closed()}
        return {name: True}  # Slack over HTTP: Slack calls us; nothing stays connected

    return check


async def _console(app: App, stop: asyncio.Event) -> None:
    log.info("serving on the terminal console")
    task = asyncio.create_task(Console(app.service).run(stop=stop), name="console")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() and not task.done():
            # An answer in flight gets time to finish; then whatever remains is cancelled.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, DRAIN_S)
        elif task.done():
            task.result()
    finally:
        stopper.cancel()
