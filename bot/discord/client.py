"""The Discord adapter: a discord.py client wired to the core's ChatService.

    adapter = DiscordAdapter(settings, app.service)
    await adapter.start()          # logs in, syncs the slash commands, connects (as a task)
    ...
    await adapter.close()          # lets answers in progress finish, then disconnects

Composition happens in `setup_hook` (inside `login()`, before the gateway connects): the gateway URL
from `GET /gateway/bot` when DISCORD_API_URL points elsewhere, the persistent answer buttons, the
slash commands and their sync.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from bot.common.splitting import split_text
from bot.common.streaming import DISCORD_LIMITS
from bot.discord import handlers, render
from bot.discord.reply import ChannelPacer
from bot.discord.views import PERSISTENT_ITEMS
from core.config import Settings
from core.errors import ConfigError
from core.service import ChatService
from core.store import UnfinishedAnswer

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://discord.com/api/v10"
RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # logging in again while Discord is unreachable
_UNREACHABLE = (OSError, aiohttp.ClientError, TimeoutError, discord.HTTPException, discord.GatewayNotFound)
DRAIN_S = 20.0  # serve's own deadline (CONTRACT: 30 s in the middle of answers) leaves room to close


def intents() -> discord.Intents:
    """What the bot needs: guild and DM messages with their content (to read a mention's question and
    the conversation), reactions (ratings) and guilds (channels, threads). Not members: no chunking."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.message_content = True  # privileged: enable it in the Developer Portal
    wanted.guild_reactions = True
    wanted.dm_reactions = True
    return wanted


class MetaRouterClient(discord.Client):
    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        # the bot never joins voice: discord.py's warnings about voice libraries would only alarm operators
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(
            intents=intents(),
            allowed_mentions=render.ANSWER_MENTIONS,
            chunk_guilds_at_startup=False,
            **options,
        )
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        await self.adapter.compose()

    async def on_message(self, message: discord.Message) -> None:
        await handlers.on_message(self.adapter, message)

    async def on_raw_reaction_add(self, event: discord.RawReactionActionEvent) -> None:
        await handlers.on_reaction(self.adapter, event, added=True)

    async def on_raw_reaction_remove(self, event: discord.RawReactionActionEvent) -> None:
        await handlers.on_reaction(self.adapter, event, added=False)


class DiscordAdapter:
    """Runs the bot on Discord for one ChatService. Also a `core.chat.ReportSink`."""

    def __init__(self, settings: Settings, service: ChatService, **client_options: Any) -> None:
        """`client_options` go to discord.Client (tests pass guild_ready_timeout)."""
        if settings.discord_bot_token is None:
            raise ConfigError("DISCORD_BOT_TOKEN: not set")
        self.settings = settings
        self.service = service
        self.client = MetaRouterClient(self, **client_options)
        self.limits = replace(DISCORD_LIMITS, interval_s=settings.discord_edit_interval_s)
        self.pacer = ChannelPacer(self.limits.interval_s)
        self.closing = False
        self._answers: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Logs in and connects in a background task. A rejected token raises ConfigError; an
        unreachable Discord does not stop the process: logging in is retried in the background."""
        # process-wide in discord.py: a Route builds its URL from this class attribute
        discord.http.Route.BASE = self.settings.discord_api_url.rstrip("/")
        try:
            await self._login()
        except _UNREACHABLE as exc:
            log.warning("Discord is unreachable (%s); retrying in the background", type(exc).__name__)
            self._task = asyncio.create_task(self._login_later(), name="discord-gateway")
            return
        self._task = asyncio.create_task(self._connect(), name="discord-gateway")

    async def _login(self) -> None:
        assert self.settings.discord_bot_token is not None
        try:
            await self.client.login(self.settings.discord_bot_token.get_secret_value())
        except discord.LoginFailure:
            await self.client.close()
            raise ConfigError("DISCORD_BOT_TOKEN: Discord rejected the token") from None

    async def _login_later(self) -> None:
        for delay in itertools.chain(RETRY_DELAYS_S, itertools.repeat(RETRY_DELAYS_S[-1])):
            await asyncio.sleep(delay)
            if self.closing:
                return
            try:
                await self._login()
                break
            except ConfigError as exc:
                log.error("%s; the bot stays offline on Discord", exc)
                return
            except _UNREACHABLE as exc:
                log.info("Discord still unreachable (%s)", type(exc).__name__)
        await self._connect()

    async def _connect(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            log.error(
                "Discord refused the connection: enable the Message Content intent for the bot in the "
                "Developer Portal (Bot → Privileged Gateway Intents)"
            )
        except Exception:
            if not self.closing:
                log.exception("the Discord connection ended; the bot is offline on Discord")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The gateway task: done means the bot is offline on Discord."""
        return self._task

    async def compose(self) -> None:
        """setup_hook: runs inside login(), before the gateway connection."""
        if self.settings.discord_api_url.rstrip("/") != DEFAULT_API_URL:
            # discord.Client connects to a built-in gateway; a different API has its own
            _, url, _ = await self.client.http.get_bot_gateway()
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        self.client.add_dynamic_items(*PERSISTENT_ITEMS)  # answer buttons work across restarts
        tree = self.client.tree
        for command in handlers.commands(self):
            tree.add_command(command, override=True)  # a login retried after a failure runs this again
        tree.error(handlers.on_command_error)
        try:
            if self.settings.discord_guild_ids:
                for gid in self.settings.discord_guild_ids:
                    guild = discord.Object(int(gid))
                    tree.copy_global_to(guild=guild)
                    await tree.sync(guild=guild)
            else:
                await tree.sync()
        except discord.HTTPException:
            log.warning("could not sync the slash commands; the previous ones stay", exc_info=True)

    async def mark_interrupted(self, answers: list[UnfinishedAnswer]) -> None:
        """Answers a stopped process left half-written: the last message of each keeps its text and
        ends with a note asking to mention the bot again (serve calls this at start-up, core.recovery)."""
        for a in answers:
            last = a.messages[-1]
            try:
                channel = self.client.get_partial_messageable(int(last.channel_id))
                message = await channel.fetch_message(int(last.message_id))
                note = render.RESTART_NOTE
                body = message.content[: render.MESSAGE_LIMIT - len(note) - 2]
                await message.edit(content=f"{body}\n\n{note}", allowed_mentions=render.NO_MENTIONS)
            except Exception:
                log.warning("could not mark an interrupted answer in %s", last.channel_id, exc_info=True)

    async def wait_ready(self, within_s: float = 10.0) -> None:
        await asyncio.wait_for(self.client.wait_until_ready(), within_s)

    async def close(self, grace_s: float = DRAIN_S) -> None:
        """Stops taking questions, lets answers in progress finish for up to `grace_s`, then
        cancels the rest (each says under its text that it was cut short) and disconnects."""
        self.closing = True
        pending = {t for t in self._answers if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for t in late:
                t.cancel()
            if late:
                log.warning("%d Discord answers did not finish before shutdown", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        await self.client.close()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=2.0)
            self._task.cancel()  # still waiting to log in again
            await asyncio.gather(self._task, return_exceptions=True)

    # --- used by the handlers -------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Runs an answer as a task that close() waits for."""
        task = asyncio.create_task(coro, name=name)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    @property
    def in_flight(self) -> int:
        return sum(1 for t in self._answers if not t.done())

    def is_admin(self, user: discord.abc.User) -> bool:
        if str(user.id) in self.settings.discord_admin_user_ids:
            return True
        roles = getattr(user, "roles", [])  # a Member in a guild; a plain User in DMs has none
        return any(str(r.id) in self.settings.discord_admin_role_ids for r in roles)

    # --- core.chat.ReportSink -------------------------------------------------------------------
    async def post_report(self, channel_id: str, text: str, png: bytes | None = None) -> None:
        channel = self.client.get_channel(int(channel_id)) or await self.client.fetch_channel(int(channel_id))
        if not isinstance(channel, discord.abc.Messageable):
            raise ValueError(f"Discord channel {channel_id} cannot take messages")
        pieces = split_text(text, render.MESSAGE_LIMIT) or ["(empty report)"]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            file = discord.File(io.BytesIO(png), filename="report.png") if png and last else None
            if file is not None:
                await channel.send(piece, file=file, allowed_mentions=render.NO_MENTIONS)
            else:
                await channel.send(piece, allowed_mentions=render.NO_MENTIONS)
