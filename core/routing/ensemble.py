"""Ensemble routing: several meta-routers asked at once, their picks combined by confidence-weighted vote.

Each member is a MetaRouter (its own OpenAI-compatible endpoint and model). All are asked in parallel,
so a decision costs the slowest member's time, never the sum, and no more than the decision timeout:
whatever has not answered by then does not vote. A member that fails, or names a model the inventory
does not know, does not vote either; its failure stays on its Vote, which is also its ledger row.

The vote: each member's pick scores weight × confidence; the highest score wins. The combined
confidence is the winner's score over the weight of every member that voted, so agreement keeps it
where the members put it and disagreement lowers it (two equal members split between two models give
at most half). The chain then treats it like one meta-router's decision: below confidence_threshold
it falls back to the local router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from core.config import Settings
from core.errors import MetaRouterFailure
from core.routing.base import LocalHint
from core.routing.meta import MetaCallFailure, MetaResult, MetaRouter, RouterView
from core.types import Decision, FallbackReason, Inventory, RouteRequest, Vote

if TYPE_CHECKING:
    from core.routing.memory import DecisionMemory

log = logging.getLogger(__name__)

# When no member voted, the reason the decision gives. A transient failure comes first: a fallback
# with a settled reason is cached, and that would hide a member that recovers a minute later. Among
# those, the one the user waited for first.
MOST_TELLING: tuple[FallbackReason, ...] = (
    "timeout",
    "rate_limited",
    "api_error",
    "invalid_response",
    "unknown_model",
    "no_api_key",
)


class EnsembleFailure(MetaCallFailure):
    """No member voted; `votes` says what became of each."""

    def __init__(self, reason: str, votes: Sequence[Vote]) -> None:
        failed = ", ".join(f"{v.member}: {v.failure}" for v in votes)
        super().__init__(reason, failed, cost_usd=sum(v.cost_usd for v in votes))
        self.votes = tuple(votes)


class Ensemble:
    """The chain's meta-router when several are configured: same shape as MetaRouter."""

    def __init__(self, settings: Settings, members: Sequence[MetaRouter]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self._settings = settings
        self.members = tuple(members)

    @classmethod
    def from_settings(cls, settings: Settings, memory: DecisionMemory | None = None) -> Ensemble:
        return cls(
            settings, [MetaRouter(settings, spec=spec, memory=memory) for spec in settings.router_specs]
        )

    def view(self, req: RouteRequest) -> RouterView:
        # every member redacts and clips with the same settings: they all see the same
        return self.members[0].view(req)

    async def prepare(self, req: RouteRequest) -> RouterView:
        # the members share one decision memory (from_settings): the past decisions are looked up once
        return await self.members[0].prepare(req)

    @property
    def available(self) -> bool:
        return any(m.available for m in self.members)

    @property
    def calls_per_decision(self) -> int:
        return sum(1 for m in self.members if m.available)

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.members), return_exceptions=True)

    async def decide(
        self,
        req: RouteRequest,
        inv: Inventory,
        *,
        local_hint: LocalHint | None = None,
        view: RouterView | None = None,
    ) -> MetaResult:
        """The combined decision, its votes attached; every member is sent `view` (by default
        `prepare(req)`). Raises EnsembleFailure when no member voted."""
        started = time.perf_counter()
        members = [m for m in self.members if m.available]
        if not members:
            raise MetaRouterFailure("no_api_key")
        view = view or await self.prepare(req)
        timeout = self._settings.decision_timeout_s
        tasks = [asyncio.create_task(self._ask(m, req, inv, local_hint, view)) for m in members]
        try:
            # Each member keeps the deadline itself; this is the backstop that holds it for the decision.
            _, late = await asyncio.wait(tasks, timeout=timeout)
        finally:  # late members, or all of them when the question itself is cancelled (shutdown)
            for t in tasks:
                t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        answers: list[tuple[Vote, Decision | None]] = []
        for m, t in zip(members, tasks, strict=True):
            if t in late:
                log.warning("meta-router %s gave no answer within %ss; it does not vote", m.name, timeout)
                ms = (time.perf_counter() - started) * 1000
                answers.append((_vote(m, failure="timeout", latency_ms=ms), None))
            else:
                answers.append(t.result())
        latency_ms = (time.perf_counter() - started) * 1000
        votes = tuple(v for v, _ in answers)
        cost = sum(v.cost_usd for v in votes)
        counted = [(v, d) for v, d in answers if d is not None]
        if not counted:
            reason = next(r for r in MOST_TELLING if any(v.failure == r for v in votes))
            raise EnsembleFailure(reason, votes)
        decision = _combine(counted).model_copy(update={"votes": votes, "cost_usd": cost})
        # token counts stay per member (in its call); the cost is what the ledger and the user see
        return MetaResult(decision, cost, latency_ms, None)

    async def _ask(
        self, m: MetaRouter, req: RouteRequest, inv: Inventory, hint: LocalHint | None, view: RouterView
    ) -> tuple[Vote, Decision | None]:
        started = time.perf_counter()

        def ms() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            result = await m.decide(req, inv, local_hint=hint, view=view)
        except MetaRouterFailure as exc:
            log.warning("meta-router %s failed (%s); it does not vote", m.name, exc)
            reason = cast(FallbackReason, exc.reason if exc.reason in MOST_TELLING else "api_error")
            return _vote(m, failure=reason, cost_usd=getattr(exc, "cost_usd", 0.0), latency_ms=ms()), None
        except Exception:
            log.exception("meta-router %s raised unexpectedly; it does not vote", m.name)
            return _vote(m, failure="api_error", latency_ms=ms()), None
        d = result.decision
        known = inv.get(d.recommended_model)
        vote = _vote(
            m,
            recommended_model=known.name if known else d.recommended_model[:60],
            confidence=d.confidence,
            failure=None if known else "unknown_model",
            cost_usd=result.cost_usd,
            latency_ms=result.latency_ms,
        )
        return vote, (d.model_copy(update={"recommended_model": known.name}) if known else None)


def build_meta_router(
    settings: Settings, memory: DecisionMemory | None = None
) -> MetaRouter | Ensemble | None:
    """The meta-router the settings ask for: an ensemble when `meta_routers` lists any, else the one
    of OPENAI_API_KEY, else none."""
    if not settings.meta_router_enabled:
        return None
    if settings.meta_routers:
        return Ensemble.from_settings(settings, memory)
    return MetaRouter(settings, memory=memory) if settings.primary_router else None


def _vote(
    m: MetaRouter,
    *,
    recommended_model: str | None = None,
    confidence: float = 0.0,
    failure: FallbackReason | None = None,
    cost_usd: float = 0.0,
    latency_ms: float = 0.0,
) -> Vote:
    return Vote(
        member=m.name,
        router_model=m.model,
        weight=m.weight,
        recommended_model=recommended_model,
        confidence=confidence,
        failure=failure,
        cost_usd=cost_usd,
        latency_ms=latency_ms,
    )


def _combine(counted: list[tuple[Vote, Decision]]) -> Decision:
    scores: dict[str, float] = {}
    for v, _ in counted:
        assert v.recommended_model is not None
        scores[v.recommended_model] = scores.get(v.recommended_model, 0.0) + v.weight * v.confidence
    # max keeps the first of equals: on a tie the earlier member (the primary first) decides
    winner = max(scores, key=lambda name: scores[name])
    backers = [(v, d) for v, d in counted if v.recommended_model == winner]
    _, lead = max(backers, key=lambda p: p[0].weight * p[0].confidence)
    runners_up = sorted((n for n in scores if n != winner), key=lambda n: -scores[n])
    confidence = scores[winner] / sum(v.weight for v, _ in counted)
    return lead.model_copy(
        update={
            "confidence": min(max(confidence, 0.0), 1.0),
            # the models other members voted for first: they are the likeliest second choices
            "alternatives": [*runners_up, *lead.alternatives],
        }
    )
