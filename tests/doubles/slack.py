"""Loopback Slack double (see PROTOCOLS.md sections 1-3).

A real aiohttp server on 127.0.0.1 that plays Slack for the unmodified slack-sdk and slack-bolt:
- the Web API under `/api/` (messages, threads, users, file uploads), with Slack's limits enforced
  (3,000 characters per section block, 4,000 per message text, 50 blocks) and failures injectable
  (`fail("chat.update", status=429, retry_after=1)`);
- Socket Mode: `apps.connections.open` hands out a `ws://` URL; `deliver()` sends envelopes over it
  and waits for the app's ack; `drop_socket()` closes the connection from Slack's side;
- HTTP mode: `deliver()` POSTs signed requests to `events_url` when no socket is connected;
- `response_url`s, whose messages (ephemeral replies) land in `responses`.

Tests act as people (`mention`, `dm`, `command`, `click`, `react`) and read what people would see
(`thread()`, `responses`, `calls()`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from aiohttp import web

SECTION_LIMIT = 3000
TEXT_LIMIT = 4000
BLOCK_LIMIT = 50
VALUE_LIMIT = 2000


@dataclass
class ApiCall:
    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class Msg:
    channel: str
    ts: str
    user: str | None
    text: str
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    bot_id: str | None = None
    client_msg_id: str | None = None
    username: str | None = None

    def visible(self) -> str:
        """What a person reads: the blocks' text when there are blocks, else the message text."""
        if not self.blocks:
            return self.text
        out: list[str] = []
        for b in self.blocks:
            if b.get("type") in ("section", "header") and b.get("text"):
                out.append(b["text"]["text"])
            elif b.get("type") == "context":
                out += [e.get("text", "") for e in b.get("elements", [])]
        return "\n".join(out)

    def buttons(self) -> list[dict[str, Any]]:
        return [e for b in self.blocks if b.get("type") == "actions" for e in b.get("elements", [])] + [
            b["accessory"] for b in self.blocks if b.get("accessory", {}).get("type") == "button"
        ]

    def as_api(self) -> dict[str, Any]:
        m: dict[str, Any] = {"type": "message", "text": self.text, "ts": self.ts}
        if self.user:
            m["user"] = self.user
        if self.thread_ts:
            m["thread_ts"] = self.thread_ts
        if self.blocks:
            m["blocks"] = self.blocks
        if self.bot_id:
            m["bot_id"] = self.bot_id
            m["subtype"] = None if self.user else "bot_message"
            if not self.user:
                m["username"] = self.username or "other-bot"
        if self.client_msg_id:
            m["client_msg_id"] = self.client_msg_id
        return {k: v for k, v in m.items() if v is not None}


@dataclass
class Response:
    """A message sent to a response_url: what the person who clicked or typed sees."""

    url_id: str
    body: dict[str, Any]
    at: float

    @property
    def text(self) -> str:
        return Msg("", "", None, self.body.get("text", ""), blocks=self.body.get("blocks") or []).visible()

    def buttons(self) -> list[dict[str, Any]]:
        return Msg("", "", None, "", blocks=self.body.get("blocks") or []).buttons()


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: int | None
    times: int


@dataclass
class SlackDouble:
    signing_secret: str = "test-signing-secret"
    bot_user_id: str = "UBOT"
    bot_id: str = "B1"
    team_id: str = "T1"
    app_id: str = "A1"
    page_size: int = 3  # conversations.replies page size: small, so pagination is exercised
    events_url: str | None = None  # HTTP mode: where signed requests go

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    channels: dict[str, list[Msg]] = field(default_factory=dict)
    api_calls: list[ApiCall] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)

    _failures: dict[str, list[_Failure]] = field(default_factory=dict)
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)
    _acks: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _clock: float = 1_700_000_000.0
    _runner: web.AppRunner | None = None
    _port: int = 0
    _session: aiohttp.ClientSession | None = None
    _socket_changed: asyncio.Event = field(default_factory=asyncio.Event)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> SlackDouble:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link", self._socket)
        app.router.add_post("/respond/{id}", self._respond)
        app.router.add_post("/upload/{id}", self._upload)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()
        self.add_user("U1", "Alice")
        self.add_user("U2", "Bob")
        return self

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def socket_connected(self) -> bool:
        return any(not ws.closed for ws in self._sockets)

    async def wait_for_socket(self, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not self.socket_connected:
            if time.monotonic() > deadline:
                raise TimeoutError("the app never opened a Socket Mode connection")
            self._socket_changed.clear()
            try:
                await asyncio.wait_for(self._socket_changed.wait(), 0.05)
            except TimeoutError:
                pass

    async def drop_socket(self, *, warn: bool = False) -> None:
        """Slack closes the Socket Mode connection (as it does on a deploy, or every few hours): the
        app has to open a new one. Envelopes not yet acknowledged are never acknowledged. With
        `warn`, Slack first says so (`disconnect`, `refresh_requested`), as it does before a refresh."""
        for ws in [ws for ws in self._sockets if not ws.closed]:
            if warn:
                await ws.send_str(json.dumps({"type": "disconnect", "reason": "refresh_requested"}))
                await asyncio.sleep(0.2)  # the app is meant to reconnect now, before the close
            await ws.close(code=1001, message=b"going away")

    # --- state ----------------------------------------------------------------------------------
    def add_user(self, user_id: str, display_name: str, *, is_bot: bool = False) -> None:
        self.users[user_id] = {
            "id": user_id,
            "name": display_name.lower(),
            "real_name": display_name,
            "is_bot": is_bot,
            "profile": {"display_name": display_name, "real_name": display_name},
        }

    def next_ts(self) -> str:
        self._clock += 0.0001 * next(self._seq) + 1
        return f"{self._clock:.6f}"

    def post_as(
        self,
        channel: str,
        user: str | None,
        text: str,
        *,
        thread_ts: str | None = None,
        bot_id: str | None = None,
    ) -> Msg:
        """A message someone (a person, or a bot with `bot_id`) wrote, as Slack stores it."""
        msg = Msg(
            channel, self.next_ts(), user, text, thread_ts, bot_id=bot_id, client_msg_id=str(uuid.uuid4())
        )
        if bot_id and not user:
            msg.client_msg_id = None
        self.channels.setdefault(channel, []).append(msg)
        return msg

    def message(self, channel: str, ts: str) -> Msg | None:
        return next((m for m in self.channels.get(channel, []) if m.ts == ts), None)

    def thread(self, channel: str, thread_ts: str) -> list[Msg]:
        """The thread as a person sees it: the parent, then the replies, oldest first."""
        msgs = [m for m in self.channels.get(channel, []) if m.ts == thread_ts or m.thread_ts == thread_ts]
        return sorted(msgs, key=lambda m: float(m.ts))

    def bot_replies(self, channel: str, thread_ts: str) -> list[Msg]:
        return [
            m for m in self.thread(channel, thread_ts) if m.user == self.bot_user_id and m.ts != thread_ts
        ]

    def answer(self, channel: str, thread_ts: str) -> str:
        """The bot's answer in a thread as a reader sees it: every part's answer section, in order."""
        parts = []
        for m in self.bot_replies(channel, thread_ts):
            parts += [b["text"]["text"] for b in m.blocks if b.get("block_id") == "mr_answer"]
        return "\n".join(parts)

    def routing_line(self, channel: str, thread_ts: str) -> str:
        """The one-line routing summary under the last part of the bot's answer in a thread."""
        last = self.bot_replies(channel, thread_ts)[-1]
        return "\n".join(
            e["text"]
            for b in last.blocks
            if str(b.get("block_id", "")).startswith("mr_decision") and b["type"] == "context"
            for e in b["elements"]
        )

    def calls(self, method: str) -> list[ApiCall]:
        return [c for c in self.api_calls if c.method == method]

    def updates_of(self, channel: str, ts: str) -> list[ApiCall]:
        return [
            c
            for c in self.calls("chat.update")
            if c.args.get("channel") == channel and c.args.get("ts") == ts
        ]

    def fail(
        self,
        method: str,
        *,
        status: int = 429,
        error: str = "ratelimited",
        retry_after: int | None = 1,
        times: int = 1,
    ) -> None:
        """The next `times` calls of `method` fail. Retry-After is whole seconds, as Slack sends it."""
        self._failures.setdefault(method, []).append(_Failure(status, error, retry_after, times))

    # --- people's actions -----------------------------------------------------------------------
    def mention(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> dict[str, Any]:
        """`user` writes `text` (mentioning the bot) in a channel: the app_mention event callback."""
        msg = self.post_as(channel, user, text, thread_ts=thread_ts)
        event = {"type": "app_mention", "user": user, "text": text, "ts": msg.ts, "channel": channel}
        event |= {"event_ts": msg.ts, "client_msg_id": msg.client_msg_id, "team": self.team_id}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return self.envelope(event)

    def dm(
        self, user: str, text: str, *, channel: str = "D1", thread_ts: str | None = None
    ) -> dict[str, Any]:
        msg = self.post_as(channel, user, text, thread_ts=thread_ts)
        return self.envelope(self.message_event(msg, channel_type="im"))

    def message_event(self, msg: Msg, *, channel_type: str = "im") -> dict[str, Any]:
        event = msg.as_api() | {"channel": msg.channel, "event_ts": msg.ts, "channel_type": channel_type}
        return event | {"team": self.team_id}

    def react(self, user: str, channel: str, ts: str, name: str, *, added: bool = True) -> dict[str, Any]:
        target = self.message(channel, ts)
        event: dict[str, Any] = {
            "type": "reaction_added" if added else "reaction_removed",
            "user": user,
            "reaction": name,
            "item": {"type": "message", "channel": channel, "ts": ts},
            "event_ts": self.next_ts(),
        }
        if target is not None and target.user:
            event["item_user"] = target.user
        return self.envelope(event)

    def envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "token": "verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "event": event,
            "authorizations": [
                {
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                    "enterprise_id": None,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": "4-eyJldCI6ImFwcF9tZW50aW9uIn0",
        }

    def command_payload(
        self, command: str, text: str, *, user: str = "U1", channel: str = "C1", thread_ts: str | None = None
    ) -> dict[str, Any]:
        url_id = uuid.uuid4().hex[:8]
        payload = {
            "token": "verification-token",
            "team_id": self.team_id,
            "team_domain": "test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": self.users.get(user, {}).get("name", user),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": f"http://127.0.0.1:{self._port}/respond/{url_id}",
            "trigger_id": f"{next(self._seq)}.trigger",
        }
        if thread_ts:
            payload["thread_ts"] = thread_ts
        return payload

    def click_payload(
        self, button: dict[str, Any], *, user: str = "U1", message: Msg | None = None, channel: str = "C1"
    ) -> dict[str, Any]:
        """A person presses `button` on `message` (a thread message) or on an ephemeral reply."""
        url_id = uuid.uuid4().hex[:8]
        channel = message.channel if message else channel
        container: dict[str, Any] = {
            "type": "message",
            "channel_id": channel,
            "is_ephemeral": message is None,
        }
        if message is not None:
            container["message_ts"] = message.ts
            if message.thread_ts:
                container["thread_ts"] = message.thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id},
            "api_app_id": self.app_id,
            "token": "verification-token",
            "container": container,
            "trigger_id": f"{next(self._seq)}.trigger",
            "team": {"id": self.team_id, "domain": "test"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "general"},
            "response_url": f"http://127.0.0.1:{self._port}/respond/{url_id}",
            "actions": [
                {
                    "action_id": button["action_id"],
                    "block_id": button.get("block_id", "b"),
                    "text": button.get("text"),
                    "value": button.get("value"),
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        if message is not None:
            payload["message"] = message.as_api()
        return payload

    # --- delivery -------------------------------------------------------------------------------
    async def deliver(
        self, payload: dict[str, Any], *, kind: str = "events_api", retry: int = 0, url: str | None = None
    ) -> Any:
        """Delivers like Slack: over the socket when one is open (returns the ack's payload), else as
        a signed HTTP request to `url` or `events_url` (returns (status, body)); `url` plays a load
        balancer in front of several replicas. `retry` > 0 marks a redelivery."""
        if self.socket_connected and url is None:
            return await self._send_envelope(kind, payload, retry)
        assert url or self.events_url, "no socket and no events_url: nothing to deliver to"
        if kind == "events_api":
            body, ctype = json.dumps(payload), "application/json"
        elif kind == "slash_commands":
            body, ctype = urlencode(payload), "application/x-www-form-urlencoded"
        else:
            body, ctype = urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded"
        return await self.post_signed(body, ctype, retry=retry, url=url)

    async def post_signed(
        self,
        body: str,
        content_type: str,
        *,
        retry: int = 0,
        secret: str | None = None,
        ts: int | None = None,
        url: str | None = None,
    ) -> tuple[int, str]:
        url = url or self.events_url
        assert self._session is not None and url
        headers = {"Content-Type": content_type} | signature_headers(secret or self.signing_secret, body, ts)
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        async with self._session.post(url, data=body.encode(), headers=headers) as resp:
            return resp.status, await resp.text()

    async def command(self, command: str, text: str, **kw: Any) -> Any:
        return await self.deliver(self.command_payload(command, text, **kw), kind="slash_commands")

    async def click(self, button: dict[str, Any], **kw: Any) -> Any:
        return await self.deliver(self.click_payload(button, **kw), kind="interactive")

    async def _send_envelope(self, kind: str, payload: dict[str, Any], retry: int) -> dict[str, Any]:
        ws = next(ws for ws in self._sockets if not ws.closed)
        envelope_id = str(uuid.uuid4())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = fut
        await ws.send_str(
            json.dumps(
                {
                    "envelope_id": envelope_id,
                    "type": kind,
                    "payload": payload,
                    "accepts_response_payload": kind != "events_api",
                    "retry_attempt": retry,
                    "retry_reason": "timeout" if retry else "",
                }
            )
        )
        return await asyncio.wait_for(fut, 3.0)  # real Slack redelivers after 3 s without an ack

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self._socket_changed.set()
        hello = {"type": "hello", "num_connections": 1, "debug_info": {"host": "double"}}
        await ws.send_str(json.dumps(hello | {"connection_info": {"app_id": self.app_id}}))
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(frame.data)
                fut = self._acks.pop(data.get("envelope_id", ""), None)
                if fut is not None and not fut.done():
                    fut.set_result(data.get("payload") or {})
        finally:
            self._socket_changed.set()
        return ws

    # --- response_url and uploads ------------------------------------------------------------------
    async def _respond(self, request: web.Request) -> web.Response:
        body = await request.json()
        problem = (
            None
            if body.get("delete_original")
            else _check_blocks(body.get("blocks") or [], body.get("text") or "")
        )
        if problem:
            return web.Response(status=400, text=problem)
        self.responses.append(Response(request.match_info["id"], body, time.monotonic()))
        return web.Response(text="ok")

    async def _upload(self, request: web.Request) -> web.Response:
        self.uploads[request.match_info["id"]] = await request.read()
        return web.Response(text=f"OK - {len(self.uploads[request.match_info['id']])}")

    # --- Web API --------------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        if raw and ctype.startswith("application/json"):
            args |= json.loads(raw)
        elif raw:
            args |= dict(parse_qsl(raw.decode()))
        for key in ("blocks", "files"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        self.api_calls.append(ApiCall(method, args, dict(request.headers), time.monotonic()))

        queue = self._failures.get(method)
        if queue:
            failure = queue[0]
            failure.times -= 1
            if failure.times <= 0:
                queue.pop(0)
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            return web.json_response(
                {"ok": False, "error": failure.error}, status=failure.status, headers=headers
            )

        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if method == "apps.connections.open":
            if not token.startswith("xapp-") or token.endswith("-revoked"):
                return _error("invalid_auth" if token.startswith("xapp-") else "not_allowed_token_type")
            return web.json_response(
                {"ok": True, "url": f"ws://127.0.0.1:{self._port}/link?ticket={next(self._seq)}"}
            )
        if not token.startswith("xoxb-") or token.endswith("-revoked"):
            return _error("invalid_auth")
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return _error("unknown_method")
        return await handler(args)

    async def _m_auth_test(self, args: dict[str, Any]) -> web.Response:
        body = {"ok": True, "url": "https://test.slack.com/", "team": "Test", "user": "metarouter"}
        body |= {"team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id}
        body |= {"is_enterprise_install": False}
        scopes = "app_mentions:read,chat:write,channels:history,groups:history,im:history,reactions:read"
        return web.json_response(
            body, headers={"x-oauth-scopes": scopes + ",users:read,commands,files:write"}
        )

    async def _m_chat_postMessage(self, args: dict[str, Any]) -> web.Response:
        text, blocks = args.get("text") or "", args.get("blocks") or []
        problem = _check_blocks(blocks, text)
        if problem:
            return _error(problem)
        msg = Msg(
            args["channel"],
            self.next_ts(),
            self.bot_user_id,
            text,
            args.get("thread_ts"),
            blocks,
            self.bot_id,
        )
        self.channels.setdefault(msg.channel, []).append(msg)
        return web.json_response({"ok": True, "channel": msg.channel, "ts": msg.ts, "message": msg.as_api()})

    async def _m_chat_update(self, args: dict[str, Any]) -> web.Response:
        msg = self.message(args.get("channel", ""), args.get("ts", ""))
        if msg is None:
            return _error("message_not_found")
        text, blocks = args.get("text") or "", args.get("blocks") or []
        problem = _check_blocks(blocks, text)
        if problem:
            return _error(problem)
        msg.text, msg.blocks = text, blocks
        return web.json_response(
            {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": text, "message": msg.as_api()}
        )

    async def _m_conversations_replies(self, args: dict[str, Any]) -> web.Response:
        thread = self.thread(args.get("channel", ""), args.get("ts", ""))
        if not thread:
            return _error("thread_not_found")
        start = int(args.get("cursor") or 0)
        size = min(int(args.get("limit") or 1000), self.page_size)
        page = thread[start : start + size]
        more = start + size < len(thread)
        return web.json_response(
            {
                "ok": True,
                "messages": [m.as_api() for m in page],
                "has_more": more,
                "response_metadata": {"next_cursor": str(start + size) if more else ""},
            }
        )

    async def _m_users_info(self, args: dict[str, Any]) -> web.Response:
        user = self.users.get(args.get("user", ""))
        return web.json_response({"ok": True, "user": user}) if user else _error("user_not_found")

    async def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> web.Response:
        fid = f"F{next(self._seq)}"
        url = f"http://127.0.0.1:{self._port}/upload/{fid}"
        return web.json_response({"ok": True, "upload_url": url, "file_id": fid})

    async def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> web.Response:
        files = []
        for f in args.get("files") or []:
            if f["id"] not in self.uploads:
                return _error("file_not_found")
            entry = {"id": f["id"], "title": f.get("title"), "channel": args.get("channel_id")}
            entry |= {"comment": args.get("initial_comment"), "data": self.uploads[f["id"]]}
            self.files.append(entry)
            files.append({"id": f["id"], "title": f.get("title")})
        return web.json_response({"ok": True, "files": files})


def signature_headers(secret: str, body: str, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + mac}


def _error(code: str, status: int = 200) -> web.Response:
    return web.json_response({"ok": False, "error": code}, status=status)


def _check_blocks(blocks: list[dict[str, Any]], text: str) -> str | None:
    """Slack's limits: what the real API refuses (or silently truncates) the double refuses."""
    if not text and not blocks:
        return "no_text"
    if len(text) > TEXT_LIMIT:
        return "msg_too_long"
    if len(blocks) > BLOCK_LIMIT:
        return "invalid_blocks"
    for b in blocks:
        if b.get("type") == "section" and len(b.get("text", {}).get("text", "")) > SECTION_LIMIT:
            return "invalid_blocks"
        for e in [*b.get("elements", []), b.get("accessory") or {}]:
            if (
                len(str(e.get("value", ""))) > VALUE_LIMIT
                or len(e.get("text", "") if isinstance(e.get("text"), str) else "") > SECTION_LIMIT
            ):
                return "invalid_blocks"
    return None


@pytest.fixture
async def slack_double() -> AsyncIterator[SlackDouble]:
    double = await SlackDouble().start()
    yield double
    await double.stop()


# --- the whole bot against the doubles ----------------------------------------------------------------
@dataclass
class SlackBot:
    """A running MetaRouter Slack bot: the real core and adapter, talking to the doubles."""

    double: SlackDouble
    adapter: Any  # bot.slack.app.SlackAdapter
    app: Any  # bot.app.App
    http: Any | None  # bot.http.HttpServer in HTTP mode
    closed: bool = False

    async def settle(self, quiet: float = 0.05) -> None:
        """Waits until the bot has nothing left to do (every answer finished)."""
        while True:
            await asyncio.sleep(quiet)
            if not self.adapter.tasks:
                return
            await asyncio.gather(*list(self.adapter.tasks), return_exceptions=True)

    async def ask(self, payload: dict[str, Any], *, kind: str = "events_api", retry: int = 0) -> Any:
        """Delivers and waits for the bot to finish what it started."""
        ack = await self.double.deliver(payload, kind=kind, retry=retry)
        await self.settle()
        return ack

    async def close(self, grace_s: float = 5.0) -> None:
        if self.closed:
            return
        self.closed = True
        await self.adapter.close(grace_s=grace_s)
        if self.http is not None:
            await self.http.close()
        await self.app.close()


@pytest.fixture
async def slack_bot_factory(slack_double: SlackDouble, make_settings: Any, ollama_double: Any, tmp_path: Any):
    """`bot = await slack_bot_factory(mode="socket" | "http", **settings)`; the same `database_url`
    twice is a restart."""
    from bot.app import build_app
    from bot.http import HttpServer
    from bot.slack.app import SlackAdapter

    if not ollama_double.models:
        ollama_double.add_model("llama3.2:3b", size_gb=2.0)
        ollama_double.add_model("qwen2.5-coder:7b", size_gb=4.7)
    bots: list[SlackBot] = []

    async def make(mode: str = "socket", **overrides: Any) -> SlackBot:
        values: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'slack.db'}",
            "ollama_host": ollama_double.url,
            "slack_bot_token": "xoxb-test-token",
            "slack_api_url": slack_double.api_url,
            "slack_update_interval_s": 0.05,
            "http_port": 0,
        }
        if mode == "socket":
            values["slack_app_token"] = "xapp-test-token"
        else:
            values["slack_signing_secret"] = slack_double.signing_secret
        values.update(overrides)
        settings = make_settings(**values)
        app = await build_app(settings)
        http = HttpServer(settings) if mode == "http" else None
        adapter = SlackAdapter(settings, app.service, http)
        bot = SlackBot(slack_double, adapter, app, http)
        bots.append(bot)
        if http is not None:
            await http.start()
            slack_double.events_url = f"http://127.0.0.1:{http.port}/slack/events"
        await adapter.start()
        if mode == "socket":
            await slack_double.wait_for_socket()
        return bot

    yield make
    for bot in bots:
        await bot.close()
