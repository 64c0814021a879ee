"""Buttons. The answer's buttons are persistent: their custom_id carries the answer id, and a click
after a restart is matched by pattern (discord.py's DynamicItem), the decision read back from the
database. The /route and /models buttons live only in ephemeral replies, so plain views do there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from core.types import Decision

MAX_RERUNS = 2  # "Try <alternative>" buttons under an answer


def _handlers() -> Any:
    # imported when a button is pressed: handlers build these views, so a top-level import would cycle
    from bot.discord import handlers

    return handlers


# An answer id is negative while the database is down (a provisional id, core/store/outbox.py).
class DetailsButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"mr:why:(?P<answer>-?\d+):(?P<open>[01])"
):
    """Expands the routing embed under an answer, or collapses it again."""

    def __init__(self, answer_id: int, expanded: bool) -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                label="Hide routing" if expanded else "Why this model?",
                custom_id=f"mr:why:{answer_id}:{int(expanded)}",
            )
        )
        self.answer_id = answer_id
        self.expanded = expanded

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> DetailsButton:
        return cls(int(match["answer"]), match["open"] == "1")

    async def callback(self, interaction: discord.Interaction) -> None:
        h = _handlers()
        adapter = interaction.client.adapter  # type: ignore[attr-defined]
        await h.guarded(
            interaction, h.toggle_details(adapter, interaction, self.answer_id, expand=not self.expanded)
        )


class RerunButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"mr:again:(?P<answer>-?\d+):(?P<alt>\d)"
):
    """Answers the same question again with one of the decision's alternatives."""

    def __init__(self, answer_id: int, index: int, model: str = "") -> None:
        super().__init__(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                label=f"Try {model}"[:80] if model else "Try another model",
                custom_id=f"mr:again:{answer_id}:{index}",
            )
        )
        self.answer_id = answer_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> RerunButton:
        return cls(int(match["answer"]), int(match["alt"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        h = _handlers()
        adapter = interaction.client.adapter  # type: ignore[attr-defined]
        await h.guarded(interaction, h.rerun(adapter, interaction, self.answer_id, self.index))


PERSISTENT_ITEMS = (DetailsButton, RerunButton)


def answer_view(answer_id: int, decision: Decision, *, expanded: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(DetailsButton(answer_id, expanded))
    for i, model in enumerate(decision.alternatives[:MAX_RERUNS]):
        view.add_item(RerunButton(answer_id, i, model))
    return view


OnClick = Callable[[discord.Interaction], Awaitable[None]]


class RunView(discord.ui.View):
    """Under an ephemeral /route reply: answer the routed question in the channel."""

    def __init__(self, on_run: OnClick, *, timeout: float = 900.0) -> None:
        super().__init__(timeout=timeout)
        self._on_run = on_run

    @discord.ui.button(label="Run it", style=discord.ButtonStyle.primary)
    async def run(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.stop()  # one answer per /route
        await self._on_run(interaction)


class PagesView(discord.ui.View):
    """Previous / next through pages of an ephemeral reply (only the person who asked sees it)."""

    def __init__(self, pages: list[str], *, timeout: float = 600.0) -> None:
        super().__init__(timeout=timeout)
        self.pages = pages
        self.page = 0
        self._sync()

    def _sync(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= len(self.pages) - 1

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        self.page = max(0, min(page, len(self.pages) - 1))
        self._sync()
        await interaction.response.edit_message(content=self.pages[self.page], view=self)

    @discord.ui.button(label="◀ Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page - 1)

    @discord.ui.button(label="Next ▶", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page + 1)
