"""The core's own vocabulary, shared by routing, generation, storage and every adapter.

Adapters translate platform objects into these types at the edge; nothing here knows Slack or Discord.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

QueryType = Literal["coding", "math", "creative", "reasoning", "general"]
QUERY_TYPES: tuple[QueryType, ...] = ("coding", "math", "creative", "reasoning", "general")
Complexity = Literal["simple", "moderate", "complex"]
Source = Literal["openai", "local", "cache"]
FallbackReason = Literal[
    "no_api_key",
    "timeout",
    "rate_limited",
    "budget",
    "api_error",
    "invalid_response",
    "unknown_model",
    "low_confidence",
    "local_confident",
    "privacy",
]
Role = Literal["user", "assistant"]


class Turn(BaseModel):
    """One message of a conversation, oldest first in any history."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str
    author: str | None = None  # display name of a person; None for the bot


class RouteRequest(BaseModel):
    """What a router sees: the question and the conversation before it."""

    model_config = ConfigDict(frozen=True)

    query: str
    history: tuple[Turn, ...] = ()
    channel_id: str | None = None
    local_only: bool = False  # a privacy-marked channel: nothing may go to the meta-router


class Disclosure(BaseModel):
    """What one routing decision sent to the meta-router (shown to the user; never in the contract JSON)."""

    model_config = ConfigDict(frozen=True)

    query_redactions: int = 0  # items replaced by placeholders in the question
    query_truncated: bool = False  # only the start of a long question was sent
    earlier_messages: int = 0  # messages of the thread sent, each clipped
    earlier_redactions: int = 0
    past_questions: int = 0  # similar past decisions in the prompt (improve_prompts), redacted, clipped


class Vote(BaseModel):
    """One ensemble member's say in a decision (shown to the user; never in the contract JSON).

    It is also that member's ledger row: which router model was asked, what it cost and how long it took.
    """

    model_config = ConfigDict(frozen=True)

    member: str  # its configured name
    router_model: str
    recommended_model: str | None = None  # its pick as it named it; None when it gave none
    confidence: float = 0.0
    weight: float = 1.0
    failure: FallbackReason | None = None  # why its vote did not count; None: it counted
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class Decision(BaseModel):
    """The routing decision, exactly the contract's decision JSON (CONTRACT.md)."""

    model_config = ConfigDict(frozen=True)

    recommended_model: str
    confidence: float = Field(ge=0.0, le=1.0)
    reasoning: str
    query_type: QueryType
    complexity: Complexity
    specializations_needed: list[str] = Field(default_factory=list)
    alternatives: list[str] = Field(default_factory=list)
    download_if_needed: bool = False
    source: Source
    fallback_reason: FallbackReason | None = None
    decision_ms: float = 0.0
    cost_usd: float = 0.0
    # Not part of the contract: excluded from every dump, so the decision JSON keeps its exact keys.
    disclosure: Disclosure | None = Field(None, exclude=True)
    votes: tuple[Vote, ...] = Field((), exclude=True)  # an ensemble's members, in configured order

    def __eq__(self, other: object) -> bool:
        # Two decisions are equal when their contract JSON is: disclosure and votes are notes for the user.
        if not isinstance(other, Decision):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    def with_votes(self) -> dict[str, Any]:
        """The contract JSON plus the votes: what is kept to show the routing details later (a stored
        decision, a Slack button); `Decision.model_validate` reads the votes back."""
        return {**self.model_dump(mode="json"), "votes": [v.model_dump(mode="json") for v in self.votes]}


@dataclass(frozen=True)
class Ratings:
    """The ratings of a model's answers to one query type (core/feedback.py turns them into belief)."""

    positive: float  # each rating weighted by its age: 0.5 ** (age / feedback_halflife_days)
    total: float
    votes: int  # ratings counted plainly, as people see them
    positive_votes: int
    last_rated: datetime | None = None


@dataclass(frozen=True)
class ModelStats:
    """What the database knows about a model's use: from answers and feedback."""

    satisfaction: float | None = None  # share of positive ratings; None without feedback
    feedback_count: int = 0
    requests: int = 0
    last_used: datetime | None = None
    # per query type, for routing that learns per task
    by_type: dict[str, Ratings] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """One model as the inventory knows it: catalog facts merged with live host state."""

    name: str  # normalised "family:tag"
    local: bool
    hosts: tuple[str, ...]  # hosts that have it pulled
    loaded_on: tuple[str, ...]  # hosts that have it in memory (/api/ps)
    size_gb: float | None
    parameters_b: float | None
    context_length: int | None
    specializations: tuple[str, ...]
    scores: dict[str, float]  # query type -> 0..100 performance score
    catalogued: bool
    stats: ModelStats = field(default_factory=ModelStats)
    description: str = ""


@dataclass(frozen=True)
class Inventory:
    """A snapshot of every catalogued model and every model present on any host."""

    models: tuple[ModelInfo, ...]
    hosts: tuple[str, ...]
    hosts_down: tuple[str, ...] = ()

    def get(self, name: str) -> ModelInfo | None:
        wanted = normalise_model_name(name)
        for m in self.models:
            if m.name == wanted:
                return m
        return None

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def fingerprint(self) -> str:
        """Changes whenever anything a routing decision depends on changes (cache key part)."""
        parts = []
        for m in sorted(self.models, key=lambda m: m.name):
            s = m.stats
            parts.append(f"{m.name}|{int(m.local)}|{s.feedback_count}|{s.satisfaction}")
        return ";".join(parts)


def normalise_model_name(name: str) -> str:
    """Ollama names are `model:tag` with `latest` as the default tag."""
    name = name.strip()
    if not name:
        return name
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
