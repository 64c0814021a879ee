"""Loopback Discord double (see PROTOCOLS.md section 4): the REST API and the gateway on 127.0.0.1.

The unmodified discord.py client logs in over REST (`/api/v10`), reads the gateway URL from
`GET /gateway/bot`, and connects to a real websocket here: HELLO, heartbeats, IDENTIFY → READY and
GUILD_CREATE, RECONNECT → RESUME with the missed dispatches replayed, INVALID_SESSION. A test plays the
people in the guild (`post`, `react`, `slash`, `click`) and reads what they would see: the channel's
messages as they stand (`visible`), every edit, interaction responses and their timing.

    async def test_x(discord_double):
        alice = discord_double.person("Alice")
        msg = await discord_double.post(discord_double.general, alice, "what is 2+2?", mention_bot=True)
        reply = await discord_double.wait_for(lambda: discord_double.replies_to(msg["id"]))

Like the real service it echoes the bot's own posts as MESSAGE_CREATE, applies `allowed_mentions` to
what a message pings, blanks `content` without the message-content intent, and answers 429 with the
`Via` header and `retry_after` body discord.py needs. `limit_channel_writes` adds per-channel rate
limits; `fail` injects one error response.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import WSMsgType, web

API = "/api/v10"
EPHEMERAL = 1 << 6
MESSAGE_CONTENT_INTENT = 1 << 15
ALL_PERMISSIONS = str((1 << 53) - 1)
_ids = itertools.count(1_300_000_000_000_000_000)
BODY = web.RequestKey("body", Any)
FILES = web.RequestKey("files", list)
LIMIT = web.RequestKey("limit", dict)


def snowflake() -> str:
    """Increasing ids, so sorting by id is sorting by time, as with real snowflakes."""
    return str(next(_ids))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py compares Content-Type literally: aiohttp's json_response adds "; charset=utf-8"
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON (payload_json for multipart), or None
    files: list[bytes]
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when the request arrived
    answered_at: float = 0.0  # when its response was ready


@dataclass
class Interaction:
    """One slash command or button press, and what the bot answered (to that one person, if ephemeral)."""

    id: str
    token: str
    payload: dict[str, Any]
    sent_at: float
    callbacks: list[Recorded] = field(default_factory=list)
    original: dict[str, Any] | None = None  # the response message, once there is one
    followups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def acked_after(self) -> float | None:
        """Seconds from dispatch to the first callback (Discord's deadline is 3 s)."""
        return self.callbacks[0].at - self.sent_at if self.callbacks else None

    @property
    def callback_types(self) -> list[int]:
        return [c.body["type"] for c in self.callbacks]

    def texts(self) -> list[str]:
        """Everything shown in answer: the response message and every follow-up, as they stand."""
        msgs = ([self.original] if self.original else []) + self.followups
        return [message_text(m) for m in msgs]


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int


def message_text(msg: dict[str, Any]) -> str:
    """What a reader sees of a message: its content, then its embeds' text."""
    parts = [msg.get("content") or ""]
    for e in msg.get("embeds") or []:
        parts += [(e.get("author") or {}).get("name") or "", e.get("title") or "", e.get("description") or ""]
        parts += [f"{f.get('name', '')} {f.get('value', '')}" for f in e.get("fields") or []]
        parts.append((e.get("footer") or {}).get("text") or "")
    return "\n".join(p for p in parts if p)


def buttons(msg: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for row in msg.get("components") or [] for c in row.get("components", []) if c.get("type") == 2]


@dataclass
class DiscordDouble:
    token: str = "test-discord-token"
    heartbeat_ms: int = 41250

    requests: list[Recorded] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> message, channel posts
    ephemeral: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> message, one viewer
    interactions: dict[str, Interaction] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: list[dict[str, Any]] = field(default_factory=list)  # the bot's messages it deleted
    reactions: list[tuple[str, str, str]] = field(default_factory=list)  # bot's own: (channel, msg, emoji)
    commands: dict[str | None, list[dict[str, Any]]] = field(default_factory=dict)  # guild id -> synced
    identifies: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    resumed_at: list[float] = field(default_factory=list)  # time.monotonic() of each RESUME
    rate_limit_hits: int = 0

    _failures: list[_Failure] = field(default_factory=list)
    _delays: list[tuple[str, re.Pattern[str], float]] = field(default_factory=list)
    _write_limit: tuple[int, float] | None = None
    _writes: dict[str, list[float]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _ws: web.WebSocketResponse | None = None
    _sockets: set[web.WebSocketResponse] = field(default_factory=set)
    _session_id: str | None = None
    _seq: int = 0
    _log: list[dict[str, Any]] = field(default_factory=list)
    _intents: int = 0
    _replay_from: int | None = None

    def __post_init__(self) -> None:
        self.app_id = snowflake()
        self.bot = self._user("MetaRouter", bot=True, user_id=self.app_id)
        self.owner = self.person("Owner")
        self.guild_id = snowflake()
        self.general = self.add_channel("general")
        self.random = self.add_channel("random")
        self.admin_role = snowflake()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> DiscordDouble:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 2**20)
        app.router.add_get("/gateway", self._gateway)
        r = app.router
        r.add_get(API + "/users/@me", self._me)
        r.add_get(API + "/oauth2/applications/@me", self._application)
        r.add_get(API + "/gateway/bot", self._gateway_bot)
        r.add_put(API + "/applications/{app}/commands", self._sync)
        r.add_put(API + "/applications/{app}/guilds/{guild}/commands", self._sync)
        r.add_get(API + "/channels/{channel}", self._get_channel)
        r.add_get(API + "/channels/{channel}/messages", self._history)
        r.add_post(API + "/channels/{channel}/messages", self._create_message)
        r.add_get(API + "/channels/{channel}/messages/{message}", self._get_message)
        r.add_patch(API + "/channels/{channel}/messages/{message}", self._edit_message)
        r.add_delete(API + "/channels/{channel}/messages/{message}", self._delete_message)
        r.add_put(API + "/channels/{channel}/messages/{message}/reactions/{emoji}/@me", self._add_reaction)
        r.add_post(API + "/channels/{channel}/messages/{message}/threads", self._create_thread)
        r.add_post(API + "/channels/{channel}/typing", self._typing)
        r.add_post(API + "/interactions/{id}/{token}/callback", self._callback)
        r.add_post(API + "/webhooks/{app}/{token}", self._followup)
        r.add_get(API + "/webhooks/{app}/{token}/messages/{message}", self._get_webhook_message)
        r.add_patch(API + "/webhooks/{app}/{token}/messages/{message}", self._edit_webhook_message)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)  # a restart keeps the address
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Discord goes away: open gateway connections close and the port refuses connections."""
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def api_url(self) -> str:
        """What DISCORD_API_URL is set to."""
        return f"http://127.0.0.1:{self._port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    # --- the guild and its people ---------------------------------------------------------------
    def _user(self, name: str, *, bot: bool = False, user_id: str | None = None) -> dict[str, Any]:
        user = {
            "id": user_id or snowflake(),
            "username": name.lower(),
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
        }
        if bot:
            user["bot"] = True
        self.users[user["id"]] = user
        return user

    def person(self, name: str, *, bot: bool = False, roles: tuple[str, ...] = ()) -> dict[str, Any]:
        user = self._user(name, bot=bot)
        user["_roles"] = list(roles)
        return user

    def add_channel(self, name: str) -> str:
        cid = snowflake()
        self.channels[cid] = {
            "id": cid,
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        return cid

    def dm_channel(self, person: dict[str, Any]) -> str:
        cid = snowflake()
        self.channels[cid] = {"id": cid, "type": 1, "recipients": [_public(person)], "last_message_id": None}
        return cid

    def _member(self, user: dict[str, Any], *, with_user: bool = False) -> dict[str, Any]:
        member = {
            "roles": list(user.get("_roles", [])),
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }
        if with_user:
            member["user"] = _public(user)
        return member

    def _guild_create(self) -> dict[str, Any]:
        guild_channels = [c for c in self.channels.values() if c["type"] == 0]
        return {
            "id": self.guild_id,
            "name": "Test guild",
            "icon": None,
            "owner_id": self.owner["id"],
            "unavailable": False,
            "member_count": len(self.users),
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                {
                    "id": rid,
                    "name": name,
                    "permissions": ALL_PERMISSIONS if rid == self.guild_id else "0",
                    "position": pos,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": True,
                    "flags": 0,
                }
                for pos, (rid, name) in enumerate([(self.guild_id, "@everyone"), (self.admin_role, "admins")])
            ],
            "channels": [{k: v for k, v in c.items() if k != "guild_id"} for c in guild_channels],
            "threads": [],
            "members": [self._member(self.bot, with_user=True)],
            "voice_states": [],
            "presences": [],
            "joined_at": "2026-01-01T00:00:00+00:00",
        }

    # --- what people do -------------------------------------------------------------------------
    def make_message(
        self,
        channel_id: str,
        author: dict[str, Any],
        content: str,
        *,
        mention_bot: bool = False,
        reply_to: str | None = None,
        embeds: list[dict[str, Any]] | None = None,
        files: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A message that exists in the channel without the bot having been told (history).
        `files` names attachments (their content is never served)."""
        if mention_bot and f"<@{self.bot['id']}>" not in content:
            content = f"<@{self.bot['id']}> {content}"
        msg = self._message(channel_id, author, content, reply_to=reply_to, embeds=embeds)
        for name in files:
            aid = snowflake()
            url = f"{self.api_url}/attachments/{aid}/{name}"
            attachment = {"id": aid, "filename": name, "size": 1234, "url": url, "proxy_url": url}
            msg["attachments"].append(attachment)
        mentioned = set(re.findall(r"<@!?(\d+)>", content))
        msg["mentions"] = [_public(self.users[u]) for u in mentioned if u in self.users]
        msg["mention_roles"] = [r for r in re.findall(r"<@&(\d+)>", content)]
        msg["mention_everyone"] = "@everyone" in content or "@here" in content
        self.messages[msg["id"]] = msg
        return msg

    async def post(self, channel_id: str, author: dict[str, Any], content: str, **kw: Any) -> dict[str, Any]:
        """A person posts: the message is stored and dispatched as MESSAGE_CREATE."""
        msg = self.make_message(channel_id, author, content, **kw)
        await self.dispatch("MESSAGE_CREATE", self._for_gateway(msg))
        return msg

    async def react(
        self, channel_id: str, message_id: str, person: dict[str, Any], emoji: str, *, remove: bool = False
    ) -> None:
        data: dict[str, Any] = {
            "user_id": person["id"],
            "channel_id": channel_id,
            "message_id": message_id,
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if self.channels.get(channel_id, {}).get("guild_id"):
            data["guild_id"] = self.guild_id
            if not remove:
                data["member"] = self._member(person, with_user=True)
        await self.dispatch("MESSAGE_REACTION_REMOVE" if remove else "MESSAGE_REACTION_ADD", data)

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        person: dict[str, Any],
        channel_id: str | None = None,
        guild_command: bool = False,
    ) -> Interaction:
        data: dict[str, Any] = {
            "id": snowflake(),
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()],
        }
        if guild_command:
            data["guild_id"] = self.guild_id
        return await self._interact(2, data, person, channel_id or self.general)

    async def click(self, message: dict[str, Any], custom_id: str, *, person: dict[str, Any]) -> Interaction:
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(3, data, person, message["channel_id"], message=message)

    async def _interact(
        self,
        kind: int,
        data: dict[str, Any],
        person: dict[str, Any],
        channel_id: str,
        message: dict[str, Any] | None = None,
    ) -> Interaction:
        channel = self.channels[channel_id]
        payload: dict[str, Any] = {
            "id": snowflake(),
            "application_id": self.app_id,
            "type": kind,
            "token": secrets.token_urlsafe(24),
            "version": 1,
            "channel_id": channel_id,
            "channel": {k: v for k, v in channel.items() if k != "recipients"},
            "app_permissions": ALL_PERMISSIONS,
            "locale": "en-US",
            "attachment_size_limit": 10 * 2**20,
            "entitlements": [],
            "data": data,
        }
        if channel.get("guild_id"):
            member = self._member(person, with_user=True)
            member["permissions"] = ALL_PERMISSIONS
            payload |= {
                "guild_id": self.guild_id,
                "guild_locale": "en-US",
                "member": member,
                "authorizing_integration_owners": {"0": self.guild_id},
                "context": 0,
            }
        else:
            payload |= {
                "user": _public(person),
                "authorizing_integration_owners": {"1": person["id"]},
                "context": 1,
            }
        if message is not None:
            payload["message"] = self._for_gateway(message)
        interaction = Interaction(payload["id"], payload["token"], payload, time.monotonic())
        self.interactions[interaction.id] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    # --- what the bot did, as people see it ---------------------------------------------------------
    def visible(self, channel_id: str) -> list[dict[str, Any]]:
        """The channel's messages as they stand now, oldest first."""
        return sorted(
            (m for m in self.messages.values() if m["channel_id"] == channel_id), key=lambda m: int(m["id"])
        )

    def by_bot(self, channel_id: str | None = None) -> list[dict[str, Any]]:
        msgs = sorted(self.messages.values(), key=lambda m: int(m["id"]))
        return [
            m for m in msgs if m["author"]["id"] == self.bot["id"] and channel_id in (None, m["channel_id"])
        ]

    def replies_to(self, message_id: str) -> list[dict[str, Any]]:
        return [
            m for m in self.by_bot() if (m.get("message_reference") or {}).get("message_id") == message_id
        ]

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        rx = re.compile(pattern)
        return [r for r in self.requests if r.method == method and rx.search(r.path)]

    def edits_of(self, message_id: str) -> list[Recorded]:
        return [
            r for r in self.requests if r.method == "PATCH" and r.path.endswith(f"/messages/{message_id}")
        ]

    async def wait_for(self, cond: Callable[[], Any], within: float = 5.0) -> Any:
        """Polls `cond` until it returns something truthy; fails the test after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {cond}")
            await asyncio.sleep(0.02)

    # --- faults ---------------------------------------------------------------------------------
    def fail(
        self,
        method: str,
        path_pattern: str,
        status: int = 500,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` matching requests get `status` (a 429 gets Via and retry_after by default)."""
        if status == 429:
            body = body or {"message": "You are being rate limited.", "retry_after": 0.3, "global": False}
            headers = {"Via": "1.1 google", **(headers or {})}
        body = body or {"message": "500: Internal Server Error", "code": 0}
        self._failures.append(_Failure(method, re.compile(path_pattern), status, body, headers or {}, times))

    def slow(self, method: str, path_pattern: str, seconds: float) -> None:
        """Matching requests are answered after `seconds` (a slow API, a long way round the world)."""
        self._delays.append((method, re.compile(path_pattern), seconds))

    def limit_channel_writes(self, count: int, per_s: float) -> None:
        """Like Discord's per-channel message limits: `count` posts or edits per `per_s` seconds."""
        self._write_limit = (count, per_s)

    async def reconnect(self) -> None:
        """Opcode 7: the client must reconnect to resume_gateway_url and RESUME."""
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.send_str(json.dumps({"op": 7, "d": None, "s": None, "t": None}))

    async def drop(self, code: int = 4000) -> None:
        """The connection breaks without a word from the gateway (a network blip, a gateway restart):
        the client has to notice, reconnect and RESUME; dispatches meanwhile wait in the log."""
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close(code=code, message=b"connection lost")

    def replay_from(self, seq: int) -> None:
        """On the next RESUME replay from `seq` (inclusive) instead of after the client's sequence,
        as a gateway that lost track does: the client then sees some dispatches twice."""
        self._replay_from = seq

    @property
    def seq(self) -> int:
        return self._seq

    # --- gateway --------------------------------------------------------------------------------
    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Sends a dispatch now, or keeps it for the RESUME replay while the client is away."""
        self._seq += 1
        payload = {"op": 0, "t": event, "s": self._seq, "d": data}
        self._log.append(payload)
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await ws.send_str(json.dumps(payload))
            except ConnectionError:
                pass  # the client resumes and gets it from the log

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)

        async def send(payload: dict[str, Any]) -> None:
            await ws.send_str(json.dumps(payload))

        try:
            await send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_ms}, "s": None, "t": None})
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                p = json.loads(frame.data)
                op, d = p.get("op"), p.get("d")
                if op == 1:
                    await send({"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    await self._identify(ws, d)
                elif op == 6:
                    await self._resume(ws, d)
        finally:
            self._sockets.discard(ws)
            if self._ws is ws:
                self._ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies.append(d)
        self._intents = int(d.get("intents") or 0)
        self._session_id = secrets.token_hex(16)
        self._log.clear()
        self._seq = 0
        self._ws = ws
        await self.dispatch(
            "READY",
            {
                "v": 10,
                "user": _public(self.bot) | {"verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": self.guild_id, "unavailable": True}],
                "session_id": self._session_id,
                "resume_gateway_url": self.gateway_url,
                "application": {"id": self.app_id, "flags": 0},
                "private_channels": [],
            },
        )
        await self.dispatch("GUILD_CREATE", self._guild_create())

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]) -> None:
        if d.get("token") != self.token or d.get("session_id") != self._session_id:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return
        self.resumes.append(d)
        self.resumed_at.append(time.monotonic())
        start = self._replay_from if self._replay_from is not None else int(d.get("seq") or 0) + 1
        self._replay_from = None
        self._ws = ws
        for payload in [p for p in self._log if p["s"] >= start]:
            await ws.send_str(json.dumps(payload))
        await self.dispatch("RESUMED", {})

    # --- REST plumbing --------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)
        body: Any = None
        files: list[bytes] = []
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            for name, value in form.items():
                if name == "payload_json":
                    body = json.loads(str(value))
                elif hasattr(value, "file"):
                    files.append(value.file.read())
        else:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        rec = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body, files)
        self.requests.append(rec)
        request[BODY] = body if body is not None else {}
        request[FILES] = files
        for method, pattern, seconds in self._delays:
            if method == request.method and pattern.search(request.path):
                await asyncio.sleep(seconds)
        response = await self._injected(request) or await self._rate_limited(request)
        if response is None:
            interaction_route = request.path.startswith((API + "/interactions/", API + "/webhooks/"))
            if not interaction_route and request.headers.get("Authorization") != f"Bot {self.token}":
                response = _json({"message": "401: Unauthorized", "code": 0}, 401)
            else:
                response = await handler(request)
        if LIMIT in request:
            response.headers.update(request[LIMIT])
        rec.status = response.status
        rec.answered_at = time.monotonic()
        return response

    async def _injected(self, request: web.Request) -> web.Response | None:
        for f in self._failures:
            if f.times > 0 and f.method == request.method and f.pattern.search(request.path):
                f.times -= 1
                if f.status == 429:
                    self.rate_limit_hits += 1
                return _json(f.body, f.status, f.headers)
        return None

    async def _rate_limited(self, request: web.Request) -> web.Response | None:
        m = re.match(rf"{API}/channels/(\d+)/messages", request.path)
        if self._write_limit is None or m is None or request.method not in ("POST", "PATCH"):
            return None
        count, per_s = self._write_limit
        now = time.monotonic()
        window = [t for t in self._writes.get(m.group(1), []) if now - t < per_s]
        self._writes[m.group(1)] = window
        if len(window) >= count:
            self.rate_limit_hits += 1
            retry = round(per_s - (now - window[0]), 3)
            body = {"message": "You are being rate limited.", "retry_after": retry, "global": False}
            return _json(body, 429, {"Via": "1.1 google"} | self._bucket_headers(window, count, per_s, now))
        window.append(now)
        request[LIMIT] = self._bucket_headers(window, count, per_s, now)
        return None

    @staticmethod
    def _bucket_headers(window: list[float], count: int, per_s: float, now: float) -> dict[str, str]:
        """What Discord tells a client about its bucket. One hash for posts and edits: they share it,
        and discord.py then shares its own limiter between the two routes, as with the real service."""
        return {
            "X-RateLimit-Bucket": "channel-messages",
            "X-RateLimit-Limit": str(count),
            "X-RateLimit-Remaining": str(max(0, count - len(window))),
            "X-RateLimit-Reset-After": f"{max(0.001, per_s - (now - window[0])):.3f}",
        }

    def _message(
        self,
        channel_id: str,
        author: dict[str, Any],
        content: str,
        *,
        reply_to: str | None = None,
        embeds: list[dict[str, Any]] | None = None,
        components: list[dict[str, Any]] | None = None,
        flags: int = 0,
    ) -> dict[str, Any]:
        channel = self.channels.get(channel_id, {})
        msg: dict[str, Any] = {
            "id": snowflake(),
            "channel_id": channel_id,
            "author": _public(author),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": embeds or [],
            "pinned": False,
            "type": 0,
            "flags": flags,
            "components": components or [],
        }
        if channel.get("guild_id"):
            msg["guild_id"] = self.guild_id
            msg["member"] = self._member(author)
        if reply_to is not None:
            ref = self.messages[reply_to]
            msg["type"] = 19
            msg["message_reference"] = {
                "type": 0,
                "message_id": reply_to,
                "channel_id": ref["channel_id"],
                **({"guild_id": self.guild_id} if channel.get("guild_id") else {}),
            }
        if channel_id in self.channels:
            channel["last_message_id"] = msg["id"]
        return msg

    def _for_gateway(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The message as MESSAGE_CREATE carries it: one level of referenced_message, content blanked
        without the message-content intent (except where the bot is mentioned or it is a DM)."""
        out = dict(msg)
        ref = msg.get("message_reference")
        if ref:
            target = self.messages.get(ref["message_id"])
            out["referenced_message"] = (
                {k: v for k, v in target.items() if k != "referenced_message"} if target else None
            )
        if not self._intents & MESSAGE_CONTENT_INTENT and msg["author"]["id"] != self.bot["id"]:
            mentioned = any(u["id"] == self.bot["id"] for u in msg.get("mentions", []))
            if not mentioned and msg.get("guild_id"):
                out["content"] = ""
        return out

    def _apply_mentions(self, msg: dict[str, Any], allowed: dict[str, Any] | None) -> None:
        """Who a bot's message pings, by Discord's allowed_mentions rules (no field: everything)."""
        content = msg["content"]
        parse = ["everyone", "roles", "users"] if allowed is None else allowed.get("parse", [])
        users = set(re.findall(r"<@!?(\d+)>", content))
        roles = set(re.findall(r"<@&(\d+)>", content))
        allowed_users = set((allowed or {}).get("users", []))
        allowed_roles = set((allowed or {}).get("roles", []))
        pinged = {u for u in users if "users" in parse or u in allowed_users}
        ref = msg.get("message_reference")
        if ref and (allowed is None or allowed.get("replied_user")):
            target = self.messages.get(ref["message_id"])
            if target:
                pinged.add(target["author"]["id"])
        msg["mentions"] = [_public(self.users[u]) for u in pinged if u in self.users]
        msg["mention_roles"] = [r for r in roles if "roles" in parse or r in allowed_roles]
        msg["mention_everyone"] = "everyone" in parse and ("@everyone" in content or "@here" in content)

    # --- REST endpoints -------------------------------------------------------------------------
    async def _me(self, request: web.Request) -> web.Response:
        return _json(_public(self.bot) | {"verified": True, "mfa_enabled": False, "flags": 0})

    async def _application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": self.app_id,
                "name": "MetaRouter",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": _public(self.owner),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _sync(self, request: web.Request) -> web.Response:
        guild = request.match_info.get("guild")
        synced = []
        for cmd in request[BODY]:
            item = {"id": snowflake(), "application_id": self.app_id, "version": snowflake(), "type": 1}
            item |= cmd
            if guild:
                item["guild_id"] = guild
            synced.append(item)
        self.commands[guild] = synced
        return _json(synced)

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self.channels.get(request.match_info["channel"])
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        return _json(channel)

    async def _history(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel"]
        limit = int(request.query.get("limit", "50"))
        before = request.query.get("before")
        msgs = [m for m in self.visible(cid) if before is None or int(m["id"]) < int(before)]
        return _json([self._for_gateway(m) for m in reversed(msgs[-limit:])])  # newest first

    async def _get_message(self, request: web.Request) -> web.Response:
        msg = self.messages.get(request.match_info["message"])
        if msg is None or msg["channel_id"] != request.match_info["channel"]:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        return _json(self._for_gateway(msg))

    async def _create_message(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel"]
        if cid not in self.channels:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        body = request[BODY]
        content = body.get("content") or ""
        if len(content) > 2000:
            return _json(_too_long(), 400)
        ref_field = body.get("message_reference") or {}
        ref = str(ref_field["message_id"]) if ref_field.get("message_id") is not None else None
        if ref is not None and ref not in self.messages:
            if ref_field.get("fail_if_not_exists", True):
                return _json({"message": "Invalid Form Body", "code": 50035}, 400)
            ref = None  # Discord posts it as a plain message
        msg = self._message(
            cid,
            self.bot,
            content,
            reply_to=ref,
            embeds=body.get("embeds"),
            components=body.get("components"),
            flags=int(body.get("flags") or 0),
        )
        self._apply_mentions(msg, body.get("allowed_mentions"))
        if request[FILES]:
            msg["attachments"] = [
                {
                    "id": snowflake(),
                    "filename": f"file{i}",
                    "size": len(data),
                    "url": f"https://cdn.example/attachments/{i}",
                    "proxy_url": f"https://media.example/attachments/{i}",
                }
                for i, data in enumerate(request[FILES])
            ]
        self.messages[msg["id"]] = msg
        await self.dispatch("MESSAGE_CREATE", self._for_gateway(msg))
        return _json(self._for_gateway(msg))

    async def _edit_message(self, request: web.Request) -> web.Response:
        msg = self.messages.get(request.match_info["message"])
        if msg is None or msg["channel_id"] != request.match_info["channel"]:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if msg["author"]["id"] != self.bot["id"]:
            return _json({"message": "Cannot edit a message authored by another user", "code": 50005}, 403)
        body = request[BODY]
        if len(body.get("content") or "") > 2000:
            return _json(_too_long(), 400)
        self._edit(msg, body)
        await self.dispatch("MESSAGE_UPDATE", self._for_gateway(msg))
        return _json(self._for_gateway(msg))

    def _edit(self, msg: dict[str, Any], body: dict[str, Any]) -> None:
        for key in ("content", "embeds", "components", "flags"):
            if key in body:
                msg[key] = body[key] if body[key] is not None else ([] if key != "content" else "")
        msg["edited_timestamp"] = _now()
        if "content" in body:
            self._apply_mentions(msg, body.get("allowed_mentions"))

    async def _delete_message(self, request: web.Request) -> web.Response:
        cid, mid = request.match_info["channel"], request.match_info["message"]
        msg = self.messages.get(mid)
        if msg is None or msg["channel_id"] != cid:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if msg["author"]["id"] != self.bot["id"]:
            return _json({"message": "Missing Permissions", "code": 50013}, 403)
        del self.messages[mid]
        self.deleted.append(msg)
        data = {"id": mid, "channel_id": cid, **({"guild_id": msg["guild_id"]} if "guild_id" in msg else {})}
        await self.dispatch("MESSAGE_DELETE", data)
        return web.Response(status=204)

    async def _add_reaction(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.reactions.append((m["channel"], m["message"], m["emoji"]))
        return web.Response(status=204)

    async def _create_thread(self, request: web.Request) -> web.Response:
        parent, mid = request.match_info["channel"], request.match_info["message"]
        if mid not in self.messages:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        body = request[BODY]
        thread = {
            "id": mid,  # a thread started from a message shares its id
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": parent,
            "owner_id": self.bot["id"],
            "name": body.get("name") or "thread",
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": int(body.get("auto_archive_duration") or 1440),
                "archive_timestamp": _now(),
                "locked": False,
            },
        }
        self.channels[mid] = thread
        await self.dispatch("THREAD_CREATE", thread | {"newly_created": True})
        return _json(thread, 201)

    async def _typing(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    # --- interactions ---------------------------------------------------------------------------
    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(request.match_info["id"])
        if interaction is None or interaction.token != request.match_info["token"]:
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        if interaction.callbacks:
            return _json({"message": "Interaction has already been acknowledged.", "code": 40060}, 400)
        interaction.callbacks.append(self.requests[-1])
        if time.monotonic() - interaction.sent_at > 3.0:
            return _json({"message": "Unknown interaction", "code": 10062}, 404)  # Discord's deadline
        body = request[BODY]
        kind, data = body["type"], body.get("data") or {}
        p = interaction.payload
        result: dict[str, Any] = {
            "interaction": {
                "id": interaction.id,
                "type": p["type"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
            }
        }
        if kind in (4, 5):
            flags = int(data.get("flags") or 0)
            msg = self._message(
                p["channel_id"],
                self.bot,
                data.get("content") or "",
                embeds=data.get("embeds"),
                components=data.get("components"),
                flags=flags | (1 << 7 if kind == 5 else 0),  # LOADING while "thinking"
            )
            msg["interaction_metadata"] = {
                "id": interaction.id,
                "type": p["type"],
                "user": _interaction_user(p),
            }
            interaction.original = msg
            self._store_interaction_message(msg, data.get("allowed_mentions"))
            result["interaction"]["response_message_id"] = msg["id"]
            result["resource"] = {"type": kind, "message": msg}
        elif kind == 7:
            msg = self._find(p["message"]["id"])
            if msg is None:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            self._edit(msg, data)
            result["resource"] = {"type": 7, "message": msg}
        return _json(result)

    def _store_interaction_message(self, msg: dict[str, Any], allowed: dict[str, Any] | None) -> None:
        if msg["flags"] & EPHEMERAL:
            self.ephemeral[msg["id"]] = msg
        else:
            self._apply_mentions(msg, allowed)
            self.messages[msg["id"]] = msg

    def _find(self, message_id: str) -> dict[str, Any] | None:
        return self.messages.get(message_id) or self.ephemeral.get(message_id)

    def _interaction_for(self, token: str) -> Interaction | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for(request.match_info["token"])
        if interaction is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, 404)
        data = request[BODY]
        msg = self._message(
            interaction.payload["channel_id"],
            self.bot,
            data.get("content") or "",
            embeds=data.get("embeds"),
            components=data.get("components"),
            flags=int(data.get("flags") or 0),
        )
        interaction.followups.append(msg)
        self._store_interaction_message(msg, data.get("allowed_mentions"))
        if not msg["flags"] & EPHEMERAL:
            await self.dispatch("MESSAGE_CREATE", self._for_gateway(msg))
        return _json(msg)

    def _webhook_message(self, request: web.Request) -> dict[str, Any] | None:
        interaction = self._interaction_for(request.match_info["token"])
        if interaction is None:
            return None
        mid = request.match_info["message"]
        if mid == "@original":
            return interaction.original
        return self._find(mid)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        msg = self._webhook_message(request)
        return _json(msg) if msg else _json({"message": "Unknown Message", "code": 10008}, 404)

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        msg = self._webhook_message(request)
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        self._edit(msg, request[BODY])
        msg["flags"] = msg["flags"] & ~(1 << 7)  # no longer "thinking"
        return _json(msg)


def _public(user: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in user.items() if not k.startswith("_")}


def _interaction_user(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["member"]["user"] if "member" in payload else payload["user"]


def _too_long() -> dict[str, Any]:
    return {
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {
            "content": {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]
            }
        },
    }


@pytest.fixture
async def discord_double() -> AsyncIterator[DiscordDouble]:
    double = await DiscordDouble().start()
    try:
        yield double
    finally:
        await double.stop()
