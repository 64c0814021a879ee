"""Ensemble routing end to end: the real openai client against three loopback OpenAI doubles.

Member one is the primary router (OPENAI_API_KEY on double 0), then "claude" (its own key, double 1)
and "local" (a keyless OpenAI-compatible server, double 2). The local router is the chain tests'
stand-in, which always picks llama3.2:3b, so every fallback is recognisable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.common.render import decision_details
from core.routing.chain import MemoryLedger, RoutingChain
from core.routing.ensemble import Ensemble, build_meta_router
from core.routing.memory import Precedent
from core.routing.meta import MetaRouter
from core.store import Store, create_engine, upgrade_database
from core.store.models import RouterCall
from core.types import Decision, RouteRequest
from tests.core.test_chain import LOCAL_PICK, Clock, StandInLocal, assert_valid, inventory
from tests.doubles.openai import OpenAIDouble, RecordedRequest, Reply

KEY = "sk-primary-0123456789SECRET"
CLAUDE_KEY = "sk-ant-claude-9876543210SECRET"
CODER, DEEPSEEK = "qwen2.5-coder:7b", "deepseek-r1:14b"
PRICES = {"claude-haiku": {"input": 1.0, "output": 5.0}}
USAGE = {"prompt_tokens": 1000, "completion_tokens": 100}
COST = {  # what one call of each member costs with USAGE
    "gpt-4o-mini": (1000 * 0.15 + 100 * 0.60) / 1e6,
    "claude-haiku": (1000 * 1.0 + 100 * 5.0) / 1e6,
    "qwen2.5:7b": 0.0,  # unpriced: a local model
}


def says(model: str, confidence: float, **kw: Any) -> Any:
    """A responder: every request answered with `model` at `confidence`, as the server named in the
    request (a real server reports the model it was asked for, which is what prices the call)."""

    def respond(req: RecordedRequest) -> Reply:
        return Reply.decision(
            recommended_model=model, confidence=confidence, model=req.body["model"], usage=USAGE, **kw
        )

    return respond


def fails(reply: Reply) -> Any:
    return lambda req: dataclasses.replace(reply, model=req.body["model"], usage=USAGE)


@pytest.fixture
async def doubles() -> AsyncIterator[list[OpenAIDouble]]:
    ds = [await OpenAIDouble().start() for _ in range(3)]
    try:
        yield ds
    finally:
        for d in ds:
            await d.stop()
    for d in ds:
        assert not d.problems, d.problems


@dataclasses.dataclass
class Env:
    chain: RoutingChain
    ledger: Any
    doubles: list[OpenAIDouble]

    async def route(self, query: str = "Why does my recursion never stop?", **kw: Any) -> Decision:
        return await self.chain.route(RouteRequest(query=query, **kw), inventory())


@pytest.fixture
async def ensemble_env(make_settings, doubles):
    made: list[Ensemble] = []

    def make(
        *, weights: tuple[float, float] = (1, 1), ledger: Any = None, memory: Any = None, **overrides: Any
    ) -> Env:
        values: dict[str, Any] = dict(
            meta_router_enabled=True,
            openai_api_key=KEY,
            openai_base_url=doubles[0].base_url,
            decision_timeout_s=1.0,
            confidence_threshold=0.5,
            router_prices=PRICES,
            meta_routers=[
                dict(
                    name="claude",
                    model="claude-haiku",
                    base_url=doubles[1].base_url,
                    api_key=CLAUDE_KEY,
                    weight=weights[0],
                ),
                dict(name="local", model="qwen2.5:7b", base_url=doubles[2].base_url, weight=weights[1]),
            ],
        )
        values.update(overrides)
        settings = make_settings(**values)
        meta = build_meta_router(settings, memory=memory)
        assert isinstance(meta, Ensemble)
        made.append(meta)
        clock = Clock()
        ledger = ledger or MemoryLedger(now=clock)
        chain = RoutingChain(settings, StandInLocal(), meta, None, ledger, now=clock)
        return Env(chain, ledger, doubles)

    yield make
    for meta in made:
        await meta.aclose()


async def test_agreement_keeps_the_confidence_high(ensemble_env) -> None:
    e = ensemble_env()
    for d, conf in zip(e.doubles, (0.9, 0.8, 0.7), strict=True):
        d.responder = says(CODER, conf, query_type="coding")
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == (CODER, "openai", None)
    assert d.confidence == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert d.query_type == "coding"
    assert [(v.member, v.recommended_model, v.failure) for v in d.votes] == [
        ("gpt-4o-mini", CODER, None),
        ("claude", CODER, None),
        ("local", CODER, None),
    ]
    assert d.cost_usd == pytest.approx(sum(COST.values()))
    assert_valid(d)
    # every member got its own key, and the keyless server none of theirs
    auth = [r.requests[0].headers.get("Authorization", "") for r in e.doubles]
    assert auth[0] == f"Bearer {KEY}" and auth[1] == f"Bearer {CLAUDE_KEY}"
    assert KEY not in auth[2] and CLAUDE_KEY not in auth[2]


async def test_disagreement_lowers_the_confidence_and_the_weighted_vote_wins(ensemble_env) -> None:
    # claude alone outweighs the other two: 3 × 0.8 = 2.4 against 0.9 + 0.6 = 1.5
    e = ensemble_env(weights=(3, 1), confidence_threshold=0.4)
    e.doubles[0].responder = says(CODER, 0.9, alternatives=[DEEPSEEK])
    e.doubles[1].responder = says(DEEPSEEK, 0.8, query_type="reasoning", reasoning="A proof needs reasoning.")
    e.doubles[2].responder = says(CODER, 0.6)
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == (DEEPSEEK, "openai", None)
    assert d.confidence == pytest.approx(2.4 / 5)
    assert d.confidence < 0.8  # below what the winner's only voter said
    # the decision is the winning voter's, the losing pick first among the alternatives
    assert (d.query_type, d.reasoning) == ("reasoning", "A proof needs reasoning.")
    assert d.alternatives[0] == CODER
    assert d.download_if_needed  # deepseek-r1:14b is not local
    assert_valid(d)

    # the same answers with equal weights: the two who agree win, still less sure than they were
    e = ensemble_env(weights=(1, 1), confidence_threshold=0.4)
    e.doubles[0].responder = says(CODER, 0.9)
    e.doubles[1].responder = says(DEEPSEEK, 0.8)
    e.doubles[2].responder = says(CODER, 0.6)
    d = await e.route("another question")
    assert d.recommended_model == CODER
    assert d.confidence == pytest.approx((0.9 + 0.6) / 3)


async def test_too_much_disagreement_falls_back_and_still_shows_the_votes(ensemble_env) -> None:
    e = ensemble_env(confidence_threshold=0.7)
    e.doubles[0].responder = says(CODER, 0.95)
    e.doubles[1].responder = says(DEEPSEEK, 0.95)
    e.doubles[2].responder = says(CODER, 0.95)  # two of three agree: 1.9 of 3 is below 0.7
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == (LOCAL_PICK, "local", "low_confidence")
    assert [v.recommended_model for v in d.votes] == [CODER, DEEPSEEK, CODER]
    assert [c.outcome for c in e.ledger.calls] == ["low_confidence"] * 3
    assert d.cost_usd == pytest.approx(sum(COST.values()))


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (Reply.server_error(503), "api_error"),
        (Reply.decision(delay_s=30), "timeout"),
        (Reply.malformed(), "invalid_response"),
        (Reply.rate_limited("1"), "rate_limited"),
        (Reply.unknown_model("ghost:70b"), "unknown_model"),
    ],
    ids=["down", "slow", "garbage", "429", "unknown-model"],
)
async def test_one_failing_member_does_not_vote_and_the_others_decide(ensemble_env, reply, failure) -> None:
    e = ensemble_env()
    e.doubles[0].responder = says(CODER, 0.9)
    e.doubles[1].responder = fails(reply)
    e.doubles[2].responder = says(CODER, 0.7)
    d = await e.route()

    # a slow member does not hold the decision back: its 30 s answer would otherwise have voted
    assert (d.recommended_model, d.source, d.fallback_reason) == (CODER, "openai", None)
    assert d.confidence == pytest.approx((0.9 + 0.7) / 2)  # only the members that voted weigh
    claude = d.votes[1]
    assert (claude.member, claude.failure) == ("claude", failure)
    rows = [(c.router_model, c.outcome) for c in e.ledger.calls]
    assert sorted(rows) == sorted([("gpt-4o-mini", "ok"), ("claude-haiku", failure), ("qwen2.5:7b", "ok")])
    late = next(c for c in e.ledger.calls if c.router_model == "claude-haiku")
    assert late.latency_ms > 0
    if failure in ("invalid_response", "unknown_model"):  # the server answered: the tokens are billed
        assert late.cost_usd == pytest.approx(COST["claude-haiku"])
    text = "\n".join(decision_details(d))
    assert "• claude: " in text and "• local: " in text
    assert "Sent to 3 meta-routers: the question" in text  # each member was sent it, failed or not


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ([Reply.server_error(503)] * 3, "api_error"),
        ([Reply.decision(delay_s=30), Reply.server_error(500), Reply.malformed()], "timeout"),
        ([Reply.malformed(), Reply.unknown_model("ghost:70b"), Reply.schema_violation()], "invalid_response"),
        ([Reply.unknown_model("ghost:70b")] * 3, "unknown_model"),
    ],
    ids=["all-down", "slow-wins", "garbage", "all-unknown"],
)
async def test_no_vote_falls_back_to_the_local_router_with_the_most_telling_reason(
    ensemble_env, replies, reason
) -> None:
    e = ensemble_env()
    for d, reply in zip(e.doubles, replies, strict=True):
        d.responder = fails(reply)
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == (LOCAL_PICK, "local", reason)
    assert_valid(d)
    assert len(d.votes) == 3 and all(v.failure for v in d.votes)
    assert len(e.ledger.calls) == 3
    assert {c.outcome for c in e.ledger.calls} == {v.failure for v in d.votes}


async def test_hourly_limit_counts_every_member_call(ensemble_env) -> None:
    e = ensemble_env(max_requests_per_hour=5)
    assert (await e.route("q1")).source == "openai"  # 3 calls
    d = await e.route("q2")  # 3 more would make 6
    assert (d.source, d.fallback_reason) == ("local", "rate_limited")
    assert [x.calls for x in e.doubles] == [1, 1, 1]
    assert len(e.ledger.calls) == 3


async def test_one_row_per_member_with_its_cost_in_the_database(ensemble_env, db_url) -> None:
    await upgrade_database(db_url)
    store = Store(create_engine(db_url))
    try:
        e = ensemble_env(ledger=store, monthly_budget_usd=0.002)
        e.doubles[0].responder = says(CODER, 0.9)
        e.doubles[1].responder = says(CODER, 0.8)
        e.doubles[2].responder = fails(Reply.server_error(503))
        d = await e.route()
        assert d.source == "openai"

        async with store._tx() as s:
            rows = (await s.execute(select(RouterCall))).scalars().all()
        got = sorted((r.router_model, r.outcome, round(r.cost_usd, 9)) for r in rows)
        assert got == [
            ("claude-haiku", "ok", round(COST["claude-haiku"], 9)),
            ("gpt-4o-mini", "ok", round(COST["gpt-4o-mini"], 9)),
            ("qwen2.5:7b", "api_error", 0.0),
        ]
        assert all(r.latency_ms > 0 for r in rows)
        # the budget counts the members' sum: 0.00171 spent, one more decision crosses 0.002
        assert (await e.route("q2")).source == "openai"
        assert (await e.route("q3")).fallback_reason == "budget"

        # the votes are kept with the stored decision, so "why this model?" can show them later
        rid = await store.record_request(
            platform="console", channel_id="c", user_id=None, query="q", decision=d
        )
        aid = await store.start_answer(rid, CODER, "http://127.0.0.1:11434")
        again = await store.answer_decision(aid)
        assert again is not None and again.votes == d.votes
        assert set(again.model_dump()) == set(Decision.model_fields) - {"disclosure", "votes"}
    finally:
        await store.close()


async def test_a_single_configured_router_stays_a_plain_meta_router(make_settings, doubles) -> None:
    base = dict(openai_base_url=doubles[0].base_url)
    assert isinstance(
        build_meta_router(make_settings(**base, openai_api_key=KEY, meta_router_enabled=True)), MetaRouter
    )
    assert build_meta_router(make_settings(**base, meta_router_enabled=True)) is None
    assert build_meta_router(make_settings(**base, openai_api_key=KEY, meta_router_enabled=False)) is None
    # without OPENAI_API_KEY the listed routers are the ensemble
    only = build_meta_router(
        make_settings(
            **base,
            meta_router_enabled=True,
            meta_routers=[dict(model="qwen2.5:7b", base_url=doubles[2].base_url)],
        )
    )
    assert isinstance(only, Ensemble) and [m.name for m in only.members] == ["qwen2.5:7b"]


async def test_member_keys_never_reach_decisions_ledger_or_logs(ensemble_env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    e = ensemble_env()
    e.doubles[0].responder = fails(
        Reply.http_error(401, f"Incorrect API key provided: {KEY}", "invalid_api_key")
    )
    e.doubles[1].responder = fails(
        Reply.http_error(401, f"Incorrect API key provided: {CLAUDE_KEY}", "invalid_api_key")
    )
    e.doubles[2].responder = fails(Reply.malformed())
    d = await e.route()

    assert d.fallback_reason == "api_error"
    text = "\n".join(
        [d.model_dump_json(), repr(d.votes), *decision_details(d)]
        + [repr(c) for c in e.ledger.calls]
        + [r.getMessage() for r in caplog.records]
    )
    assert caplog.records
    for key in (KEY, CLAUDE_KEY):
        assert key not in text and key[8:] not in text


async def test_a_local_only_channel_asks_no_member(ensemble_env) -> None:
    e = ensemble_env()
    d = await e.route("our unreleased revenue numbers", local_only=True)
    assert (d.source, d.fallback_reason, d.votes) == ("local", "privacy", ())
    assert [x.calls for x in e.doubles] == [0, 0, 0] and not e.ledger.calls


async def test_concurrent_questions_keep_every_member_call_within_the_hourly_limit(
    ensemble_env, db_url
) -> None:
    await upgrade_database(db_url)
    store = Store(create_engine(db_url))
    try:
        e = ensemble_env(ledger=store, max_requests_per_hour=5)  # room for one decision of three calls
        for d in e.doubles:
            d.responder = says(CODER, 0.9, delay_s=0.2)
        a, b = await asyncio.gather(e.route("first question"), e.route("second question"))
        assert sorted(str(d.fallback_reason) for d in (a, b)) == ["None", "rate_limited"]
        assert [x.calls for x in e.doubles] == [1, 1, 1]
        assert await store.router_calls_since(datetime.now(UTC) - timedelta(hours=1)) == 3
    finally:
        await store.close()


async def test_a_tie_goes_to_the_earlier_member(ensemble_env) -> None:
    e = ensemble_env(weights=(1, 1), confidence_threshold=0.3)
    e.doubles[0].responder = says(DEEPSEEK, 0.8)
    e.doubles[1].responder = says(CODER, 0.8)
    e.doubles[2].responder = fails(Reply.server_error(503))
    d = await e.route()
    assert (d.recommended_model, d.confidence) == (DEEPSEEK, pytest.approx(0.8 / 2))
    assert d.alternatives[0] == CODER


class PastQuestions:
    """The decision memory as the routers ask it: fixed similar past decisions, the lookups counted."""

    def __init__(self, *past: Precedent) -> None:
        self.past = list(past)
        self.lookups = 0

    async def similar(self, query: str) -> list[Precedent]:
        self.lookups += 1
        return self.past


def precedent(question: str, good: int) -> Precedent:
    return Precedent(question, "coding", CODER, good, 0, 0.9, datetime.now(UTC) - timedelta(days=2))


async def test_the_members_share_one_lookup_of_past_decisions_and_the_details_count_them(
    ensemble_env,
) -> None:
    memory = PastQuestions(precedent("How do I reverse a list in Python?", 2), precedent("Sort a dict", 1))
    e = ensemble_env(memory=memory)
    for double in e.doubles:
        double.responder = says(CODER, 0.9)
    d = await e.route()
    assert memory.lookups == 1
    for double in e.doubles:  # every member is sent the same past decisions
        prompt = double.requests[-1].prompt
        assert '"How do I reverse a list in Python?" (coding, 2d ago) -> qwen2.5-coder:7b: 2 good' in prompt
    text = "\n".join(decision_details(d))
    assert "Sent to 3 meta-routers: the question and 2 similar past questions" in text

    # sent is sent, whether or not anyone answered usefully
    for double in e.doubles:
        double.responder = fails(Reply.server_error(503))
    failed = await e.route("How do I reverse a tuple?")
    assert failed.fallback_reason == "api_error"
    assert "Sent to 3 meta-routers: the question and 2 similar past questions" in decision_details(failed)


async def test_without_improve_prompts_no_member_sees_past_decisions(ensemble_env) -> None:
    memory = PastQuestions(precedent("How do I reverse a list in Python?", 2))
    e = ensemble_env(memory=memory, improve_prompts=False)
    for double in e.doubles:
        double.responder = says(CODER, 0.9)
    d = await e.route()
    assert memory.lookups == 0
    assert all("<past>" not in double.requests[-1].prompt for double in e.doubles)
    assert "Sent to 3 meta-routers: the question" in decision_details(d)
