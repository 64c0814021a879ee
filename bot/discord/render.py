"""Core results as Discord shows them: message text, the routing embed, the /route and /models replies.

The routing decision lives in an embed under the answer rather than in its text, so expanding and
collapsing it never touches the answer, and the bot's messages read back as pure answers when they
become the conversation's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.common.render import decision_details, decision_summary
from core.chat import FinalAnswer
from core.types import Decision, Inventory

MESSAGE_LIMIT = 2000
EMBED_COLOUR = discord.Colour.blurple()
# Marks the bot's post of a question asked with /route → "Run it", so it reads back as the person's turn.
RELAY_FOOTER = "asked with /route"

# Model output is untrusted: it may ping the person asking (the reply), never anyone else or a role.
ANSWER_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
NO_MENTIONS = discord.AllowedMentions.none()
RESTART_NOTE = (
    "⚠️ *Interrupted by a restart: the bot stopped before this answer was finished. "
    "Mention me again for a full answer.*"
)


def status_text(text: str) -> str:
    return f"⏳ {text}"


def answer_text(answer: FinalAnswer) -> str:
    """The answer's text as posted; an error is said in words, after whatever part did arrive."""
    if not answer.error:
        return answer.text or "(The model returned an empty answer.)"
    warning = f"⚠️ {answer.error}"
    if answer.text:
        return f"{answer.text}\n\n{warning}"
    return warning


def decision_embed(answer_or_decision: FinalAnswer | Decision, *, expanded: bool = False) -> discord.Embed:
    """The one-line routing summary, or with `expanded` the whole decision; notes go in the footer."""
    if isinstance(answer_or_decision, FinalAnswer):
        decision, notes = answer_or_decision.decision, answer_or_decision.notes
    else:
        decision, notes = answer_or_decision, ()
    assert decision is not None
    summary = decision_summary(decision)
    if expanded:
        embed = discord.Embed(
            title=summary, description="\n".join(decision_details(decision)), colour=EMBED_COLOUR
        )
    else:
        embed = discord.Embed(description=f"-# {summary}", colour=EMBED_COLOUR)
    if notes:
        embed.set_footer(text=" ".join(notes)[:2000])
    return embed


@dataclass(frozen=True)
class Final:
    """What goes on the last message of an answer besides its text."""

    embed: discord.Embed | None
    view: discord.ui.View | None


def route_reply(decision: Decision) -> tuple[str, discord.Embed]:
    """`/route`: the summary as text, the details in an embed."""
    embed = discord.Embed(description="\n".join(decision_details(decision)), colour=EMBED_COLOUR)
    return f"**Routing:** {decision_summary(decision)}", embed


def relay_embed(author_name: str, question: str) -> discord.Embed:
    embed = discord.Embed(description=question[:4096], colour=EMBED_COLOUR)
    embed.set_author(name=author_name[:256])
    embed.set_footer(text=RELAY_FOOTER)
    return embed


def model_pages(inv: Inventory, *, per_page: int = 12) -> list[str]:
    """The inventory as pages of at most `per_page` models that each fit one message."""
    lines = []
    for m in sorted(inv.models, key=lambda m: (not m.local, m.name)):
        where = "local" if m.local else "not pulled"
        size = f"{m.size_gb:.1f} GB" if m.size_gb is not None else "size unknown"
        sat = (
            f"{m.stats.satisfaction:.0%} 👍 of {m.stats.feedback_count}"
            if m.stats.satisfaction is not None
            else "unrated"
        )
        specs = ", ".join(m.specializations) or "general"
        lines.append(f"**{m.name}** · {where} · {size} · {specs} · {sat}"[:300])
    header = f"{len(inv.models)} models on {len(inv.hosts)} Ollama host(s)"
    if inv.hosts_down:
        header += f" ({len(inv.hosts_down)} not answering)"
    if not lines:
        return [header + "\nNo models known."]
    chunks = [lines[i : i + per_page] for i in range(0, len(lines), per_page)]
    total = len(chunks)
    return [f"{header} · page {n}/{total}\n" + "\n".join(chunk) for n, chunk in enumerate(chunks, 1)]


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
