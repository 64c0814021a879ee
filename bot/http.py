"""The one HTTP listener on METAROUTER_HTTP_PORT: Slack's Events API, /healthz and /metrics share it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.config import Settings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Adds an endpoint; call before start()."""
        self.app.router.add_route(method, path, handler)

    @property
    def has_routes(self) -> bool:
        return bool(self.app.router.routes())

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("HTTP endpoint on %s:%s", self.settings.http_host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
