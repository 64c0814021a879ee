"""Which model answers: every router's last step, from a query type and a complexity to a model name.

Each model in the inventory gets one score; the highest wins and the next few are the alternatives.

    quality      the mean of the model's Beta belief for the query type (core/feedback.py): the catalog
                 score as a prior worth PRIOR_VOTES votes, updated by users' ratings, recent ones
                 weighing more
    match        share of the needed specialisations (and the query type itself) the model lists
    size         how well the parameter count suits the complexity: small is fine for simple questions
                 (and faster), complex ones want a larger model
    availability a model that is not pulled yet pays a penalty, large for simple questions and growing
                 with the download size; only a much better model on a hard question is worth a download
    loaded       a model already in memory answers without a load pause

With an `Exploration`, the best model is not always taken: among the models scoring within its margin
of the best, each draws a quality from its belief instead of using the mean (Thompson sampling), and
the highest draw wins. Uncertain but promising models thus get answers to be rated, and a model
outside the margin, clearly worse, is never served. Without ratings for the query type among those
models there is nothing to learn yet, and the choice stays deterministic.

With `ratings=False` (user_feedback_integration off) quality is the catalog score alone and there is
no exploration: the ratings are still recorded and shown, they just do not steer the choice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.config import Settings
from core.errors import RoutingError
from core.feedback import NEUTRAL_SCORE, belief, is_rated
from core.types import Complexity, Inventory, ModelInfo, normalise_model_name

W_MATCH = 0.15
W_SIZE = 0.10
W_LOADED = 0.02
DOWNLOAD_PENALTY: dict[str, float] = {"simple": 0.5, "moderate": 0.2, "complex": 0.1}
# and per GB to download: when nothing is local yet, "hello" must not fetch a 9 GB model
DOWNLOAD_PENALTY_PER_GB: dict[str, float] = {"simple": 0.02, "moderate": 0.01, "complex": 0.004}
# parameter count (billions) each complexity is best served by, and how far off still fits (log scale)
IDEAL_PARAMS_B: dict[str, float] = {"simple": 3.0, "moderate": 7.0, "complex": 14.0}
SIZE_TOLERANCE = 1.0
MAX_ALTERNATIVES = 3

# the catalog's words for a task, by the names a router uses
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "coding": ("coding", "code", "programming", "code-completion"),
    "math": ("math", "mathematics"),
    "creative": ("creative", "writing", "storytelling", "poetry"),
    "reasoning": ("reasoning", "logic", "step-by-step"),
    "general": ("general", "chat"),
    "poetry": ("poetry", "creative", "writing"),
    "storytelling": ("storytelling", "creative", "writing"),
    "proofs": ("proofs", "step-by-step", "math"),
    "word-problems": ("word-problems", "math"),
    "probability-statistics": ("probability-statistics", "statistics", "math"),
    "puzzles": ("puzzles", "logic", "reasoning"),
    "translation": ("translation", "multilingual"),
}


@dataclass(frozen=True)
class Selection:
    model: str
    alternatives: list[str]
    download_needed: bool
    reasoning: str


@dataclass(frozen=True)
class Exploration:
    """How far from the best a model may score and still be tried, and the randomness that tries it
    (seed it for reproducible runs)."""

    margin: float
    rng: random.Random

    @classmethod
    def from_settings(cls, settings: Settings, rng: random.Random | None = None) -> Exploration | None:
        if not settings.explore or not settings.user_feedback_integration:
            return None  # without ratings steering the choice, a draw would learn nothing
        return cls(settings.explore_margin, rng or random.Random())


@dataclass(frozen=True)
class _Scored:
    model: ModelInfo
    score: float
    quality: float
    matched: tuple[str, ...]


def select_model(
    query_type: str,
    complexity: Complexity,
    inventory: Inventory,
    *,
    exclude: Iterable[str] = (),
    specializations: Sequence[str] = (),
    explore: Exploration | None = None,
    ratings: bool = True,
) -> Selection:
    """The best model for the task, with up to MAX_ALTERNATIVES others, best first; users' ratings
    count only with `ratings`.

    Raises RoutingError when the inventory (less `exclude`) has no model at all.
    """
    excluded = {normalise_model_name(n) for n in exclude}
    candidates = [m for m in inventory.models if m.name not in excluded]
    if not candidates:
        raise RoutingError("no model to choose from" + (" after exclusions" if excluded else ""))
    needed = tuple(dict.fromkeys([query_type, *specializations]))
    ranked = sorted(
        (_score(m, query_type, complexity, needed, ratings) for m in candidates),
        key=lambda s: (-s.score, s.model.name),  # name breaks ties, so the same input gives the same answer
    )
    best = _explore(ranked, query_type, explore) if explore is not None and ratings else ranked[0]
    reasoning = _explain(best, query_type, complexity, ratings)
    if best is not ranked[0]:
        reasoning += (
            f" Tried instead of {ranked[0].model.name}, which scores about as well, to learn from ratings."
        )
    return Selection(
        model=best.model.name,
        alternatives=[s.model.name for s in ranked if s is not best][:MAX_ALTERNATIVES],
        download_needed=not best.model.local,
        reasoning=reasoning,
    )


def _explore(ranked: list[_Scored], query_type: str, explore: Exploration) -> _Scored:
    close = [s for s in ranked if s.score >= ranked[0].score - explore.margin]
    if len(close) < 2 or not any(is_rated(s.model, query_type) for s in close):
        return ranked[0]
    # the score with the belief's mean swapped for a draw from it
    drawn = [(s.score - s.quality + belief(s.model, query_type).draw(explore.rng), s) for s in close]
    return max(drawn, key=lambda d: d[0])[1]


def _score(m: ModelInfo, query_type: str, complexity: str, needed: tuple[str, ...], ratings: bool) -> _Scored:
    quality = belief(m, query_type, ratings=ratings).mean
    offered = {s.lower() for s in m.specializations}
    matched = tuple(n for n in needed if offered & set(_SYNONYMS.get(n, (n,))))
    match = len(matched) / len(needed)
    score = quality + W_MATCH * match + W_SIZE * _size_fit(m, complexity)
    if not m.local:
        score -= DOWNLOAD_PENALTY[complexity] + DOWNLOAD_PENALTY_PER_GB[complexity] * (m.size_gb or 0.0)
    elif m.loaded_on:
        score += W_LOADED
    return _Scored(m, score, quality, matched)


def _params_b(m: ModelInfo) -> float | None:
    if m.parameters_b:
        return m.parameters_b
    if m.size_gb:
        return m.size_gb * 1.6  # 4-bit quantised downloads hold roughly 1.6B parameters per GB
    return None


def _size_fit(m: ModelInfo, complexity: str) -> float:
    params = _params_b(m)
    if params is None:
        return 0.5
    ideal = IDEAL_PARAMS_B[complexity]
    if complexity == "complex" and params > ideal:
        return 1.0  # bigger never hurts a hard question's answer, only its speed
    if complexity == "simple" and params < ideal:
        return 1.0
    distance = math.log(params / ideal)
    return math.exp(-(distance**2) / (2 * SIZE_TOLERANCE**2))


def _explain(best: _Scored, query_type: str, complexity: str, ratings: bool) -> str:
    m = best.model
    where = "is local" if m.local else "needs a download"
    size = f"{_params_b(m):.0f}B" if _params_b(m) else "unknown size"
    matched = [s for s in best.matched if s != query_type]
    fits = f", covers {', '.join(matched)}" if matched else ""
    r = m.stats.by_type.get(query_type) if ratings else None  # not given as a reason when ignored
    rated = f", {r.positive_votes} of {r.votes} ratings for {query_type} good" if r and r.votes else ""
    catalog = (
        f"{m.scores.get(query_type, NEUTRAL_SCORE):.0f}/100 for {query_type}"
        if m.catalogued
        else "uncatalogued"
    )
    return f"{m.name} {where} ({size}, {catalog}{fits}{rated}) and suits a {complexity} question."
