"""Discord events, commands and button presses → core calls. Each translates, calls, renders.

Interactions are acknowledged or deferred before anything slow (routing, the inventory, the
database), inside Discord's 3 s deadline. No handler lets an exception reach the person asking: they
get the core's user-facing sentence, the log gets the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bot.discord import render, translate
from bot.discord.reply import DiscordReply
from bot.discord.views import PagesView, RunView, answer_view
from core.chat import FinalAnswer, IncomingMessage
from core.errors import MetaRouterError
from core.privacy import local_only_for
from core.types import RouteRequest

if TYPE_CHECKING:
    from bot.discord.client import DiscordAdapter

log = logging.getLogger(__name__)

ADMIN_ONLY = "Only MetaRouter admins can pull or remove models."
EMPTY_QUESTION = "Ask me something after the mention, for example: how do I reverse a list in Python?"
GONE = "The routing details of this answer are no longer available."
NO_QUESTION = "I can no longer find the question this answer was for."
CUT_BY_SHUTDOWN = "The bot was restarted before this answer was finished. Please ask again."
PULL_EDIT_INTERVAL_S = 1.5
READING_GRACE_S = 0.5  # reading the conversation longer than this shows a placeholder first


# --- mentions -----------------------------------------------------------------------------------
async def on_message(adapter: DiscordAdapter, message: discord.Message) -> None:
    me = adapter.client.user
    if me is None or adapter.closing or not translate.addressed(message, me):
        return
    adapter.spawn(answer_message(adapter, message, me), name=f"discord-answer-{message.id}")


async def answer_message(adapter: DiscordAdapter, message: discord.Message, me: discord.ClientUser) -> None:
    question = translate.plain_text(message, me)
    if not question and not message.attachments:  # a file alone gets the core's note on attachments
        await _quietly(message.reply(EMPTY_QUESTION, allowed_mentions=render.NO_MENTIONS))
        return
    channel: discord.abc.Messageable = message.channel
    reply_to: discord.Message | None = message
    if adapter.settings.discord_thread_per_mention and isinstance(message.channel, discord.TextChannel):
        try:
            channel = await message.create_thread(name=_thread_name(question))
            reply_to = None
        except discord.HTTPException:
            log.warning("could not open a thread for message %s; answering in the channel", message.id)
    reply = _reply(adapter, channel, reply_to)
    try:
        reading = asyncio.ensure_future(
            translate.earlier_messages(message, adapter.settings.discord_history_limit)
        )
        if not (await asyncio.wait({reading}, timeout=READING_GRACE_S))[0]:
            # a long reply chain to fetch: show the bot is on it (the placeholder is due within a second)
            await reply.status("Reading the conversation…")
        msg = translate.incoming(message, me, await reading, answer_channel=channel)
    except Exception:
        log.exception("reading the conversation of %s failed", message.id)
        await _quietly(reply.finish(FinalAnswer(text="", decision=None, error=MetaRouterError.user_message)))
        return
    await run_answer(adapter, msg, reply)


def _reply(
    adapter: DiscordAdapter, channel: discord.abc.Messageable, reply_to: discord.Message | None
) -> DiscordReply:
    return DiscordReply(channel, reply_to=reply_to, pacer=adapter.pacer, limits=adapter.limits)


async def run_answer(
    adapter: DiscordAdapter, msg: IncomingMessage, reply: DiscordReply, *, model: str | None = None
) -> None:
    # every path to an answer passes here: a thread under a local-only channel is local-only too
    if local_only_for(adapter.settings, *translate.places(reply.transport.channel)):
        msg = replace(msg, local_only=True)
    try:
        answer = await adapter.service.handle(msg, reply, model=model)
    except asyncio.CancelledError:
        # shutting down past the drain deadline: say so under whatever part was shown
        if not reply.finished:
            cut = FinalAnswer(text=reply.text, decision=None, error=CUT_BY_SHUTDOWN, incomplete=True)
            await _quietly(reply.finish(cut))
        raise
    except Exception:
        log.exception("answering %s failed", msg.event_key)
        if not reply.finished:
            failed = FinalAnswer(text="", decision=None, error=MetaRouterError.user_message)
            await _quietly(reply.finish(failed))
        return
    if answer is None:
        # a redelivery someone already answered: take back the placeholder shown while reading
        await _quietly(reply.withdraw())


def _thread_name(question: str) -> str:
    line = question.splitlines()[0] if question else "Question"
    return (line[:90] + "…") if len(line) > 90 else line or "Question"


# --- reactions ----------------------------------------------------------------------------------
async def on_reaction(adapter: DiscordAdapter, event: discord.RawReactionActionEvent, *, added: bool) -> None:
    """A reaction on any part of an answer, cached or not, is that person's rating of it."""
    me = adapter.client.user
    if me is None or event.user_id == me.id or (event.member is not None and event.member.bot):
        return
    await adapter.service.rate(
        platform="discord",
        channel_id=str(event.channel_id),
        message_id=str(event.message_id),
        user_id=str(event.user_id),
        reaction=translate.reaction_name(event.emoji, adapter.settings.reactions),
        added=added,
    )


# --- slash commands -----------------------------------------------------------------------------
def commands(adapter: DiscordAdapter) -> list[app_commands.Command]:  # type: ignore[type-arg]
    @app_commands.command(
        name="route", description="Which model would answer this, and why (only you see it)"
    )
    @app_commands.describe(question="The question to route; nothing is answered unless you press Run it")
    async def route(interaction: discord.Interaction, question: app_commands.Range[str, 1, 2000]) -> None:
        await route_command(adapter, interaction, question)

    @app_commands.command(
        name="models", description="The models MetaRouter can answer with (only you see it)"
    )
    @app_commands.describe(
        action="list (anyone), pull or remove (admins)", model="The model to pull or remove"
    )
    async def models(
        interaction: discord.Interaction,
        action: Literal["list", "pull", "remove"] = "list",
        model: str | None = None,
    ) -> None:
        await models_command(adapter, interaction, action, model)

    @app_commands.command(name="report", description="The usage report and its chart, posted in this channel")
    @app_commands.describe(period="How far back: 12h, 7d, 2w (default 7d)")
    async def report(interaction: discord.Interaction, period: str = "7d") -> None:
        await report_command(adapter, interaction, period)

    return [route, models, report]


async def report_command(adapter: DiscordAdapter, interaction: discord.Interaction, period: str) -> None:
    from core.reports import parse_since, report_for

    try:
        since = parse_since(period)
    except ValueError as exc:
        await interaction.response.send_message(f"Usage: `/report [PERIOD]`, e.g. 7d ({exc})", ephemeral=True)
        return
    store = adapter.service.store
    if store is None:
        await interaction.response.send_message("Reports need the database.", ephemeral=True)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        text, png = await report_for(store, since)
        await adapter.post_report(str(interaction.channel_id), text, png)
    except Exception:
        log.warning("/report failed", exc_info=True)
        await interaction.edit_original_response(content="⚠️ The report could not be built or posted.")
        return
    await interaction.edit_original_response(content="Report posted in this channel.")


async def route_command(adapter: DiscordAdapter, interaction: discord.Interaction, question: str) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        private = local_only_for(adapter.settings, *translate.places(interaction.channel))
        decision = await adapter.service.route(
            RouteRequest(query=question, channel_id=str(interaction.channel_id), local_only=private)
        )
    except MetaRouterError as exc:
        await interaction.edit_original_response(content=f"⚠️ {exc.user_message}")
        return
    content, embed = render.route_reply(decision)

    async def run(click: discord.Interaction) -> None:
        await guarded(click, run_routed(adapter, click, question))

    await interaction.edit_original_response(content=content, embed=embed, view=RunView(run))


async def run_routed(adapter: DiscordAdapter, interaction: discord.Interaction, question: str) -> None:
    """ "Run it" under a /route reply: the question goes into the channel and is answered there."""
    channel = interaction.channel
    me = adapter.client.user
    if me is None or not isinstance(channel, discord.abc.Messageable):
        await interaction.response.send_message(NO_QUESTION, ephemeral=True)
        return
    await interaction.response.edit_message(content="Answering in the channel…", view=None)
    person = interaction.user
    relay = await channel.send(
        embed=render.relay_embed(person.display_name, question), allowed_mentions=render.NO_MENTIONS
    )
    msg = translate.incoming(
        relay,
        me,
        [],
        answer_channel=channel,
        text=question,
        author_name=person.display_name,
        event_key=f"discord:i:{interaction.id}",
    )
    msg = _asked_by(msg, person)
    adapter.spawn(
        run_answer(adapter, msg, _reply(adapter, channel, relay)), name=f"discord-run-{interaction.id}"
    )


async def models_command(
    adapter: DiscordAdapter, interaction: discord.Interaction, action: str, model: str | None
) -> None:
    if action in ("pull", "remove"):
        if not adapter.is_admin(interaction.user):
            await interaction.response.send_message(ADMIN_ONLY, ephemeral=True)
            return
        if not model:
            await interaction.response.send_message(f"Name the model to {action}.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await (
            _pull(adapter, interaction, model) if action == "pull" else _remove(adapter, interaction, model)
        )
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        pages = render.model_pages(await adapter.service.models())
    except MetaRouterError as exc:
        await interaction.edit_original_response(content=f"⚠️ {exc.user_message}")
        return
    if len(pages) > 1:
        await interaction.edit_original_response(content=pages[0], view=PagesView(pages))
    else:
        await interaction.edit_original_response(content=pages[0])


async def _pull(adapter: DiscordAdapter, interaction: discord.Interaction, model: str) -> None:
    shown = 0.0
    try:
        async for p in adapter.service.pull(model):
            if time.monotonic() - shown >= PULL_EDIT_INTERVAL_S:
                done = f"{p.percent:.0f}%" if p.percent is not None else p.status
                await interaction.edit_original_response(content=f"⏳ Pulling {p.model}: {done}")
                shown = time.monotonic()
    except MetaRouterError as exc:
        await interaction.edit_original_response(content=f"⚠️ {exc.user_message}")
        return
    await interaction.edit_original_response(content=f"✅ {model} is pulled and ready.")


async def _remove(adapter: DiscordAdapter, interaction: discord.Interaction, model: str) -> None:
    try:
        hosts = await adapter.service.remove(model)
    except MetaRouterError as exc:
        await interaction.edit_original_response(content=f"⚠️ {exc.user_message}")
        return
    await interaction.edit_original_response(content=f"🗑️ Removed {model} from {', '.join(hosts)}.")


# --- answer buttons -----------------------------------------------------------------------------
async def toggle_details(
    adapter: DiscordAdapter, interaction: discord.Interaction, answer_id: int, *, expand: bool
) -> None:
    """Expands or collapses the routing embed; the answer's text is left as it is."""
    try:
        decision = await asyncio.wait_for(adapter.service.decision_for_answer(answer_id), 2.0)
    except TimeoutError:
        decision = None
    if decision is None:
        await interaction.response.send_message(GONE, ephemeral=True)
        return
    embed = render.decision_embed(decision, expanded=expand)
    old = interaction.message.embeds if interaction.message else []
    if old and old[0].footer.text:  # the answer's notes stay
        embed.set_footer(text=old[0].footer.text)
    await interaction.response.edit_message(
        embed=embed, view=answer_view(answer_id, decision, expanded=expand)
    )


async def rerun(
    adapter: DiscordAdapter, interaction: discord.Interaction, answer_id: int, index: int
) -> None:
    """Answers the question again with the decision's alternative number `index`, as a new answer."""
    await interaction.response.defer()
    me = adapter.client.user
    answer = interaction.message
    decision = await adapter.service.decision_for_answer(answer_id)
    if me is None or answer is None or decision is None or index >= len(decision.alternatives):
        await interaction.followup.send(GONE, ephemeral=True)
        return
    question = await translate.question_of(answer, me)
    if question is None:
        await interaction.followup.send(NO_QUESTION, ephemeral=True)
        return
    relay = translate.relayed_question(question, me)
    earlier = await translate.earlier_messages(question, adapter.settings.discord_history_limit)
    channel = answer.channel
    msg = translate.incoming(
        question,
        me,
        earlier,
        answer_channel=channel,
        text=relay[1] if relay else None,
        author_name=relay[0] if relay else None,
        event_key=f"discord:i:{interaction.id}",
    )
    msg = _asked_by(msg, interaction.user)
    reply_to = question if question.channel.id == channel.id else None  # else: the answer's thread
    adapter.spawn(
        run_answer(adapter, msg, _reply(adapter, channel, reply_to), model=decision.alternatives[index]),
        name=f"discord-rerun-{interaction.id}",
    )


def _asked_by(msg: IncomingMessage, person: discord.abc.User) -> IncomingMessage:
    """The person who pressed the button is the one asking (and the one whose request it is)."""
    return replace(msg, user_id=str(person.id))


async def guarded(interaction: discord.Interaction, op: Awaitable[None]) -> None:
    """Runs a button's handler; a failure is told to the person who pressed it, in words."""
    try:
        await op
    except Exception:
        log.exception("button handler failed")
        await _tell(interaction, MetaRouterError.user_message)


async def on_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    log.error("slash command failed", exc_info=error)
    await _tell(interaction, MetaRouterError.user_message)


async def _tell(interaction: discord.Interaction, text: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the user about a failure", exc_info=True)


async def _quietly(op: Awaitable[object]) -> None:
    try:
        await op
    except discord.HTTPException:
        log.warning("Discord refused a message", exc_info=True)
