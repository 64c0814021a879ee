"""The seams of routing: what a router, a local hint and a router ledger look like.

Routers are small: one async method from a question and the inventory to a contract Decision. The
chain (core/routing/chain.py) composes them; nothing here knows OpenAI or a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from core.types import Complexity, Decision, Inventory, QueryType, RouteRequest, Turn


class Router(Protocol):
    async def decide(self, req: RouteRequest, inv: Inventory) -> Decision:
        """A decision whose recommended_model the inventory knows.

        Raises core.errors.RoutingError when no decision can be made at all (empty inventory).
        """
        ...


# The offline router (core/routing/local.py) is the chain's last resort; it must never need the network.
LocalRouterProtocol = Router


class LocalHint(Protocol):
    """What the meta-router may be told about the local router's view (a Classification or a Decision)."""

    @property
    def query_type(self) -> QueryType: ...

    @property
    def complexity(self) -> Complexity: ...

    @property
    def confidence(self) -> float: ...


class RouterLedger(Protocol):
    """Where meta-router calls are counted and their cost summed (the database Store implements it).

    Times are timezone-aware UTC.
    """

    async def router_calls_since(self, t: datetime) -> int: ...

    async def router_spend_since(self, t: datetime) -> float: ...

    async def record_router_call(
        self, router_model: str, outcome: str, cost_usd: float, latency_ms: float
    ) -> None: ...


# How much of a thread a routing decision looks at. The same view feeds the prompt and the cache key,
# so two questions the meta-router would see identically share a cached decision.
RECENT_TURNS = 4
TURN_CHARS = 200


def squash(text: str) -> str:
    return " ".join(text.split())


def clip(text: str, limit: int) -> str:
    # Squashing can only shorten; squash a bounded prefix so a pasted 100 kB log costs no more.
    text = squash(text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def recent_turns(history: Sequence[Turn], turns: int = RECENT_TURNS, chars: int = TURN_CHARS) -> list[Turn]:
    """The last few turns, each on one line and clipped: enough to spot a follow-up, cheap in tokens."""
    return [Turn(role=t.role, content=clip(t.content, chars)) for t in history[-turns:] if t.content.strip()]
