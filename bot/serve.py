"""`metarouter serve`: every configured platform on one event loop, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Protocol

from bot.app import App, build_app
from bot.console import Console
from bot.http import HttpServer
from core.config import Settings

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
    app = await build_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    if app.store is not None:
        # Answers a previous run left streaming will never finish: say so rather than leave them open.
        # (With several replicas this needs the owner's liveness too: the reliability issue.)
        left = await app.store.unfinished_answers()
        if left:
            await app.store.mark_incomplete(a.answer_id for a in left)
            log.warning("%d answers interrupted by the last shutdown were marked incomplete", len(left))

    http = HttpServer(settings)
    adapters = platform_adapters(settings, app, http)
    started: list[Adapter] = []
    try:
        if http.has_routes:
            await http.start()
        for adapter in adapters:
            await adapter.start()
            started.append(adapter)
        if adapters:
            log.info("serving on %d platform(s)", len(adapters))
            await stop.wait()
        else:
            await _console(app, stop)
    finally:
        # together, so two busy platforms still finish within the contract's 30 s
        await asyncio.gather(*(a.close(grace_s=DRAIN_S) for a in started), return_exceptions=True)
        await http.close()
        await app.close()
    return 0


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
