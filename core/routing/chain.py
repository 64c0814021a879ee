"""The routing chain: decision cache -> confident local router -> meta-router -> local router.

Whatever happens to the meta-router, the caller gets a valid decision; `fallback_reason` says why the
meta-router was not asked or not followed (CONTRACT.md lists the reasons).
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from core.config import Settings
from core.errors import MetaRouterFailure, RoutingError
from core.routing.base import LocalRouterProtocol, RouterLedger
from core.routing.cache import DecisionStore, cache_key
from core.routing.ensemble import Ensemble
from core.routing.meta import MetaRouter
from core.types import Decision, Disclosure, FallbackReason, Inventory, RouteRequest, Vote

log = logging.getLogger(__name__)

# Fallbacks that may go the other way a minute later; caching them would hide a recovered meta-router.
TRANSIENT: frozenset[str] = frozenset({"timeout", "api_error", "rate_limited", "budget"})


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RouterCall:
    at: datetime
    router_model: str
    outcome: str
    cost_usd: float
    latency_ms: float


class MemoryLedger:
    """RouterLedger in memory, for tests and the console (forgets on exit)."""

    def __init__(self, now: Callable[[], datetime] = utcnow) -> None:
        self._now = now
        self.calls: deque[RouterCall] = deque()

    async def router_calls_since(self, t: datetime) -> int:
        return sum(1 for c in self.calls if c.at >= t)

    async def router_spend_since(self, t: datetime) -> float:
        return sum(c.cost_usd for c in self.calls if c.at >= t)

    async def record_router_call(
        self, router_model: str, outcome: str, cost_usd: float, latency_ms: float
    ) -> None:
        now = self._now()
        self.calls.append(RouterCall(now, router_model, outcome, cost_usd, latency_ms))
        # Nothing older than a month is ever asked about (budget is per calendar month).
        while self.calls and self.calls[0].at < now - timedelta(days=32):
            self.calls.popleft()


class RoutingChain:
    def __init__(
        self,
        settings: Settings,
        local: LocalRouterProtocol,
        meta: MetaRouter | Ensemble | None,
        cache: DecisionStore | None,
        ledger: RouterLedger,
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._local = local
        self._meta = meta
        self._cache = cache if settings.cache_decisions else None
        self._ledger = ledger
        self._now = now
        self._in_flight = 0  # router calls reserved or under way, not yet in the ledger

    async def route(self, req: RouteRequest, inv: Inventory) -> Decision:
        started = time.perf_counter()
        if not inv.models:
            raise RoutingError()
        key = cache_key(req, inv, self._settings) if self._cache is not None else None
        if key is not None:
            hit = await self._cache_get(key)
            if hit is not None:
                ms = (time.perf_counter() - started) * 1000
                # nothing left the machine this time
                return hit.model_copy(
                    update={
                        "source": "cache",
                        "decision_ms": ms,
                        "cost_usd": 0.0,
                        "disclosure": None,
                        "votes": (),
                    }
                )
        decision = await self._decide(req, inv)
        decision = decision.model_copy(update={"decision_ms": (time.perf_counter() - started) * 1000})
        if key is not None and decision.fallback_reason not in TRANSIENT:
            await self._cache_put(key, decision)
        return decision

    async def _decide(self, req: RouteRequest, inv: Inventory) -> Decision:
        local = await self._local.decide(req, inv)
        reason = self._skip_reason(req, local)
        if reason is not None:
            return _conform(local, inv, fallback_reason=reason)
        assert self._meta is not None  # _skip_reason saw to it
        # Calls under way count against the hourly limit too, or a burst would overshoot it: reserved
        # before the ledger is read, released once they are in it. An ensemble reserves every member.
        calls = self._meta.calls_per_decision
        self._in_flight += calls
        try:
            reason = await self._quota_reason()
            if reason is not None:
                return _conform(local, inv, fallback_reason=reason)
            return await self._ask_meta(self._meta, req, inv, local)
        finally:
            self._in_flight -= calls

    async def _ask_meta(
        self, meta_router: MetaRouter | Ensemble, req: RouteRequest, inv: Inventory, local: Decision
    ) -> Decision:
        s = self._settings
        # what the call will send, past decisions included: the disclosure holds whether or not it succeeds
        view = await meta_router.prepare(req)
        sent = view.disclosure
        started = time.perf_counter()
        try:
            result = await meta_router.decide(req, inv, local_hint=local, view=view)
        except MetaRouterFailure as exc:
            cost = getattr(exc, "cost_usd", 0.0)
            votes = getattr(exc, "votes", ())
            log.warning("meta-router failed (%s); using the local router", exc)
            await self._record(exc.reason, cost, started, votes)
            return _conform(
                local,
                inv,
                fallback_reason=cast(FallbackReason, exc.reason),
                cost_usd=cost,
                disclosure=sent,
                votes=votes,
            )
        except Exception:
            # A bug or an unforeseen library error must not cost the user an answer.
            log.exception("meta-router raised unexpectedly; using the local router")
            await self._record("api_error", 0.0, started)
            return _conform(local, inv, fallback_reason="api_error", disclosure=sent)

        meta = result.decision
        chosen = inv.get(meta.recommended_model)
        note = ""
        if chosen is None:
            known = [a for a in meta.alternatives if inv.get(a) is not None]
            if known:
                unknown = meta.recommended_model[:60]
                note = f"(The meta-router named {unknown!r}, unknown here; using its alternative.) "
                chosen = inv.get(known[0])
        outcome: FallbackReason | None = None
        if chosen is None:
            outcome = "unknown_model"
        elif not chosen.local and _named_in(req, chosen.name):
            # A download of the very model the message names is the router obeying the message
            # (prompt injection) or a person choosing a download: neither may fetch gigabytes.
            outcome = "invalid_response"
        elif meta.confidence < s.confidence_threshold:
            outcome = "low_confidence"
        await self._record(outcome or "ok", result.cost_usd, started, meta.votes)
        if chosen is None or outcome is not None:
            log.info("meta-router not followed (%s); using the local router", outcome)
            return _conform(
                local,
                inv,
                fallback_reason=outcome,
                cost_usd=result.cost_usd,
                disclosure=sent,
                votes=meta.votes,
            )
        followed = meta.model_copy(
            update={"recommended_model": chosen.name, "reasoning": note + meta.reasoning}
        )
        return _conform(
            followed,
            inv,
            fallback_reason=None,
            cost_usd=result.cost_usd,
            disclosure=sent,
            votes=meta.votes,
        )

    def _skip_reason(self, req: RouteRequest, local: Decision) -> FallbackReason | None:
        """Why the meta-router is not asked at all, most telling reason first."""
        s = self._settings
        if req.local_only:
            return "privacy"
        if self._meta is None or not self._meta.available or not s.meta_router_enabled:
            return "no_api_key"
        if s.use_local_for_simple_queries and local.confidence >= s.local_confidence_threshold:
            return "local_confident"
        return None

    async def _quota_reason(self) -> FallbackReason | None:
        s = self._settings
        now = self._now()
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        try:
            calls = await self._ledger.router_calls_since(now - timedelta(hours=1))
            spent = await self._ledger.router_spend_since(month_start)
        except Exception as exc:
            # Unknown spend is treated as spent: an outage must not turn into an unbounded bill.
            log.warning("router ledger unavailable (%s); not calling the meta-router", type(exc).__name__)
            return "budget"
        # in flight: this decision's own calls too, so all of an ensemble's fit in the limit or none is made
        if calls + self._in_flight > s.max_requests_per_hour:
            return "rate_limited"
        if spent >= s.monthly_budget_usd:
            return "budget"
        return None

    async def _record(
        self, outcome: str, cost_usd: float, started: float, votes: tuple[Vote, ...] = ()
    ) -> None:
        """One ledger row per router call: an ensemble's members each have their own (model, cost,
        latency), and a member that voted shares the decision's outcome."""
        rows = [(v.router_model, v.failure or outcome, v.cost_usd, v.latency_ms) for v in votes] or [
            (self._settings.meta_router_model, outcome, cost_usd, (time.perf_counter() - started) * 1000)
        ]
        for row in rows:
            try:
                await self._ledger.record_router_call(*row)
            except Exception as exc:
                log.warning("could not record a meta-router call (%s)", type(exc).__name__)

    async def _cache_get(self, key: str) -> Decision | None:
        assert self._cache is not None
        try:
            return await self._cache.get(key)
        except Exception as exc:  # a shared cache may be down; routing goes on without it
            log.warning("decision cache unavailable (%s)", type(exc).__name__)
            return None

    async def _cache_put(self, key: str, decision: Decision) -> None:
        assert self._cache is not None
        try:
            await self._cache.put(key, decision)
        except Exception as exc:
            log.warning("decision cache unavailable (%s)", type(exc).__name__)


def _named_in(req: RouteRequest, model: str) -> bool:
    """Whether the question or its thread names `model` ("mistral:7b", or just "mistral")."""
    family = re.escape(model.split(":", 1)[0])  # "llama3.1" but not "llama3.10" or "llama3.1-instruct"
    pattern = re.compile(rf"(?<![\w.-]){family}(?![\w-]|\.\w)", re.I)
    return any(pattern.search(text) for text in (req.query, *(t.content for t in req.history)))


def _conform(
    d: Decision,
    inv: Inventory,
    *,
    fallback_reason: FallbackReason | None,
    cost_usd: float = 0.0,
    disclosure: Disclosure | None = None,
    votes: tuple[Vote, ...] = (),
) -> Decision:
    """Hold the contract: inventory names only, the chosen model not among its alternatives, and a
    model that is not local flagged for download."""
    chosen = inv.get(d.recommended_model)
    name = chosen.name if chosen is not None else d.recommended_model
    alternatives: list[str] = []
    for a in d.alternatives:
        info = inv.get(a)
        if info is not None and info.name != name and info.name not in alternatives:
            alternatives.append(info.name)
    download = d.download_if_needed or (chosen is not None and not chosen.local)
    return d.model_copy(
        update={
            "recommended_model": name,
            "alternatives": alternatives,
            "download_if_needed": download,
            "fallback_reason": fallback_reason,
            "cost_usd": cost_usd,
            "disclosure": disclosure,
            "votes": votes,
        }
    )
