"""The Discord adapter as people in a guild see it.

The real discord.py client logs in, syncs its commands and connects over a real websocket to the
loopback Discord double; the core answers with the Ollama double and routes with the OpenAI double;
answers are recorded in a real SQLite database. Tests play the people (posts, reactions, slash
commands, button presses) and assert on what the double received: messages, edits, interaction
responses.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.app import App, build_app
from bot.discord.client import DiscordAdapter
from bot.discord.handlers import CUT_BY_SHUTDOWN
from bot.discord.render import RELAY_FOOTER, RESTART_NOTE
from core.config import Settings
from core.errors import ConfigError
from core.store import MessageRef, Store, UnfinishedAnswer, create_engine, upgrade_database
from core.store.models import utcnow
from core.types import Decision
from tests.doubles.discord import EPHEMERAL, DiscordDouble, buttons, message_text
from tests.doubles.ollama import OllamaDouble
from tests.doubles.openai import OpenAIDouble
from tests.doubles.openai import Reply as OpenAIReply

MODEL = "llama3.2:3b"
ALTERNATIVE = "qwen2.5-coder:7b"


@dataclass
class Harness:
    """The bot on the double: start it, restart it (a new process as far as Discord is concerned),
    ask it things, and wait for its answers."""

    double: DiscordDouble
    ollama: OllamaDouble
    make: Callable[..., Settings]
    caplog: pytest.LogCaptureFixture
    app: App | None = None
    adapter: DiscordAdapter | None = None
    expect_errors: bool = False
    _apps: list[App] = field(default_factory=list)

    async def start(self, **overrides: Any) -> DiscordAdapter:
        if self.app is None:
            self.app = await build_app(self.make(**overrides))
            self._apps.append(self.app)
        self.adapter = DiscordAdapter(self.app.settings, self.app.service, guild_ready_timeout=0.1)
        await self.adapter.start()
        await self.adapter.wait_ready()
        return self.adapter

    async def restart(self) -> DiscordAdapter:
        assert self.adapter is not None
        await self.adapter.close()
        return await self.start()

    async def ask(
        self, text: str, *, person: dict[str, Any], channel: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        kw.setdefault("mention_bot", True)
        return await self.double.post(channel or self.double.general, person, text, **kw)

    def parts(self, question_id: str) -> list[dict[str, Any]]:
        """The bot's answer to a message: the chain of its replies, first part first."""
        found, current = [], question_id
        while nxt := self.double.replies_to(current):
            found.append(nxt[0])
            current = nxt[0]["id"]
        return found

    async def settled(self, within: float = 10.0) -> None:
        """Every answer the bot started has finished."""
        assert self.adapter is not None
        await self.double.wait_for(lambda: self.adapter.in_flight == 0, within)

    async def answer(self, question: dict[str, Any], within: float = 10.0) -> list[dict[str, Any]]:
        await self.double.wait_for(lambda: self.parts(question["id"]), within)
        await self.settled(within)
        return self.parts(question["id"])

    async def close(self) -> None:
        if self.adapter is not None:
            task = self.adapter.task
            assert task is not None and not task.done(), "the gateway connection ended during the test"
            await self.adapter.close()
        for app in self._apps:
            await app.close()
        if not self.expect_errors:
            errors = [
                r
                for r in self.caplog.records
                if r.levelno >= logging.ERROR and r.name.startswith(("discord", "bot"))
            ]
            assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def harness(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    discord_double: DiscordDouble,
    ollama_double: OllamaDouble,
    openai_double: OpenAIDouble,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Harness]:
    # discord.py's URLs are class attributes the adapter sets: restore them after the test
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    )
    ollama_double.add_model(MODEL, size_gb=2.0, parameter_size="3B")
    ollama_double.add_model(ALTERNATIVE, size_gb=4.7)
    openai_double.responder = lambda req: OpenAIReply.decision(
        recommended_model=MODEL, alternatives=[ALTERNATIVE], query_type="general", confidence=0.88
    )

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
            "ollama_host": ollama_double.url,
            "openai_api_key": "sk-test-key-123456",
            "openai_base_url": openai_double.base_url,
            "meta_router_enabled": True,
            "use_local_for_simple_queries": False,
            "discord_bot_token": discord_double.token,
            "discord_api_url": discord_double.api_url,
            "discord_edit_interval_s": 0.3,  # the throttling test uses the real 1.5 s
        }
        return make_settings(**(values | overrides))

    caplog.set_level(logging.WARNING)
    h = Harness(discord_double, ollama_double, make, caplog)
    yield h
    await h.close()


def fences_balanced(text: str) -> bool:
    return len(re.findall(r"^ {0,3}```", text, flags=re.M)) % 2 == 0


# --- the client -----------------------------------------------------------------------------------
async def test_start_up_reads_the_gateway_from_the_api_identifies_with_the_needed_intents_and_syncs(
    harness: Harness,
) -> None:
    double = harness.double
    await harness.start()

    assert double.calls("GET", r"/gateway/bot$")
    identify = double.identifies[0]
    intents = discord.Intents._from_value(identify["intents"])
    assert intents.message_content and intents.guild_messages and intents.dm_messages
    assert intents.guild_reactions and intents.dm_reactions and intents.guilds
    assert not intents.members  # no member chunking at start-up
    assert {c["name"] for c in double.commands[None]} == {"route", "models", "report"}
    route = next(c for c in double.commands[None] if c["name"] == "route")
    assert route["options"][0]["name"] == "question"


async def test_discord_unreachable_at_start_up_is_retried_in_the_background(harness: Harness) -> None:
    double = harness.double
    await double.stop()  # Discord is down when the bot starts
    starting = asyncio.create_task(harness.start())
    await asyncio.sleep(0.3)
    await double.start()  # back, at the same address

    await starting  # start() did not fail: the login was retried and the gateway connected
    alice = double.person("Alice")
    question = await harness.ask("are you there?", person=alice)
    assert await harness.answer(question)


async def test_a_rejected_token_is_a_configuration_error_naming_the_variable(harness: Harness) -> None:
    harness.app = app = await build_app(harness.make(discord_bot_token="not-the-token"))
    harness._apps.append(app)
    adapter = DiscordAdapter(app.settings, app.service)
    with pytest.raises(ConfigError) as err:
        await adapter.start()
    assert "DISCORD_BOT_TOKEN" in str(err.value) and "not-the-token" not in str(err.value)
    assert harness.double.identifies == []


async def test_commands_are_synced_per_guild_when_guilds_are_configured(harness: Harness) -> None:
    double = harness.double
    await harness.start(discord_guild_ids=double.guild_id)
    assert None not in double.commands
    assert {c["name"] for c in double.commands[double.guild_id]} == {"route", "models", "report"}
    # and a guild command works
    alice = double.person("Alice")
    interaction = await double.slash("models", person=alice, guild_command=True)
    await double.wait_for(lambda: interaction.original and "models on" in message_text(interaction.original))


# --- mentions, replies, threads ---------------------------------------------------------------------
async def test_a_mention_is_answered_in_a_reply_that_grows_from_a_placeholder(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = "Paris is the capital of France."
    await harness.start()
    alice = double.person("Alice")

    question = await harness.ask("what is the capital of France?", person=alice)
    parts = await harness.answer(question)

    assert len(parts) == 1
    answer = parts[0]
    assert answer["content"] == "Paris is the capital of France."
    first_post = double.calls("POST", rf"/channels/{double.general}/messages$")[0].body
    assert first_post["content"].startswith("⏳ Routing")  # the placeholder came before the answer
    assert str(first_post["message_reference"]["message_id"]) == question["id"]
    # the routing summary sits under the answer, collapsed, with its buttons
    summary = answer["embeds"][0]["description"]
    assert MODEL in summary and "general" in summary and "0.88" in summary and "openai" in summary
    labels = [b["label"] for b in buttons(answer)]
    assert labels == ["Why this model?", f"Try {ALTERNATIVE}"]
    # the model saw the question without the mention
    sent = ollama.calls("/api/chat")[0].body["messages"]
    assert sent[-1]["content"].endswith("what is the capital of France?")
    assert "<@" not in sent[-1]["content"]


async def test_other_bots_and_unaddressed_messages_are_not_answered_but_direct_messages_are(
    harness: Harness,
) -> None:
    double = harness.double
    await harness.start()
    alice, robot = double.person("Alice"), double.person("Robot", bot=True)

    from_bot = await harness.ask("hello other bot", person=robot)
    chatter = await double.post(double.general, alice, "just chatting, no mention")
    dm = double.dm_channel(alice)
    in_dm = await double.post(dm, alice, "hi in private")
    await harness.answer(in_dm)

    assert harness.parts(in_dm["id"])[0]["channel_id"] == dm
    assert harness.parts(from_bot["id"]) == [] and harness.parts(chatter["id"]) == []
    # the bot's own echoed messages did not start answers either: one answer, one chat call
    assert len(harness.ollama.calls("/api/chat")) == 1


async def test_the_reply_chain_is_the_conversation_and_uncached_messages_are_fetched(
    harness: Harness,
) -> None:
    double, ollama = harness.double, harness.ollama
    await harness.start()
    alice, bob = double.person("Alice"), double.person("Bob")
    # earlier messages the bot never saw over the gateway (before its start): not in its cache
    first = double.make_message(double.general, alice, "write fib in python", mention_bot=True)
    earlier_answer = double.make_message(double.general, double.bot, "def fib(n): ...", reply_to=first["id"])

    question = await harness.ask("now make it iterative", person=bob, reply_to=earlier_answer["id"])
    await harness.answer(question)

    assert double.calls("GET", rf"/channels/{double.general}/messages/{first['id']}$")  # fetched
    sent = ollama.calls("/api/chat")[0].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "Alice" in sent[1]["content"] and "write fib in python" in sent[1]["content"]
    assert sent[2]["content"] == "def fib(n): ..."
    assert "Bob" in sent[3]["content"] and sent[3]["content"].endswith("now make it iterative")


async def test_a_slow_conversation_to_read_gets_a_placeholder_first_and_a_redelivery_takes_it_back(
    harness: Harness,
) -> None:
    double = harness.double
    harness.ollama.reply = "Here you go."
    await harness.start()
    alice, bob = double.person("Alice"), double.person("Bob")
    first = double.make_message(double.general, alice, "draft an email", mention_bot=True)
    second = double.make_message(double.general, double.bot, "Dear team, ...", reply_to=first["id"])
    third = double.make_message(double.general, alice, "shorter please", reply_to=second["id"])
    double.slow("GET", r"/messages/\d+$", 0.6)  # fetching the uncached part of the chain is slow

    question = await harness.ask("and friendlier", person=bob, reply_to=third["id"])
    [answer] = await harness.answer(question)

    fetches = double.calls("GET", r"/messages/\d+$")
    placeholder = double.calls("POST", rf"/channels/{double.general}/messages$")[0]
    assert placeholder.body["content"] == "⏳ Reading the conversation…"
    assert placeholder.at < fetches[-1].answered_at  # shown while the chain was still being read
    assert answer["content"] == "Here you go."
    assert len(harness.ollama.calls("/api/chat")[0].body["messages"]) == 5  # system + 3 earlier + question

    # the gateway delivers the same mention again: the placeholder it gets is taken back
    await double.dispatch("MESSAGE_CREATE", double._for_gateway(question))
    await double.wait_for(lambda: double.deleted)
    await harness.settled()
    assert [m["id"] for m in double.replies_to(question["id"])] == [answer["id"]]
    assert double.deleted[0]["content"] == "⏳ Reading the conversation…"
    assert len(harness.ollama.calls("/api/chat")) == 1


async def test_a_mention_can_open_a_thread_whose_messages_are_the_conversation(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = "Use a deque."
    await harness.start(discord_thread_per_mention=True)
    alice = double.person("Alice")

    question = await harness.ask("fastest queue in python?", person=alice)
    await double.wait_for(lambda: double.by_bot(question["id"]))  # the thread has the question's id
    await harness.settled()
    assert double.calls("POST", rf"/channels/{double.general}/messages/{question['id']}/threads$")
    in_thread = double.by_bot(question["id"])
    assert [m["content"] for m in in_thread] == ["Use a deque."]
    assert double.by_bot(double.general) == []  # nothing in the channel itself

    ollama.reply = "collections.deque with popleft()."
    follow_up = await harness.ask("which method pops from the left?", person=alice, channel=question["id"])
    await harness.answer(follow_up)
    sent = ollama.calls("/api/chat")[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "fastest queue in python?" in sent[1]["content"]  # the thread's starter, from the channel
    assert sent[2]["content"] == "Use a deque."


# --- streaming ---------------------------------------------------------------------------------------
async def test_the_answer_streams_in_throttled_edits_and_a_rate_limit_is_waited_out(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    words = [f"word{i}" for i in range(80)]
    ollama.reply = " ".join(words)
    ollama.token_delay = 0.05  # about 4 s of streaming
    await harness.start(discord_edit_interval_s=1.5)  # the default
    double.fail("PATCH", r"/channels/\d+/messages/\d+$", 429, times=1)  # Retry after 0.3 s
    alice = double.person("Alice")

    question = await harness.ask("count for me", person=alice)
    [answer] = await harness.answer(question)

    assert answer["content"] == " ".join(words)
    edits = [e for e in double.edits_of(answer["id"]) if e.status == 200]
    shown = [e.body["content"] for e in edits]
    growing = [t for t in shown if t.startswith("word")]
    assert len(growing) >= 2 and growing[0] != growing[-1]  # people saw it grow
    assert all(a in b for a, b in zip(growing, growing[1:], strict=False))
    intermediate = [e.at for e in edits if not e.body.get("embeds")]
    gaps = [b - a for a, b in zip(intermediate, intermediate[1:], strict=False)]
    assert gaps and min(gaps) >= 1.4  # about one edit per 1.5 s, never a burst
    assert double.rate_limit_hits == 1
    refused = [r for r in double.edits_of(answer["id"]) if r.status == 429]
    assert len(refused) == 1 and edits[-1].at > refused[0].at  # retried after the 429, and landed


async def test_a_long_answer_continues_in_further_replies_with_the_code_block_kept_whole(
    harness: Harness,
) -> None:
    double, ollama = harness.double, harness.ollama
    prose = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 8 for i in range(6))
    code = "\n".join(f"    total += compute_value({i}) * factor  # step {i}" for i in range(40))
    block = f"```python\ndef run(factor):\n    total = 0\n{code}\n    return total\n```"
    reply = f"{prose}\n\n{block}\n\nThat is all."
    assert len(reply) > 3000
    ollama.reply = reply
    await harness.start()
    alice = double.person("Alice")

    question = await harness.ask("explain with code", person=alice)
    parts = await harness.answer(question)

    assert len(parts) >= 2
    texts = [p["content"] for p in parts]
    assert all(len(t) <= 2000 for t in texts)
    assert all(fences_balanced(t) for t in texts)
    joined = "\n".join(texts)
    positions = [joined.find(f"compute_value({i})") for i in range(40)]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)  # complete, in order
    assert texts[-1].endswith("That is all.")
    assert any(t.startswith("```python") for t in texts[1:])  # the block reopened where it was cut
    assert parts[-1]["embeds"] and not parts[0]["embeds"]  # the routing block under the last part


async def test_model_output_cannot_ping_everyone_roles_or_other_people(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    bob = double.person("Bob")
    ollama.reply = f"Sure @everyone and @here, ask <@&{double.admin_role}> or <@{bob['id']}>."
    await harness.start()
    alice = double.person("Alice")

    question = await harness.ask("who should I ask?", person=alice)
    [answer] = await harness.answer(question)

    assert "@everyone" in answer["content"]  # shown, but it pings no one
    assert answer["mention_everyone"] is False and answer["mention_roles"] == []
    assert [u["id"] for u in answer["mentions"]] == [alice["id"]]  # only the reply to the asker
    for req in double.calls("POST", r"/messages$") + double.calls("PATCH", r"/messages/\d+$"):
        assert req.body["allowed_mentions"]["parse"] == []


async def test_reconnect_and_resume_in_the_middle_of_an_answer_loses_and_duplicates_nothing(
    harness: Harness,
) -> None:
    double, ollama = harness.double, harness.ollama
    reply = " ".join(f"tok{i}" for i in range(40))
    ollama.reply = reply
    ollama.token_delay = 0.04
    await harness.start()
    alice, bob = double.person("Alice"), double.person("Bob")

    first = await harness.ask("tell me a long story", person=alice)
    first_seq = double.seq
    await double.wait_for(
        lambda: any("tok" in (e.body or {}).get("content", "") for e in double.calls("PATCH", ""))
    )
    # Discord asks the client to reconnect mid-answer; a mention arrives while it is away, and the
    # gateway replays from before the first mention, as a resumed session sometimes does
    double.replay_from(first_seq)
    await double.reconnect()
    second = await harness.ask("and a short one?", person=bob)

    await double.wait_for(lambda: double.resumes)
    await harness.answer(second)
    await harness.answer(first)

    assert len(double.identifies) == 1 and double.resumes[0]["seq"] >= first_seq  # resumed, not re-identified
    [answer] = harness.parts(first["id"])
    assert answer["content"] == reply
    streamed_on = [
        e for e in double.edits_of(answer["id"]) if e.at > double.resumed_at[0] and e.status == 200
    ]
    assert streamed_on  # the answer kept growing across the reconnect
    assert len(harness.parts(second["id"])) == 1
    assert len(double.replies_to(first["id"])) == 1  # the replayed mention was not answered again
    assert len(ollama.calls("/api/chat")) == 2


# --- errors --------------------------------------------------------------------------------------------
async def test_ollama_down_is_said_in_words_never_silence_or_a_traceback(harness: Harness) -> None:
    double = harness.double
    await harness.start()
    await harness.app.service.models()  # the inventory knew the models before the server went away
    await harness.ollama.stop()
    alice = double.person("Alice")

    question = await harness.ask("what is the capital of Peru?", person=alice)
    [answer] = await harness.answer(question)

    # the core's own sentence for it (which names the hosts), as on Slack
    assert (
        answer["content"].startswith("⚠️ No Ollama server")
        and "no local model can answer" in answer["content"]
    )
    assert "Traceback" not in message_text(answer)


# --- the routing decision: expand, collapse, re-run ------------------------------------------------
async def test_the_routing_details_expand_and_collapse_after_a_restart_without_changing_the_answer(
    harness: Harness,
) -> None:
    double = harness.double
    harness.ollama.reply = "Forty-two."
    await harness.start()
    alice = double.person("Alice")
    question = await harness.ask("meaning of life?", person=alice)
    [answer] = await harness.answer(question)

    await harness.restart()  # a new process: the button must still work, its decision from the database
    why = next(b for b in buttons(answer) if b["label"] == "Why this model?")
    click = await double.click(answer, why["custom_id"], person=alice)
    await double.wait_for(lambda: click.callbacks)

    assert click.callback_types == [7] and click.acked_after < 3.0
    expanded = double.messages[answer["id"]]
    assert expanded["content"] == "Forty-two."
    details = message_text(expanded)
    assert "Why:" in details and f"Alternatives: {ALTERNATIVE}" in details and "Decided by: openai" in details

    hide = next(b for b in buttons(expanded) if b["label"] == "Hide routing")
    again = await double.click(expanded, hide["custom_id"], person=alice)
    await double.wait_for(lambda: again.callbacks)
    collapsed = double.messages[answer["id"]]
    assert collapsed["content"] == "Forty-two."
    assert "Why:" not in message_text(collapsed) and MODEL in collapsed["embeds"][0]["description"]


async def test_re_run_answers_the_same_question_with_the_alternative(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    await harness.start()
    alice, bob = double.person("Alice"), double.person("Bob")
    question = await harness.ask("reverse a linked list", person=alice)
    [answer] = await harness.answer(question)

    again = next(b for b in buttons(answer) if b["label"] == f"Try {ALTERNATIVE}")
    click = await double.click(answer, again["custom_id"], person=bob)
    await double.wait_for(lambda: len(double.replies_to(question["id"])) == 2)
    await harness.settled()

    assert click.acked_after < 3.0
    second = double.replies_to(question["id"])[1]
    assert ALTERNATIVE in second["embeds"][0]["description"]
    chats = ollama.calls("/api/chat")
    assert [c.body["model"] for c in chats] == [MODEL, ALTERNATIVE]
    assert chats[1].body["messages"][-1]["content"].endswith("reverse a linked list")


# --- slash commands ------------------------------------------------------------------------------------
async def test_route_answers_only_the_asker_within_the_deadline_and_run_it_answers_in_the_channel(
    harness: Harness,
) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = "Use sorted()."
    await harness.start()
    alice = double.person("Alice")

    route = await double.slash("route", {"question": "how do I sort a list?"}, person=alice)
    await double.wait_for(lambda: route.original and "Routing:" in (route.original.get("content") or ""))

    assert route.acked_after < 3.0 and route.callback_types == [5]  # deferred at once: routing may be slow
    assert route.original["flags"] & EPHEMERAL
    shown = message_text(route.original)
    assert MODEL in shown and "Why:" in shown
    assert ollama.calls("/api/chat") == []  # /route answers nothing by itself

    run = next(b for b in buttons(route.original) if b["label"] == "Run it")
    click = await double.click(route.original, run["custom_id"], person=alice)
    relay = await double.wait_for(
        lambda: next(
            (m for m in double.by_bot(double.general) if m["embeds"] and RELAY_FOOTER in message_text(m)),
            None,
        )
    )
    [answer] = await harness.answer(relay)
    assert click.acked_after < 3.0
    assert "Alice" in message_text(relay) and "how do I sort a list?" in message_text(relay)
    assert answer["content"] == "Use sorted()."
    assert relay["mentions"] == [] and not relay["mention_everyone"]


async def test_models_lists_the_inventory_to_the_asker_in_pages(harness: Harness) -> None:
    double = harness.double
    for i in range(14):
        harness.ollama.add_model(f"extra-model-{i:02d}:1b", size_gb=1.0)
    await harness.start()
    alice = double.person("Alice")

    listing = await double.slash("models", person=alice)
    await double.wait_for(lambda: listing.original and "page 1/" in (listing.original.get("content") or ""))

    assert listing.acked_after < 3.0 and listing.original["flags"] & EPHEMERAL
    first = listing.original["content"]
    assert len(first) <= 2000 and "extra-model-00:1b" in first and MODEL not in first
    nxt = next(b for b in buttons(listing.original) if "Next" in b["label"])
    click = await double.click(listing.original, nxt["custom_id"], person=alice)
    await double.wait_for(lambda: click.callbacks)
    second = listing.original["content"]
    assert "page 2/" in second and MODEL in second and len(second) <= 2000


async def test_models_pull_and_remove_are_for_admins_only(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.add_pullable("phi3:mini", size_gb=2.2)
    alice, mod = double.person("Alice"), double.person("Mod", roles=(double.admin_role,))
    await harness.start(discord_admin_user_ids=alice["id"], discord_admin_role_ids=double.admin_role)
    bob = double.person("Bob")

    refused = await double.slash("models", {"action": "pull", "model": "phi3:mini"}, person=bob)
    await double.wait_for(lambda: refused.original)
    assert refused.original["content"] == "Only MetaRouter admins can pull or remove models."
    assert refused.original["flags"] & EPHEMERAL and "phi3:mini" not in ollama.models

    pull = await double.slash("models", {"action": "pull", "model": "phi3:mini"}, person=alice)
    await double.wait_for(lambda: pull.original and pull.original["content"].startswith("✅"))
    assert pull.acked_after < 3.0 and "phi3:mini" in ollama.models

    remove = await double.slash("models", {"action": "remove", "model": "phi3:mini"}, person=mod)
    await double.wait_for(lambda: remove.original and remove.original["content"].startswith("🗑️"))
    assert "phi3:mini" not in ollama.models


# --- reactions ---------------------------------------------------------------------------------------
async def test_reactions_on_uncached_answers_rate_them_once_per_person_and_removal_withdraws(
    harness: Harness,
) -> None:
    double = harness.double
    harness.ollama.reply = "\n\n".join("x" * 150 + f" part {i}" for i in range(20))  # a two-part answer
    await harness.start()
    alice, bob = double.person("Alice"), double.person("Bob")
    question = await harness.ask("a long one please", person=alice)
    parts = await harness.answer(question)
    assert len(parts) == 2
    await harness.restart()  # the answers are no longer in the client's message cache
    store = harness.app.store

    async def stats() -> tuple[float | None, int]:
        s = (await store.model_stats()).get(MODEL)
        return (s.satisfaction, s.feedback_count) if s else (None, 0)

    await double.react(double.general, parts[1]["id"], bob, "👍")
    await double.react(double.general, parts[0]["id"], bob, "❤")  # ❤ without the variation selector
    await double.react(double.general, question["id"], bob, "👎")  # not an answer: ignored
    await double.react(double.general, parts[0]["id"], double.bot, "👎")  # the bot's own: ignored
    await double.react(double.general, parts[0]["id"], alice, "👎")
    await _until(lambda: stats(), lambda v: v[1] == 2)
    assert await stats() == (0.5, 2)  # Bob once (his latest reaction), Alice once

    await double.react(double.general, parts[0]["id"], alice, "👎", remove=True)
    await _until(lambda: stats(), lambda v: v[1] == 1)
    assert await stats() == (1.0, 1)


async def _until(get: Callable[[], Any], ok: Callable[[Any], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not ok(await get()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- shutdown and reports -------------------------------------------------------------------------------
async def test_close_lets_an_answer_in_progress_finish(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = " ".join(f"w{i}" for i in range(15))
    ollama.token_delay = 0.05
    adapter = await harness.start()
    alice = double.person("Alice")
    question = await harness.ask("take your time", person=alice)
    await double.wait_for(lambda: harness.parts(question["id"]))

    await adapter.close(grace_s=10)

    [answer] = harness.parts(question["id"])
    assert answer["content"] == ollama.reply and answer["embeds"]
    harness.adapter = None


async def test_an_answer_still_running_when_the_shutdown_grace_ends_says_it_was_cut_short(
    harness: Harness,
) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = " ".join(f"w{i}" for i in range(100))
    ollama.token_delay = 0.05  # 5 s: longer than the deadline
    adapter = await harness.start()
    alice = double.person("Alice")
    question = await harness.ask("a very long answer please", person=alice)
    await double.wait_for(lambda: any("w1" in e.body.get("content", "") for e in double.calls("PATCH", "")))

    await adapter.close(grace_s=0.5)
    harness.adapter = None

    [answer] = harness.parts(question["id"])
    assert answer["content"].startswith("w0 w1")
    assert answer["content"].endswith(f"⚠️ {CUT_BY_SHUTDOWN}")


async def test_an_answer_a_stopped_process_left_half_written_is_marked_interrupted(harness: Harness) -> None:
    double, ollama = harness.double, harness.ollama
    ollama.reply = "w0 w1 w2 w3 w4 w5"
    ollama.stall_after_tokens = 2  # this answer never finishes: its process is gone
    adapter = await harness.start()
    question = await harness.ask("a question", person=double.person("Alice"))
    await double.wait_for(lambda: any("w1" in e.body.get("content", "") for e in double.calls("PATCH", "")))
    [part] = harness.parts(question["id"])
    left = UnfinishedAnswer(
        1, 1, MODEL, ollama.url, utcnow(), (MessageRef("discord", part["channel_id"], part["id"]),)
    )

    await adapter.mark_interrupted([left])  # what serve's start-up sweep hands the adapter

    [part] = harness.parts(question["id"])
    assert part["content"].startswith("w0 w1")  # what was shown stays
    assert part["content"].endswith(RESTART_NOTE)
    await ollama.stop()  # lets the stalled stream end


async def test_reports_are_posted_with_their_chart(harness: Harness) -> None:
    double = harness.double
    adapter = await harness.start()
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64

    await adapter.post_report(double.random, "**Weekly report**\n42 answers, 90% liked", png)

    [posted] = double.by_bot(double.random)
    assert posted["content"].startswith("**Weekly report**") and posted["attachments"]
    upload = double.calls("POST", rf"/channels/{double.random}/messages$")[-1]
    assert upload.files == [png]


# --- what the persistent buttons read back from the core --------------------------------------------
async def test_the_decision_behind_an_answer_is_read_back_from_the_database(db_url: str) -> None:
    await upgrade_database(db_url)
    store = Store(create_engine(db_url))
    try:
        decision = Decision(
            recommended_model=MODEL,
            confidence=0.8,
            reasoning="short and general",
            query_type="general",
            complexity="simple",
            alternatives=[ALTERNATIVE],
            source="local",
            fallback_reason="no_api_key",
        )
        request = await store.record_request(
            platform="discord", channel_id="C", user_id="U", query="hi", decision=decision
        )
        answer = await store.start_answer(request, MODEL, "http://127.0.0.1:11434")
        assert await store.answer_decision(answer) == decision
        assert await store.answer_decision(answer + 1000) is None
    finally:
        await store.close()
