"""The whole pipeline through ChatService: route → generate → store, as a user of any adapter sees it.

Real parts throughout: the openai and ollama clients against the loopback doubles, the trained local
router, and a real database (SQLite and PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot.app import App
from core.chat import FinalAnswer, IncomingMessage
from core.types import Turn
from tests.doubles.openai import Reply as OpenAIReply


@dataclass
class RecordingReply:
    """What a chat user would see, in order."""

    statuses: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)
    final: FinalAnswer | None = None
    ids: list[str] = field(default_factory=lambda: ["m1", "m2"])  # a two-message answer

    async def status(self, text: str) -> None:
        self.statuses.append(text)

    async def stream(self, text: str) -> None:
        self.streamed.append(text)

    async def finish(self, answer: FinalAnswer) -> list[str]:
        self.final = answer
        return self.ids


def message(text: str, **kw: object) -> IncomingMessage:
    values: dict[str, object] = {"platform": "slack", "channel_id": "C1", "user_id": "U1", "text": text}
    values.update(kw)
    return IncomingMessage(**values)  # type: ignore[arg-type]


@pytest.fixture
async def app(core_app, db_url):
    return await core_app(database_url=db_url)


async def test_question_is_routed_streamed_recorded_and_rated(app: App, ollama_double, openai_double) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", query_type="coding"))
    ollama_double.reply = "Add a base case: if n < 2: return n"
    reply = RecordingReply()

    answer = await app.service.handle(
        message("Why does my fib recursion never stop?", event_key="Ev1", author_name="Alice"), reply
    )

    assert answer is not None and answer.error is None
    assert reply.statuses[0] == "Routing…"
    assert reply.streamed[-1] == "Add a base case: if n < 2: return n"
    assert len(reply.streamed) > 1  # it grew token by token
    assert answer.decision is not None and answer.decision.source == "openai"
    assert answer.decision.recommended_model == "qwen2.5-coder:7b"
    chat = ollama_double.calls("/api/chat")[0].body
    assert chat["model"] == "qwen2.5-coder:7b"
    assert chat["messages"][-1]["content"].endswith("Why does my fib recursion never stop?")

    # a reaction on the second message of the answer rates the whole answer, once per person
    assert await app.service.rate(
        platform="slack", channel_id="C1", message_id="m2", user_id="U2", reaction="+1", added=True
    )
    assert await app.service.rate(
        platform="slack", channel_id="C1", message_id="m1", user_id="U2", reaction="heart", added=True
    )
    stats = (await app.store.model_stats())["qwen2.5-coder:7b"]
    assert (stats.satisfaction, stats.feedback_count, stats.requests) == (1.0, 1, 1)
    inv = await app.service.models()
    assert inv.get("qwen2.5-coder:7b").stats.feedback_count == 1  # the inventory sees it at once

    # a reaction that is not in the map, or on some other message, is ignored
    assert not await app.service.rate(
        platform="slack", channel_id="C1", message_id="m1", user_id="U3", reaction="eyes", added=True
    )
    assert not await app.service.rate(
        platform="slack", channel_id="C1", message_id="other", user_id="U3", reaction="+1", added=True
    )
    # removing the reaction that stands withdraws the rating
    await app.service.rate(
        platform="slack", channel_id="C1", message_id="m1", user_id="U2", reaction="heart", added=False
    )
    assert (await app.store.model_stats())["qwen2.5-coder:7b"].satisfaction is None


async def test_redelivered_event_is_answered_once(app: App, ollama_double, openai_double) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="llama3.2:3b"))
    first = await app.service.handle(message("hello there", event_key="Ev42"), RecordingReply())
    again = RecordingReply()
    second = await app.service.handle(message("hello there", event_key="Ev42"), again)
    assert first is not None and second is None
    assert again.final is None and again.streamed == []
    assert len(ollama_double.calls("/api/chat")) == 1


async def test_meta_router_down_still_answers_with_the_local_decision(app: App, ollama_double, openai_double):
    openai_double.push(OpenAIReply.server_error(), OpenAIReply.server_error(), OpenAIReply.server_error())
    ollama_double.reply = "def add(a, b):\n    return a + b"
    answer = await app.service.handle(
        message("write a python function that adds two numbers"), RecordingReply()
    )
    assert answer is not None and answer.error is None
    assert answer.decision is not None
    assert (answer.decision.source, answer.decision.fallback_reason) == ("local", "api_error")
    assert answer.text.startswith("def add")


async def test_ollama_down_gives_one_clear_error_and_no_traceback(app: App, ollama_double, openai_double):
    openai_double.push(OpenAIReply.decision(recommended_model="llama3.2:3b"))
    await app.service.models()
    await ollama_double.stop()
    reply = RecordingReply()
    answer = await app.service.handle(message("what is the capital of Peru"), reply)
    assert answer is not None and answer.text == ""
    assert answer.error is not None and "Ollama" in answer.error
    assert "Traceback" not in answer.error and reply.final is answer


async def test_thread_history_reaches_the_model_in_order(app: App, ollama_double, openai_double) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b"))
    history = (
        Turn(role="user", content="write fib in python", author="Alice"),
        Turn(role="assistant", content="def fib(n): ..."),
    )
    await app.service.handle(
        message("now make it iterative", history=history, author_name="Bob"), RecordingReply()
    )
    sent = ollama_double.calls("/api/chat")[0].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "Alice" in sent[1]["content"] and "write fib in python" in sent[1]["content"]
    assert sent[3]["content"].endswith("now make it iterative") and "Bob" in sent[3]["content"]
