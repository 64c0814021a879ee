"""The Slack adapter: slack-bolt listeners that hand work to background tasks and return at once.

    adapter = SlackAdapter(settings, service, http)   # before http.start(): HTTP mode adds a route
    await adapter.start()                             # Socket Mode connects; HTTP mode is served by `http`
    ...
    await adapter.close()                             # waits for answers in flight, up to a deadline

Socket Mode when SLACK_APP_TOKEN is set, else the Events API at /slack/events on the shared HTTP
listener when SLACK_SIGNING_SECRET is set. Listeners stay a few lines: payloads are read in
translate.py, messages built in render.py and reply.py, bots and the channel allow-list filtered in
middleware. Deduplication of redelivered events is the core's (in the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.common.splitting import split_text
from bot.http import HttpServer
from bot.slack import render, translate
from bot.slack.reply import SlackReply, render_text, retry_after
from core.config import Settings
from core.errors import ConfigError, MetaRouterError
from core.privacy import local_only_for
from core.service import ChatService
from core.store import UnfinishedAnswer
from core.types import ModelStats, RouteRequest

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
PULL_PROGRESS_EVERY_S = 5.0
PULL_PROGRESS_MAX = 3  # a response_url takes 5 messages: progress, then the result
READ_ATTEMPTS = 4  # reading a thread that Slack rate-limits (Tier 3: about 50 a minute) ...
READ_MAX_WAIT_S = 30.0  # ... is waited out, within reason, rather than failing the question


# Slack's answers to a token it will never accept: a configuration error, not an outage.
_BAD_TOKEN = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "not_allowed_token_type"}


class SlackAdapter:
    """MetaRouter on Slack; also the `ReportSink` that posts scheduled reports to a channel."""

    def __init__(self, settings: Settings, service: ChatService, http: HttpServer | None = None) -> None:
        if settings.slack_bot_token is None:
            raise ConfigError("SLACK_BOT_TOKEN is not set")
        app_token = settings.slack_app_token.get_secret_value() if settings.slack_app_token else None
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        if app_token is None and (secret is None or http is None):
            raise ConfigError("Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)")
        self.settings = settings
        self.service = service
        self.client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url
        )
        # Listeners only hand work to a tracked task and return, so acknowledging after them still
        # takes microseconds, and an acknowledged event is always one close() waits for.
        self.app = AsyncApp(client=self.client, signing_secret=secret or "", process_before_response=True)
        self.handler = AsyncSocketModeHandler(self.app, app_token) if app_token else None
        if self.handler is None and http is not None:
            http.route("POST", EVENTS_PATH, self._http)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self._names: dict[str, str] = {}
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self._register()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Checks the tokens (ConfigError naming the bad one), then connects in Socket Mode."""
        await self._check("SLACK_BOT_TOKEN", self.client.auth_test())
        if self.handler is not None:
            await self._check(
                "SLACK_APP_TOKEN", self.client.apps_connections_open(app_token=self.handler.app_token)
            )
            await self.handler.connect_async()
            log.info("Slack: Socket Mode connected")
        else:
            log.info("Slack: Events API at %s", EVENTS_PATH)

    async def close(self, grace_s: float = 20.0) -> None:
        """Stops taking events, lets answers in flight finish for up to `grace_s`, then ends them
        with a note; Slack redelivers what was not acknowledged to the next run or replica."""
        self.closing = True
        if self.handler is not None:
            await self.handler.close_async()
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def post_report(self, channel_id: str, text: str, png: bytes | None = None) -> None:
        """A scheduled report: the text (split to fit), then the chart."""
        for piece in split_text(text, render.SECTION_CHARS, measure=lambda s: len(render_text(s))):
            await self.client.chat_postMessage(
                channel=channel_id, text=render_text(piece), unfurl_links=False
            )
        if png:
            await self.client.files_upload_v2(
                channel=channel_id, content=png, filename="metarouter-report.png", title="MetaRouter usage"
            )

    async def mark_interrupted(self, answers: list[UnfinishedAnswer]) -> None:
        """Answers a stopped process left half-written: the last message of each keeps its text and
        ends with a note and a "Try again" button (serve calls this at start-up, core.recovery)."""
        for a in answers:
            last = a.messages[-1]
            try:
                found = await self._thread(last.channel_id, last.message_id, until=last.message_id)
                shown = next((m for m in found if m.get("ts") == last.message_id), None)
                if shown is None:
                    continue  # deleted meanwhile: nothing left to correct
                text = next(
                    (
                        b["text"]["text"]
                        for b in shown.get("blocks") or []
                        if b.get("block_id") == render.ANSWER_BLOCK
                    ),
                    shown.get("text") or "",
                )
                await self.client.chat_update(
                    channel=last.channel_id,
                    ts=last.message_id,
                    text=f"{text}\n\n{render.RESTART_NOTE}",
                    blocks=render.interrupted_blocks(text, a.model, a.question_id),
                )
            except Exception:
                log.warning("could not mark an interrupted answer in %s", last.channel_id, exc_info=True)

    @staticmethod
    async def _check(variable: str, call: Awaitable[Any]) -> None:
        try:
            await call
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in _BAD_TOKEN:
                raise ConfigError(f"{variable} was refused by Slack ({error})") from None
            log.warning("Slack answered %s to %s; going on", error, variable)
        except Exception as exc:  # Slack unreachable: Socket Mode keeps retrying, HTTP mode just waits
            log.warning("Slack is not reachable yet (%s)", type(exc).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Slack handler failed", exc_info=task.exception())

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if self.closing:  # Slack retries elsewhere or later; the claim in the database keeps it single
            return web.Response(status=503)
        return await to_aiohttp_response(await self.app.async_dispatch(await to_bolt_request(request)))

    # --- wiring -------------------------------------------------------------------------------
    def _register(self) -> None:
        app = self.app
        app.use(self._skip_bots)
        app.use(self._allow_list)
        app.event("app_mention")(self._on_question)
        app.event("message")(self._on_question)
        app.event("reaction_added")(self._on_reaction)
        app.event("reaction_removed")(self._on_reaction)
        app.command("/route")(self._on_route)
        app.command("/models")(self._on_models)
        app.command("/report")(self._on_report)
        app.action(render.EXPAND)(self._on_toggle)
        app.action(render.COLLAPSE)(self._on_toggle)
        app.action(re.compile(f"^{render.RERUN}_\\d+$"))(self._on_rerun)
        app.action(render.RUN)(self._on_run)
        app.action(render.PULL)(self._on_admin_button)
        app.action(render.REMOVE)(self._on_admin_button)

    # --- middleware ---------------------------------------------------------------------------
    async def _skip_bots(self, body: dict[str, Any], context: Any, next: Callable[[], Awaitable[Any]]) -> Any:
        """Other bots are never answered (Bolt already drops the bot's own events)."""
        self._learn_identity(context)
        event = body.get("event") or {}
        if event.get("bot_id") or event.get("subtype") == "bot_message":
            return BoltResponse(status=200, body="")
        return await next()

    async def _allow_list(self, body: dict[str, Any], ack: Any, next: Callable[[], Awaitable[Any]]) -> Any:
        allowed = self.settings.slack_allowed_channels
        channel = translate.event_channel(body)
        if not allowed or channel is None or channel in allowed or channel.startswith("D"):
            return await next()
        if "command" in body:
            return await ack(text=render.NOT_HERE, response_type="ephemeral")
        return BoltResponse(status=200, body="")

    def _learn_identity(self, context: Any) -> None:
        if self.bot_user_id is None and context.get("bot_user_id"):
            self.bot_user_id, self.bot_id = context.get("bot_user_id"), context.get("bot_id")

    # --- listeners: acknowledge, hand over, return ------------------------------------------------
    async def _on_question(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        q = translate.question_from_event(event, body)
        if q is not None:
            self._spawn(self._answer(q))

    async def _on_reaction(self, event: dict[str, Any]) -> None:
        rating = translate.rating_from_event(event)
        if rating is not None:
            self._spawn(self._rate(rating))

    async def _on_route(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        if not command.get("text", "").strip():
            await ack(text=render.ROUTE_USAGE, response_type="ephemeral")
            return
        await ack()
        self._spawn(self._route(command, respond))

    async def _on_models(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        verb, _, name = command.get("text", "").strip().partition(" ")
        if verb in ("pull", "remove") and name.strip():
            if command["user_id"] not in self.settings.slack_admin_users:
                await ack(text=render.NOT_ADMIN, response_type="ephemeral")
                return
            await ack(text=f"{verb.capitalize()}ing {name.strip()}…", response_type="ephemeral")
            self._spawn(self._admin(verb, name.strip(), respond))
        elif verb:
            await ack(text=render.MODELS_USAGE, response_type="ephemeral")
        else:
            await ack()
            self._spawn(self._show_models(command["user_id"], respond))

    async def _on_report(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        """`/report [7d]`: the usage report and its chart, posted in the channel it was asked in."""
        from core.reports import parse_since

        try:
            period = parse_since(command.get("text", "").strip() or "7d")
        except ValueError as exc:
            await ack(text=f"Usage: `/report [PERIOD]`, e.g. `/report 7d` ({exc})", response_type="ephemeral")
            return
        if self.service.store is None:
            await ack(text="Reports need the database, which is not configured.", response_type="ephemeral")
            return
        await ack(text="Building the report…", response_type="ephemeral")
        self._spawn(self._report(command["channel_id"], period, respond))

    async def _report(self, channel: str, period: Any, respond: Any) -> None:
        from core.reports import report_for

        assert self.service.store is not None
        try:
            text, png = await report_for(self.service.store, period)
            await self.post_report(channel, text, png)
        except Exception:
            log.warning("/report failed", exc_info=True)
            await respond(
                text="The report could not be built or posted right now.", response_type="ephemeral"
            )

    async def _on_toggle(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self._spawn(self._toggle(body, action))

    async def _on_rerun(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        self._spawn(self._rerun(body, json.loads(action["value"])))

    async def _on_run(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        self._spawn(self._run_routed(body, json.loads(action["value"]), respond))

    async def _on_admin_button(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any
    ) -> None:
        await ack()
        if body["user"]["id"] not in self.settings.slack_admin_users:
            self._spawn(respond(text=render.NOT_ADMIN, response_type="ephemeral", replace_original=False))
            return
        verb = "pull" if action["action_id"] == render.PULL else "remove"
        self._spawn(self._admin(verb, action["value"], respond))

    # --- the work -----------------------------------------------------------------------------
    async def _answer(self, q: translate.Question, *, model: str | None = None, dedupe: bool = True) -> None:
        reply = self._reply(q.channel, q.reply_thread, q.ts)
        try:
            history, names = (), await self._names_for([q.user], [q.text])
            if q.thread_ts:
                history, names = await self._history(q.channel, q.thread_ts, before_ts=q.ts, also=[q])
            msg = translate.incoming(
                q, history=history, names=names, bot_user_id=self.bot_user_id, dedupe=dedupe
            )
            await self.service.handle(msg, reply, model=model)
        except asyncio.CancelledError:
            if reply.started and not reply.finished:  # nothing shown yet: nothing to correct
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(reply.fail(render.INTERRUPTED)), 3)
            raise
        except Exception:
            log.exception("answering in %s failed", q.channel)
            if not reply.finished:
                await reply.fail(render.GENERIC_ERROR)

    def _reply(self, channel: str, thread_ts: str, question_ts: str | None) -> SlackReply:
        return SlackReply(
            self.client,
            channel,
            thread_ts,
            interval_s=self.settings.slack_update_interval_s,
            question_ts=question_ts,
            stats_for=self._stats,
            rerun=self.settings.slack_rerun_buttons,
        )

    async def _rate(self, r: translate.Rating) -> None:
        await self.service.rate(
            platform=translate.PLATFORM,
            channel_id=r.channel,
            message_id=r.ts,
            user_id=r.user,
            reaction=r.reaction,
            added=r.added,
        )

    async def _route(self, command: dict[str, Any], respond: Any) -> None:
        thread_ts = command.get("thread_ts")  # set when Slack lets the command run in a thread
        try:
            history, names = (), await self._names_for([], [command["text"]])
            if thread_ts:
                history, names = await self._history(
                    command["channel_id"], thread_ts, before_ts=None, also=[]
                )
            text = translate.plain_text(command["text"], bot_user_id=self.bot_user_id, names=names)
            private = local_only_for(self.settings, command["channel_id"], command.get("team_id"))
            req = RouteRequest(
                query=text, history=history, channel_id=command["channel_id"], local_only=private
            )
            d = await self.service.route(req)
            blocks = render.route_blocks(text, d, await self._stats(d.recommended_model), thread_ts)
            await respond(
                text=f"Routing decision: {d.recommended_model}", blocks=blocks, response_type="ephemeral"
            )
        except MetaRouterError as exc:
            await respond(text=render.warning(exc.user_message), response_type="ephemeral")
        except Exception:
            log.exception("/route failed")
            await respond(text=render.warning(render.GENERIC_ERROR), response_type="ephemeral")

    async def _run_routed(self, body: dict[str, Any], value: dict[str, Any], respond: Any) -> None:
        """The "Ask" button under a /route decision: the question goes to the channel and is answered."""
        channel, user, thread_ts = translate.action_channel(body) or "", body["user"]["id"], value.get("t")
        quoted = render_text(value["q"]).replace("\n", "\n>")
        posted = await self.client.chat_postMessage(
            channel=channel, thread_ts=thread_ts, text=f"<@{user}> asked:\n>{quoted}", unfurl_links=False
        )
        # In a thread the thread so far is the context; else the answer starts a thread under the question.
        q = translate.Question(
            channel, user, value["q"], posted["ts"], thread_ts, team=body.get("team", {}).get("id")
        )
        await respond(delete_original=True)
        await self._answer(q, dedupe=False)

    async def _rerun(self, body: dict[str, Any], value: dict[str, Any]) -> None:
        channel = translate.action_channel(body) or ""
        container = body.get("container") or {}
        thread_ts = container.get("thread_ts") or (body.get("message") or {}).get("thread_ts") or value["q"]
        messages = await self._thread(channel, thread_ts)
        asked = next((m for m in messages if m.get("ts") == value["q"]), None)
        if asked is None:
            return
        q = translate.question_from_message(
            channel, asked | {"thread_ts": thread_ts}, body.get("team", {}).get("id")
        )
        if q.thread_ts == q.ts:  # the question opened the thread: it has no history
            q = translate.Question(q.channel, q.user, q.text, q.ts, None, team=q.team)
        await self._answer(q, model=value["m"], dedupe=False)

    async def _toggle(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Expands or collapses the routing footer in place; the answer blocks are sent back unchanged."""
        footer = render.unpack_footer(action["value"])
        expanded = action["action_id"] == render.EXPAND
        if expanded:
            footer = render.Footer(
                footer.decision,
                footer.question_ts,
                await self._stats(footer.decision.recommended_model),
                footer.rerun,
            )
        message = body["message"]
        blocks = render.replace_footer(
            message.get("blocks") or [], render.decision_footer(footer, expanded=expanded)
        )
        channel = translate.action_channel(body)
        await self.client.chat_update(
            channel=channel, ts=message["ts"], text=message.get("text", ""), blocks=blocks
        )

    async def _show_models(self, user: str, respond: Any) -> None:
        try:
            inv = await self.service.models()
        except Exception:
            log.exception("/models failed")
            await respond(text=render.warning(render.GENERIC_ERROR), response_type="ephemeral")
            return
        blocks = render.models_blocks(inv, admin=user in self.settings.slack_admin_users)
        await respond(text=f"{len(inv.models)} models", blocks=blocks, response_type="ephemeral")

    async def _admin(self, verb: str, name: str, respond: Any) -> None:
        try:
            if verb == "remove":
                hosts = await self.service.remove(name)
                await respond(text=f"Removed {name} from {', '.join(hosts)}.", response_type="ephemeral")
                return
            sent, last = 0, time.monotonic()
            async for p in self.service.pull(name):
                if (
                    p.percent is not None
                    and sent < PULL_PROGRESS_MAX
                    and time.monotonic() - last >= PULL_PROGRESS_EVERY_S
                ):
                    sent, last = sent + 1, time.monotonic()
                    await respond(
                        text=f"Pulling {name} {p.percent:.0f}%",
                        response_type="ephemeral",
                        replace_original=True,
                    )
            await respond(text=f"{name} is ready.", response_type="ephemeral", replace_original=True)
        except MetaRouterError as exc:
            await respond(text=render.warning(exc.user_message), response_type="ephemeral")
        except Exception:
            log.exception("/models %s failed", verb)
            await respond(text=render.warning(render.GENERIC_ERROR), response_type="ephemeral")

    # --- Slack reads ----------------------------------------------------------------------------
    async def _thread(
        self, channel: str, thread_ts: str, *, until: str | None = None
    ) -> list[dict[str, Any]]:
        """Every message of a thread (parent first), page by page, stopping past `until`."""
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            resp = await self._read(
                self.client.conversations_replies, channel=channel, ts=thread_ts, cursor=cursor, limit=200
            )
            page = resp.get("messages") or []
            messages += page
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if (
                not resp.get("has_more")
                or not cursor
                or (until and page and float(page[-1]["ts"]) >= float(until))
            ):
                return messages

    @staticmethod
    async def _read(method: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
        """A Web API read, retried after a 429 as Slack asks (the client library retries none)."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await method(**kwargs)
            except SlackApiError as exc:
                if exc.response.status_code != 429 or attempt == READ_ATTEMPTS:
                    raise
                await asyncio.sleep(min(retry_after(exc.response.headers), READ_MAX_WAIT_S))
        raise AssertionError("unreachable")

    async def _history(
        self, channel: str, thread_ts: str, *, before_ts: str | None, also: list[translate.Question]
    ) -> tuple[Any, dict[str, str]]:
        messages = await self._thread(channel, thread_ts, until=before_ts)
        users = [m.get("user") for m in messages if m.get("user")] + [q.user for q in also]
        names = await self._names_for(users, [m.get("text") or "" for m in messages] + [q.text for q in also])
        turns = translate.history(
            messages, before_ts=before_ts, bot_user_id=self.bot_user_id, bot_id=self.bot_id, names=names
        )
        return turns, names

    async def _names_for(self, users: list[Any], texts: list[str]) -> dict[str, str]:
        wanted = (set(users) | translate.mentioned_users(texts)) - set(self._names) - {self.bot_user_id, None}
        for uid in wanted:
            try:
                resp = await self.client.users_info(user=uid)
                self._names[uid] = translate.display_name(resp["user"])
            except SlackApiError:
                self._names[uid] = uid  # a name is nice to have, never worth failing an answer
        return self._names

    async def _stats(self, model: str) -> ModelStats | None:
        try:
            info = (await self.service.inventory.snapshot()).get(model)
        except Exception:
            return None
        return info.stats if info else None
