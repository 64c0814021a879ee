"""The routing chain end to end: real openai client -> loopback double, a stand-in local router.

The stand-in is our own seam (LocalRouterProtocol), not a mocked library: it always picks
llama3.2:3b at a set confidence, so every fallback is recognisable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import RoutingError
from core.routing.cache import DecisionCache
from core.routing.chain import MemoryLedger, RoutingChain
from core.routing.meta import MetaRouter
from core.types import Decision, Inventory, ModelInfo, ModelStats, RouteRequest
from tests.doubles.openai import OpenAIDouble, Reply

KEY = "sk-test-chain-9876543210SECRET"
LOCAL_PICK = "llama3.2:3b"


def model(name: str, local: bool, **kw: object) -> ModelInfo:
    values: dict = dict(
        name=name,
        local=local,
        hosts=("http://127.0.0.1:11434",) if local else (),
        loaded_on=(),
        size_gb=4.7,
        parameters_b=7.0,
        context_length=8192,
        specializations=("general",),
        scores={},
        catalogued=True,
    )
    values.update(kw)
    return ModelInfo(**values)


def inventory(deepseek_local: bool = False, coder_votes: int = 12) -> Inventory:
    return Inventory(
        models=(
            model("qwen2.5-coder:7b", True, stats=ModelStats(satisfaction=0.75, feedback_count=coder_votes)),
            model(LOCAL_PICK, True, size_gb=2.0),
            model("deepseek-r1:14b", deepseek_local, size_gb=9.0),
        ),
        hosts=("http://127.0.0.1:11434",),
    )


class StandInLocal:
    def __init__(self, confidence: float = 0.5) -> None:
        self.confidence = confidence

    async def decide(self, req: RouteRequest, inv: Inventory) -> Decision:
        return Decision(
            recommended_model=LOCAL_PICK,
            confidence=self.confidence,
            reasoning="stand-in local router",
            query_type="general",
            complexity="simple",
            alternatives=["qwen2.5-coder:7b", "not-in-inventory:1b"],
            source="local",
        )


class Clock:
    """One fake time for the ledger and the chain (datetime) and the cache (monotonic seconds)."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp()


@dataclasses.dataclass
class Env:
    chain: RoutingChain
    ledger: MemoryLedger
    cache: DecisionCache
    clock: Clock
    double: OpenAIDouble

    async def route(self, query: str = "Why does my recursion never stop?", **kw: object) -> Decision:
        inv = kw.pop("inv", None) or inventory()
        return await self.chain.route(RouteRequest(query=query, **kw), inv)  # type: ignore[arg-type]


@pytest.fixture
def env(make_settings, openai_double: OpenAIDouble):
    def make(*, local_confidence: float = 0.5, key: str | None = KEY, **overrides: object) -> Env:
        values: dict = dict(
            meta_router_enabled=True,
            openai_api_key=key,
            openai_base_url=openai_double.base_url,
            decision_timeout_s=2.0,
        )
        values.update(overrides)
        settings = make_settings(**values)
        clock = Clock()
        ledger = MemoryLedger(now=clock)
        cache = DecisionCache(settings, clock=clock.monotonic)
        chain = RoutingChain(
            settings, StandInLocal(local_confidence), MetaRouter(settings), cache, ledger, now=clock
        )
        return Env(chain, ledger, cache, clock, openai_double)

    return make


def assert_valid(d: Decision, inv: Inventory | None = None) -> None:
    names = (inv or inventory()).names()
    assert d.recommended_model in names
    assert all(a in names for a in d.alternatives) and d.recommended_model not in d.alternatives
    assert Decision.model_validate_json(d.model_dump_json()) == d  # the contract JSON round-trips


async def test_meta_router_decision_is_used(env) -> None:
    e = env()
    e.double.push(
        Reply.decision(
            recommended_model="qwen2.5-coder:7b",
            confidence=0.93,
            query_type="coding",
            usage={"prompt_tokens": 1000, "completion_tokens": 50},
        )
    )
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == ("qwen2.5-coder:7b", "openai", None)
    assert d.cost_usd == pytest.approx((1000 * 0.15 + 50 * 0.60) / 1e6)
    assert d.decision_ms > 0
    assert_valid(d)
    (call,) = e.ledger.calls
    assert (call.outcome, call.router_model) == ("ok", "gpt-4o-mini")
    assert call.cost_usd == pytest.approx(d.cost_usd)


@pytest.mark.parametrize(
    ("replies", "reason", "cached"),
    [
        ([Reply.decision(delay_s=10)], "timeout", False),
        ([Reply.rate_limited("1")], "rate_limited", False),
        ([Reply.server_error(500)] * 3, "api_error", False),
        ([Reply.malformed()], "invalid_response", True),
        ([Reply.schema_violation()], "invalid_response", True),
        ([Reply.unknown_model("ghost:7b", alternatives=["phantom:1b"])], "unknown_model", True),
        ([Reply.decision(recommended_model="qwen2.5-coder:7b", confidence=0.3)], "low_confidence", True),
    ],
    ids=["timeout", "429", "500", "malformed", "schema", "unknown-model", "low-confidence"],
)
async def test_failures_fall_back_to_the_local_router(env, replies, reason, cached) -> None:
    e = env(decision_timeout_s=0.5)
    e.double.push(*replies)
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == (LOCAL_PICK, "local", reason)
    assert_valid(d)
    assert "not-in-inventory:1b" not in d.alternatives
    assert [c.outcome for c in e.ledger.calls] == [reason]

    # A transient failure must not pin the fallback in the cache; a settled answer is not asked twice.
    calls = e.double.calls
    again = await e.route()
    assert (e.double.calls == calls) is cached
    assert again.source == ("cache" if cached else "openai")


async def test_unknown_model_with_a_known_alternative_uses_the_alternative(env) -> None:
    e = env()
    e.double.push(Reply.unknown_model("ghost:7b", alternatives=["phantom:1b", "deepseek-r1:14b", "ghost:7b"]))
    d = await e.route()

    assert (d.recommended_model, d.source, d.fallback_reason) == ("deepseek-r1:14b", "openai", None)
    assert "ghost:7b" in d.reasoning and "alternative" in d.reasoning
    assert d.alternatives == []
    assert d.download_if_needed  # deepseek-r1:14b is not local
    assert_valid(d)


async def test_a_model_that_is_not_local_is_flagged_for_download(env) -> None:
    e = env()
    e.double.push(Reply.decision(recommended_model="deepseek-r1:14b", download_if_needed=False))
    d = await e.route()
    assert d.recommended_model == "deepseek-r1:14b" and d.download_if_needed


async def test_hourly_limit_reached_skips_the_meta_router(env) -> None:
    e = env(max_requests_per_hour=2)
    for _ in range(2):
        await e.ledger.record_router_call("gpt-4o-mini", "ok", 0.0001, 500)
    d = await e.route()
    assert (d.source, d.fallback_reason) == ("local", "rate_limited")
    assert e.double.calls == 0

    e.clock.t += timedelta(hours=1, minutes=1)  # those calls are now more than an hour old
    d = await e.route()
    assert d.source == "openai" and e.double.calls == 1


async def test_concurrent_questions_do_not_overshoot_the_hourly_limit(env) -> None:
    e = env(max_requests_per_hour=1)
    e.double.responder = lambda req: Reply.decision(delay_s=0.3)
    a, b = await asyncio.gather(e.route("first question"), e.route("second question"))
    assert e.double.calls == 1
    assert sorted(str(d.fallback_reason) for d in (a, b)) == ["None", "rate_limited"]


async def test_spent_budget_skips_the_meta_router(env) -> None:
    e = env(monthly_budget_usd=1.0)
    e.clock.t -= timedelta(days=30)  # last month's spending does not count
    await e.ledger.record_router_call("gpt-4o-mini", "ok", 3.0, 500)
    e.clock.t += timedelta(days=30)
    assert (await e.route("q1")).source == "openai"

    await e.ledger.record_router_call("gpt-4o-mini", "ok", 1.0, 500)
    d = await e.route("q2")
    assert (d.source, d.fallback_reason) == ("local", "budget")
    assert e.double.calls == 1


async def test_no_key_or_disabled_means_local_with_no_api_key(env) -> None:
    for e in (env(key=None), env(meta_router_enabled=False)):
        d = await e.route()
        assert (d.source, d.fallback_reason, d.cost_usd) == ("local", "no_api_key", 0.0)
        assert_valid(d)
    assert env().double.calls == 0


async def test_local_only_channel_never_reaches_the_meta_router(env) -> None:
    e = env()
    d = await e.route("our unreleased revenue numbers", local_only=True)
    assert (d.source, d.fallback_reason) == ("local", "privacy")
    assert e.double.calls == 0 and not e.ledger.calls


async def test_confident_local_router_saves_the_call(env) -> None:
    e = env(local_confidence=0.95)
    d = await e.route()
    assert (d.source, d.fallback_reason) == ("local", "local_confident")
    assert e.double.calls == 0

    e = env(local_confidence=0.95, use_local_for_simple_queries=False)
    assert (await e.route()).source == "openai"


async def test_cache_hit_is_free_and_skips_the_call(env) -> None:
    e = env()
    first = await e.route("How do I reverse a list in Python?")
    hit = await e.route("  how do I reverse a LIST in python? ")  # same question, other spacing and case

    assert e.double.calls == 1
    assert (hit.source, hit.cost_usd) == ("cache", 0.0)
    assert hit.recommended_model == first.recommended_model and first.cost_usd > 0


async def test_cache_expires_after_its_ttl(env) -> None:
    e = env(cache_duration_hours=1)
    await e.route()
    e.clock.t += timedelta(minutes=59)
    assert (await e.route()).source == "cache"
    e.clock.t += timedelta(minutes=2)
    assert (await e.route()).source == "openai"
    assert e.double.calls == 2


async def test_cache_misses_when_the_situation_changes(env) -> None:
    e = env()
    await e.route()
    assert (await e.route()).source == "cache"
    # a model was pulled
    assert (await e.route(inv=inventory(deepseek_local=True))).source == "openai"
    # a new rating arrived
    assert (await e.route(inv=inventory(coder_votes=13))).source == "openai"
    # the same words after another thread
    from core.types import Turn

    assert (await e.route(history=(Turn(role="user", content="Write a haiku"),))).source == "openai"
    assert e.double.calls == 4


async def test_cache_is_bounded(env) -> None:
    e = env(cache_max_entries=2)
    for q in ("q1", "q2", "q3"):
        await e.route(q)
    assert len(e.cache) == 2
    assert (await e.route("q3")).source == "cache"
    assert (await e.route("q1")).source == "openai"  # the least recently used was dropped


async def test_empty_inventory_is_a_routing_error(env) -> None:
    with pytest.raises(RoutingError):
        await env().route(inv=Inventory(models=(), hosts=()))


class BrokenLedger(MemoryLedger):
    async def router_calls_since(self, t: datetime) -> int:
        raise ConnectionError("database down")

    async def record_router_call(self, *args: object) -> None:
        raise ConnectionError("database down")


async def test_a_broken_ledger_degrades_to_local_routing(make_settings, openai_double) -> None:
    settings = make_settings(
        meta_router_enabled=True, openai_api_key=KEY, openai_base_url=openai_double.base_url
    )
    chain = RoutingChain(settings, StandInLocal(), MetaRouter(settings), None, BrokenLedger())
    d = await chain.route(RouteRequest(query="hi"), inventory())
    # spend cannot be checked, so nothing is spent
    assert (d.source, d.fallback_reason) == ("local", "budget")
    assert openai_double.calls == 0


async def test_the_key_never_appears_in_decisions_ledger_or_logs(env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    e = env(decision_timeout_s=0.5)
    e.double.push(
        Reply.http_error(401, f"Incorrect API key provided: {KEY}", "invalid_api_key"),
        Reply.server_error(500),
        Reply.decision(),
        Reply.malformed(),
        Reply.decision(delay_s=5),
    )
    decisions = [await e.route(f"question {i}") for i in range(4)]

    reasons = [d.fallback_reason for d in decisions]
    assert reasons == ["api_error", None, "invalid_response", "timeout"]
    text = "\n".join(
        [d.model_dump_json() for d in decisions]
        + [repr(c) for c in e.ledger.calls]
        + [r.getMessage() for r in caplog.records]
    )
    assert caplog.records
    assert KEY not in text and KEY[8:] not in text
