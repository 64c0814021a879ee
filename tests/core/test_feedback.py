"""Ratings steer routing: per query type, with the catalog as a prior, recent ratings weighing more,
a little bounded exploration in the local router, and past decisions shown to the meta-router.

Real parts: the store on SQLite and PostgreSQL, the trained local router, and the whole core against
the Ollama and OpenAI doubles where a prompt is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

from bot.app import App
from bot.common.render import disclosure_line
from core.chat import FinalAnswer, IncomingMessage
from core.routing.memory import DecisionMemory
from core.routing.selection import Exploration, select_model
from core.store import Store, create_engine, upgrade_database
from core.store.models import Feedback, RequestEmbedding
from core.types import Inventory, ModelInfo, ModelStats, Ratings
from tests.doubles.openai import Reply as OpenAIReply
from tests.helpers_usage import decision, seed_answer

A, B, WORSE = "coder-a:7b", "coder-b:7b", "weak:7b"


def model(name: str, coding: float, stats: ModelStats | None = None) -> ModelInfo:
    return ModelInfo(
        name=name,
        local=True,
        hosts=("http://127.0.0.1:11434",),
        loaded_on=(),
        size_gb=4.7,
        parameters_b=7.0,
        context_length=32768,
        specializations=("coding", "math"),
        scores={"coding": coding, "math": coding},
        catalogued=True,
        stats=stats or ModelStats(),
    )


def inventory(stats: dict[str, ModelStats]) -> Inventory:
    """Two comparable coders (85 and 82 for coding) and a clearly worse one (60)."""
    return Inventory(
        models=(
            model(A, 85, stats.get(A)),
            model(B, 82, stats.get(B)),
            model(WORSE, 60, stats.get(WORSE)),
        ),
        hosts=("http://127.0.0.1:11434",),
    )


def chosen(stats: dict[str, ModelStats], query_type: str = "coding", **kw: object) -> str:
    return select_model(query_type, "moderate", inventory(stats), **kw).model  # type: ignore[arg-type]


@pytest.fixture
async def store(db_url: str):
    await upgrade_database(db_url)
    s = Store(create_engine(db_url))
    yield s
    await s.close()


async def rate(store: Store, model_name: str, query_type: str, rating: int, times: int = 1) -> None:
    """An answer of `model_name` to a `query_type` question, rated `rating` by `times` people."""
    await seed_answer(store, model_name, datetime.now(UTC), ratings=(rating,) * times, query_type=query_type)


async def test_many_bad_ratings_move_a_task_to_a_comparable_model_and_one_does_not(store: Store) -> None:
    assert chosen(await store.model_stats()) == A

    await rate(store, A, "coding", -1)
    assert chosen(await store.model_stats()) == A  # the catalog's prior outweighs one vote

    await rate(store, A, "coding", -1, times=11)
    stats = await store.model_stats()
    assert chosen(stats) == B
    assert chosen(stats, "math") == A  # its maths answers were not rated: still the best for maths


async def test_old_ratings_count_less(store: Store) -> None:
    await rate(store, A, "coding", -1, times=12)
    assert chosen(await store.model_stats()) == B

    long_ago = datetime.now(UTC) - timedelta(days=200)
    async with store.engine.begin() as conn:
        await conn.execute(update(Feedback).values(updated_at=long_ago))
    stats = await store.model_stats(halflife_days=30)
    assert chosen(stats) == A  # 200 days is over six half-lives: twelve old votes weigh less than one
    assert chosen(await store.model_stats(halflife_days=365)) == B  # with a long memory they still count
    ratings = stats[A].by_type["coding"]
    assert ratings.votes == 12 and ratings.total == pytest.approx(12 * 0.5 ** (200 / 30), rel=0.05)
    # what people see stays the plain share of thumbs-up (CONTRACT.md: models --json)
    assert (stats[A].satisfaction, stats[A].feedback_count) == (0.0, 12)


def rated(positive: int, total: int) -> ModelStats:
    return ModelStats(
        satisfaction=positive / total,
        feedback_count=total,
        by_type={"coding": Ratings(positive, total, total, positive)},
    )


def test_exploration_tries_comparable_models_and_never_a_clearly_worse_one() -> None:
    # B is a little behind A on the catalog and has a few good ratings: worth trying now and then
    stats = {B: rated(3, 3), WORSE: rated(5, 5)}
    assert chosen(stats) == A
    picks = Counter(chosen(stats, explore=Exploration(0.05, random.Random(seed))) for seed in range(300))
    assert set(picks) == {A, B}
    assert picks[A] > 10 and picks[B] > 10
    # a seeded generator repeats itself
    again = [chosen(stats, explore=Exploration(0.05, random.Random(7))) for _ in range(2)]
    assert again[0] == again[1] == chosen(stats, explore=Exploration(0.05, random.Random(7)))


def test_exploration_is_off_without_ratings_and_without_a_margin() -> None:
    rng = random.Random(1)
    assert {chosen({}, explore=Exploration(0.05, rng)) for _ in range(100)} == {A}
    # ratings only for a model outside the margin: nothing comparable to learn about
    assert {chosen({WORSE: rated(9, 9)}, explore=Exploration(0.05, rng)) for _ in range(100)} == {A}
    assert {chosen({B: rated(3, 3)}, explore=Exploration(0.0, rng)) for _ in range(100)} == {A}


def test_exploration_draws_on_the_evidence() -> None:
    """Many bad ratings make a comparable model a rare pick, many good ones a frequent one."""
    rng = random.Random(3)
    bad = Counter(
        chosen({B: rated(20, 40), A: rated(0, 1)}, explore=Exploration(0.2, rng)) for _ in range(300)
    )
    good = Counter(
        chosen({B: rated(40, 40), A: rated(0, 1)}, explore=Exploration(0.2, rng)) for _ in range(300)
    )
    assert bad[B] < good[B]


def test_without_feedback_integration_ratings_do_not_steer_the_local_router(make_settings) -> None:
    stats = {A: rated(0, 12), B: rated(3, 3)}
    assert chosen(stats) == B
    assert chosen(stats, ratings=False) == A  # the catalog alone: 85 beats 82
    reasoning = select_model("coding", "moderate", inventory(stats), ratings=False).reasoning
    assert "ratings" not in reasoning  # not given as a reason when it was not one
    # and no exploration: a draw would learn from ratings that do not count
    assert Exploration.from_settings(make_settings(user_feedback_integration=False)) is None
    assert Exploration.from_settings(make_settings()) is not None
    rng = random.Random(5)
    picks = {chosen(stats, explore=Exploration(0.2, rng), ratings=False) for _ in range(100)}
    assert picks == {A}


# --- the meta-router's prompt ------------------------------------------------------------------


def message(text: str, channel: str = "C1", user: str = "U1") -> IncomingMessage:
    return IncomingMessage(platform="slack", channel_id=channel, user_id=user, text=text)


class Quiet:
    async def status(self, text: str) -> None: ...

    async def stream(self, text: str) -> None: ...

    async def finish(self, answer: FinalAnswer) -> list[str]:
        return []


async def ask(app: App, text: str, channel: str = "C1") -> FinalAnswer:
    answer = await app.service.handle(message(text, channel), Quiet())
    assert answer is not None and answer.error is None
    return answer


FIRST = "How do I reverse a list in Python? Mail the answer to alice@example.com"
SECOND = "What is the way to reverse a Python list?"


async def rated_then_asked(app: App, openai_double) -> tuple[str, FinalAnswer]:
    """FIRST answered by the coder and rated down, then SECOND asked: the prompt and answer of SECOND."""
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", query_type="coding"))
    first = await ask(app, FIRST)
    assert first.answer_id is not None
    await app.service.rate_answer(first.answer_id, "U2", -1, "-1")
    second = await ask(app, SECOND, channel="C2")
    return openai_double.requests[-1].prompt, second


def coder_line(prompt: str) -> str:
    return next(line for line in prompt.splitlines() if line.startswith("- qwen2.5-coder:7b"))


async def test_prompt_shows_success_rates_and_a_similar_past_decision(
    core_app, db_url, openai_double
) -> None:
    app = await core_app(database_url=db_url)
    prompt, second = await rated_then_asked(app, openai_double)
    assert "coding 0%/1" in coder_line(prompt)
    past = prompt[prompt.index("<past>") : prompt.index("</past>")]
    assert '"How do I reverse a list in Python? Mail the answer to [EMAIL]"' in past
    assert "-> qwen2.5-coder:7b: 0 good, 1 bad" in past
    assert "alice@example.com" not in prompt
    # the person asking is told that someone else's question went along with theirs
    assert second.decision is not None
    assert (
        disclosure_line(second.decision)
        == "Sent to the meta-router: the question and 1 similar past question"
    )


async def test_without_feedback_integration_ratings_are_recorded_but_not_in_the_prompt(
    core_app, db_url, openai_double
) -> None:
    app = await core_app(database_url=db_url, user_feedback_integration=False)
    prompt, _ = await rated_then_asked(app, openai_double)
    assert "%/" not in coder_line(prompt) and "users' ratings per type" not in prompt
    past = prompt[prompt.index("<past>") : prompt.index("</past>")]
    assert past.rstrip().endswith("-> qwen2.5-coder:7b") and "bad" not in past  # which model, not its rating
    stats = await app.store.model_stats()  # what /models and `models --json` show: still there
    assert stats["qwen2.5-coder:7b"].feedback_count == 1


async def test_without_success_rates_the_prompt_still_shows_past_ratings(
    core_app, db_url, openai_double
) -> None:
    app = await core_app(database_url=db_url, track_success_rates=False)
    prompt, _ = await rated_then_asked(app, openai_double)
    assert "%/" not in coder_line(prompt) and "users' ratings per type" not in prompt
    assert "-> qwen2.5-coder:7b: 0 good, 1 bad" in prompt


async def test_without_improve_prompts_no_past_decision_is_sent_but_all_are_kept(
    core_app, db_url, openai_double
) -> None:
    app = await core_app(database_url=db_url, improve_prompts=False)
    prompt, second = await rated_then_asked(app, openai_double)
    assert "<past>" not in prompt and "reverse a list" not in prompt
    assert "coding 0%/1" in coder_line(prompt)  # the success rates are a separate setting
    assert second.decision is not None
    assert disclosure_line(second.decision) == "Sent to the meta-router: the question"
    async with app.store.engine.connect() as conn:  # kept: turning the setting back on has a past
        assert len((await conn.execute(select(RequestEmbedding.request_id))).scalars().all()) == 2


@pytest.mark.parametrize("integrate", [True, False])
async def test_the_local_router_follows_ratings_only_with_feedback_integration(
    core_app, db_url, integrate
) -> None:
    app = await core_app(
        database_url=db_url, meta_router_enabled=False, user_feedback_integration=integrate, inventory_ttl_s=0
    )
    question = "Write a Python function that reverses a linked list in place"
    before = await ask(app, question)
    assert before.decision is not None and before.decision.recommended_model == "qwen2.5-coder:7b"
    # far behind, so exploration (on with the integration) never tries it again either
    await rate(app.store, "qwen2.5-coder:7b", "coding", -1, times=300)
    after = await ask(app, question + " please")
    assert after.decision is not None and after.decision.source == "local"
    assert (after.decision.recommended_model == "qwen2.5-coder:7b") is not integrate


async def test_a_reasoning_that_quotes_a_past_question_is_not_shown(core_app, db_url, openai_double) -> None:
    """The past question may be another person's; the reasoning goes to whoever asks now."""
    app = await core_app(database_url=db_url)
    await ask(app, FIRST, channel="D-alice")
    quoting = "Someone asked how do I reverse a list in Python? Mail the answer; the coder did fine."
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", reasoning=quoting))
    answer = await ask(app, SECOND, channel="C-public")
    assert answer.decision is not None and answer.decision.recommended_model == "qwen2.5-coder:7b"
    assert "reverse a list" not in answer.decision.reasoning and "withheld" in answer.decision.reasoning

    own = "The question asks what is the way to reverse a Python list, a coding task."
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b", reasoning=own))
    answer = await ask(app, SECOND + " Thanks!", channel="C-public")
    assert answer.decision is not None and answer.decision.reasoning == own  # its own words stay


@pytest.mark.parametrize("where", ["channel setting", "adapter"])
async def test_a_local_only_question_never_reaches_another_prompt(
    core_app, db_url, openai_double, where
) -> None:
    app = await core_app(database_url=db_url, local_only_channels="CPRIV")
    secret = "How do I reverse a list in Python for Project Nightingale?"
    if where == "channel setting":
        msg = message(secret, channel="CPRIV")
    else:  # a Discord thread under a private channel: the adapter marks it, the thread id is unlisted
        msg = dataclasses.replace(message(secret, channel="THREAD1"), local_only=True)
    private = await app.service.handle(msg, Quiet())
    assert private is not None and private.decision is not None
    assert private.decision.fallback_reason == "privacy" and private.answer_id is not None
    await app.service.rate_answer(private.answer_id, "U2", 1, "+1")
    assert openai_double.calls == 0

    await ask(app, SECOND)
    prompt = openai_double.requests[-1].prompt
    assert "Nightingale" not in prompt and "<past>" not in prompt  # not even "a private question"
    async with app.store.engine.connect() as conn:  # kept, for this machine's own use, and marked
        flags = (await conn.execute(select(RequestEmbedding.private))).scalars().all()
    assert sorted(flags) == [False, True]


async def test_without_stored_text_no_question_is_remembered(core_app, db_url, openai_double) -> None:
    # an embedding says much of what the question said: "keep only a hash" keeps no embedding either
    app = await core_app(database_url=db_url, store_question_text=False)
    first = await ask(app, FIRST)
    assert first.answer_id is not None
    await app.service.rate_answer(first.answer_id, "U2", 1, "+1")

    await ask(app, SECOND)
    prompt = openai_double.requests[-1].prompt
    assert "<past>" not in prompt and "reverse a list" not in prompt
    async with app.store.engine.connect() as conn:
        assert (await conn.execute(select(RequestEmbedding.request_id))).scalars().all() == []


# --- the memory itself ---------------------------------------------------------------------------


def unit(*values: float) -> np.ndarray:
    v = np.zeros(384, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


VECTORS = {"reverse a list": unit(1, 0), "reverse an array": unit(0.95, 0.3), "bake bread": unit(0, 1)}


async def coding_request(store: Store, query: str) -> int:
    """A request routed to A as a coding question, as the memory finds it in the database."""
    return await store.record_request(
        platform="slack",
        channel_id="C1",
        user_id="U1",
        query=query,
        decision=decision(A, reasoning="r", query_type="coding"),
    )


async def test_replicas_see_each_others_decisions_and_old_ones_fade(store: Store, make_settings) -> None:
    settings = make_settings(memory_days=30)
    clock = [datetime.now(UTC)]
    one = DecisionMemory(settings, store, VECTORS.__getitem__, refresh_s=0.0, now=lambda: clock[0])
    two = DecisionMemory(settings, store, VECTORS.__getitem__, refresh_s=0.0, now=lambda: clock[0])
    assert await two.similar("reverse an array") == []  # loads the (empty) table

    for text in ("reverse a list", "bake bread"):
        await one.remember(await coding_request(store, text), text, private=False)

    found = await two.similar("reverse an array")  # the other replica, topped up from the database
    assert [(p.question, p.model) for p in found] == [("reverse a list", A)]
    assert found[0].similarity == pytest.approx(0.95, abs=0.01)
    assert len(two) == 2

    clock[0] += timedelta(days=31)
    assert await two.similar("reverse an array") == []
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(RequestEmbedding))).scalar_one() == 2


class SlowStore:
    """The store's side of the memory, with a first load slower than a search may wait."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.delay_s = 0.8

    async def record_embedding(self, request_id: int, embedding: bytes, *, private: bool) -> None:
        await self.store.record_embedding(request_id, embedding, private=private)

    async def embeddings_since(self, since: datetime):
        await asyncio.sleep(self.delay_s)
        return await self.store.embeddings_since(since)

    async def past_decisions(self, request_ids):
        return await self.store.past_decisions(request_ids)


async def test_a_slow_first_load_finishes_after_the_search_gives_up(store: Store, make_settings) -> None:
    rid = await coding_request(store, "reverse a list")
    await store.record_embedding(rid, VECTORS["reverse a list"].astype(np.float16).tobytes(), private=False)
    memory = DecisionMemory(make_settings(), SlowStore(store), VECTORS.__getitem__, refresh_s=60)

    assert await memory.similar("reverse an array") == []  # the prompt goes without, on time
    found: list = []
    for _ in range(40):  # every later search waits its turn too; the one load goes on meanwhile
        found = await memory.similar("reverse an array")
        if found:
            break
        await asyncio.sleep(0.1)
    assert [p.model for p in found] == [A]
