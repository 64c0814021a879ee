"""The one HTTP listener on METAROUTER_HTTP_PORT: Slack's Events API, /healthz and /metrics share it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from core.config import Settings
from core.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# a dependency check: names ("database", "ollama http://...", "slack") -> up?
HealthCheck = Callable[[], Awaitable[dict[str, bool]]]
# more for the /healthz body (the database write buffer), read without waiting on anything
HealthInfo = Callable[[], dict[str, Any]]
CHECK_TIMEOUT_S = 5.0


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

    def ops(self, checks: list[HealthCheck], metrics: Metrics, info: HealthInfo | None = None) -> None:
        """/healthz and /metrics. /healthz is 200 whenever the process serves (the contract): a down
        dependency makes it "degraded" and is named, it does not make the process unhealthy."""

        async def healthz(_: web.Request) -> web.StreamResponse:
            results = await asyncio.gather(*(_run_check(c) for c in checks))
            state = {name: up for r in results for name, up in r.items()}
            down = sorted(n for n, up in state.items() if not up)
            body = {
                "status": "degraded" if down else "ok",
                "down": down,
                "checks": {n: "up" if up else "down" for n, up in sorted(state.items())},
            }
            if info is not None:
                body |= info()
            return web.json_response(body)

        async def metrics_(_: web.Request) -> web.StreamResponse:
            body = await metrics.render()
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

        self.route("GET", "/healthz", healthz)
        self.route("GET", "/metrics", metrics_)


async def _run_check(check: HealthCheck) -> dict[str, bool]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await check()
    except Exception:
        log.warning("health check failed", exc_info=True)
        name = getattr(check, "name", None) or getattr(check, "__name__", "check")
        return {name: False}
