"""`metarouter serve`: every configured platform on one event loop, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from bot.app import build_app
from bot.console import Console
from core.config import Settings

log = logging.getLogger(__name__)

# CONTRACT.md: exit within 30 s in the middle of answers; leave room for closing the database.
DRAIN_S = 25.0


async def serve(settings: Settings) -> int:
    app = await build_app(settings)
    if app.store is not None:
        # Answers a previous run left streaming will never finish: say so rather than leave them open.
        # (With several replicas this needs the owner's liveness too: the reliability issue.)
        left = await app.store.unfinished_answers()
        if left:
            await app.store.mark_incomplete(a.answer_id for a in left)
            log.warning("%d answers interrupted by the last shutdown were marked incomplete", len(left))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    platforms = [
        name
        for name, token in (("Slack", settings.slack_bot_token), ("Discord", settings.discord_bot_token))
        if token is not None
    ]
    if platforms:
        # The platform adapters are separate issues; until they land, say so instead of going silent.
        print(
            f"metarouter: {' and '.join(platforms)} support is not in this version yet; "
            "serving on the terminal console.",
            file=sys.stderr,
        )
    log.info("serving on the terminal console")
    console = Console(app.service)
    task = asyncio.create_task(console.run(stop=stop), name="console")
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
        await app.close()
    return 0
