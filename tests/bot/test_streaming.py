"""The streaming sink against an in-memory chat: what a reader of the channel would see, and when.

The Slack tests drive the same sink over the real slack-sdk; these pin down its timing rules with a
transport whose behaviour (latency, 429s, deleted messages) a test controls exactly.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

from bot.common.streaming import Limits, MessageGone, RetryLater, StreamingSink

INTERVAL = 0.1


@dataclass
class Write:
    at: float
    op: str  # "post" | "edit"
    mid: str
    text: str
    extra: Any


@dataclass
class FakeChat:
    """A channel: messages by id, every write with its time, and scripted failures."""

    limit: int
    messages: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    rate_limited_until: float = 0.0
    latency: float = 0.0
    posted: int = 0

    def _check(self, text: str) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)
        if time.monotonic() < self.rate_limited_until:
            raise AssertionError("wrote while rate limited")
        assert text, "empty message"
        assert len(text) <= self.limit, f"message of {len(text)} > {self.limit}"

    async def post(self, text: str, extra: Any = None) -> str:
        await asyncio.sleep(self.latency)
        self._check(text)
        self.posted += 1
        mid = f"m{self.posted}"
        self.messages[mid] = text
        self.extras[mid] = extra
        self.writes.append(Write(time.monotonic(), "post", mid, text, extra))
        return mid

    async def edit(self, message_id: str, text: str, extra: Any = None) -> None:
        await asyncio.sleep(self.latency)
        self._check(text)
        if message_id not in self.messages:
            raise MessageGone(message_id)
        self.messages[message_id] = text
        self.extras[message_id] = extra
        self.writes.append(Write(time.monotonic(), "edit", message_id, text, extra))

    def shown(self, ids: list[str]) -> list[str]:
        return [self.messages[i] for i in ids]


def tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


async def stream(sink: StreamingSink, text: str, *, delay: float = 0.0) -> None:
    so_far = ""
    for piece in tokens(text):
        so_far += piece
        await sink.update(so_far)
        await asyncio.sleep(delay)


def min_gap_per_message(writes: list[Write]) -> float:
    gaps = []
    by_id: dict[str, float] = {}
    for w in writes:
        if w.mid in by_id:
            gaps.append(w.at - by_id[w.mid])
        by_id[w.mid] = w.at
    return min(gaps) if gaps else float("inf")


async def test_placeholder_at_once_then_throttled_edits_then_the_answer() -> None:
    chat = FakeChat(limit=3000)
    sink = StreamingSink(chat, Limits(chars=3000, interval_s=INTERVAL))
    t0 = time.monotonic()
    await sink.status("Routing…")
    assert chat.writes[0].op == "post" and chat.writes[0].text == "Routing…"
    assert chat.writes[0].at - t0 < 0.05
    await sink.status("Pulling llama3.2:3b 43%")
    text = "word " * 300
    await stream(sink, text, delay=0.002)  # ~0.6 s of tokens
    ids = await sink.finish(text.strip(), extra="footer")

    assert ids == ["m1"] and chat.messages["m1"] == text.strip()
    assert chat.extras["m1"] == "footer"
    # at most one write per interval per message (small slack for timer jitter)
    assert min_gap_per_message(chat.writes) >= INTERVAL * 0.9
    # yet it kept growing while the tokens came, not only at the end
    edits = [w for w in chat.writes if w.op == "edit"]
    assert len(edits) >= 3
    assert len(edits) <= (edits[-1].at - t0) / INTERVAL + 2


async def test_status_after_the_answer_started_does_not_hide_the_answer() -> None:
    chat = FakeChat(limit=3000)
    sink = StreamingSink(chat, Limits(chars=3000, interval_s=0.01))
    await sink.status("Routing…")
    await sink.update("The answer")
    await sink.status("Routing… again")
    ids = await sink.finish("The answer is 42")
    assert chat.shown(ids) == ["The answer is 42"]
    assert all("again" not in w.text for w in chat.writes)


async def test_long_answer_rolls_over_into_new_messages_in_order_with_fences_balanced() -> None:
    chat = FakeChat(limit=500)
    sink = StreamingSink(chat, Limits(chars=500, interval_s=0.01))
    code = "\n".join(f"print({i})  # line {i}" for i in range(60))
    text = "Intro paragraph.\n\n```python\n" + code + "\n```\n\n" + "Closing words. " * 40
    await sink.status("Routing…")
    await stream(sink, text)
    ids = await sink.finish(text)

    shown = chat.shown(ids)
    assert len(shown) >= 4
    assert all(len(s) <= 500 for s in shown)
    assert all(s.count("```") % 2 == 0 for s in shown)
    # the reader finds every line of code once, in order, across the messages
    seen = [ln for s in shown for ln in s.split("\n") if ln.startswith("print(")]
    assert seen == [ln for ln in code.split("\n")]
    assert shown[0].startswith("Intro") and shown[-1].rstrip().endswith("Closing words.")
    # messages were posted in order: each new one after the previous one was settled
    posts = [w for w in chat.writes if w.op == "post"]
    assert [p.mid for p in posts] == ids


async def test_rate_limit_holds_every_write_back_for_retry_after() -> None:
    chat = FakeChat(limit=3000)
    sink = StreamingSink(chat, Limits(chars=3000, interval_s=0.02))
    await sink.status("Routing…")

    def limited() -> RetryLater:
        chat.rate_limited_until = time.monotonic() + 0.3
        return RetryLater(0.3)

    chat.fail_next = [limited()]
    t0 = time.monotonic()
    await stream(sink, "a b c d e f", delay=0.03)
    ids = await sink.finish("a b c d e f")
    assert chat.shown(ids) == ["a b c d e f"]  # the FakeChat asserts no write landed while limited
    assert time.monotonic() - t0 >= 0.3


async def test_final_answer_survives_a_deleted_placeholder_and_a_failed_write() -> None:
    chat = FakeChat(limit=3000)
    sink = StreamingSink(chat, Limits(chars=3000, interval_s=0.01))
    await sink.status("Routing…")
    del chat.messages["m1"]  # someone deleted the placeholder
    chat.fail_next = [ConnectionError("reset")]
    ids = await sink.finish("Full answer")
    assert chat.shown(ids) == ["Full answer"]
    assert ids == ["m2"]


async def test_finish_without_any_placeholder_posts_the_answer() -> None:
    chat = FakeChat(limit=100)
    sink = StreamingSink(chat, Limits(chars=100, interval_s=0.01))
    text = "\n\n".join(f"Paragraph number {i} with some words." for i in range(8))
    ids = await sink.finish(text, extra={"buttons": 1})
    assert len(ids) > 1 and all(len(t) <= 100 for t in chat.shown(ids))
    assert [chat.extras[i] for i in ids] == [None] * (len(ids) - 1) + [{"buttons": 1}]
    assert "\n\n".join(chat.shown(ids)) == text


async def test_render_is_applied_and_measured() -> None:
    chat = FakeChat(limit=200)
    sink = StreamingSink(chat, Limits(chars=200, interval_s=0.01), render=lambda s: s.replace("&", "&amp;"))
    text = " ".join(["R&D"] * 100)  # 399 chars, 799 rendered
    ids = await sink.finish(text)
    shown = chat.shown(ids)
    assert len(shown) >= 4 and all(len(s) <= 200 for s in shown)
    assert " ".join(shown).replace("&amp;", "&").split() == text.split()


async def test_nothing_left_after_the_last_full_message_puts_the_footer_on_it() -> None:
    chat = FakeChat(limit=100)
    sink = StreamingSink(chat, Limits(chars=100, interval_s=0.01))
    text = "\n\n".join(f"Paragraph {i} has a handful of words in it." for i in range(6))
    await stream(sink, text + "\n\n" + " " * 150)  # the model ended with blank space; the final text drops it
    ids = await sink.finish(text, extra="footer")
    assert "…" not in chat.shown(ids)
    assert "\n\n".join(chat.shown(ids)) == text
    assert chat.extras[ids[-1]] == "footer"
