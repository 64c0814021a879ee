"""Feedback: what users' ratings say about a model for one query type, as a Beta belief.

Each (model, query type) starts from the catalog's score as a prior worth PRIOR_VOTES ratings, so
three thumbs-down cannot bury a model the benchmarks rate well. Every rating then counts for
0.5 ** (age / feedback_halflife_days): a model whose tag now points at a better (or worse) build is
not judged forever by last season's votes. The belief's mean steers the deterministic model choice;
a draw from it lets the local router explore among comparable models (core/routing/selection.py).

The catalog score (a benchmark, 0-100) and the share of thumbs-up are different scales used as one.
Rated models therefore drift towards their users' verdict and unrated ones keep their catalog score:
an optimistic prior, which the exploration corrects by trying the unrated models now and then.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from core.types import ModelInfo, Ratings

PRIOR_VOTES = 30.0
DEFAULT_HALFLIFE_DAYS = 30.0
NEUTRAL_SCORE = 50.0  # what an uncatalogued model is assumed to score
# a catalog score of 0 or 100 would make a Beta prior that no rating can move
PRIOR_BOUNDS = (0.02, 0.98)


def decay(age_days: float, halflife_days: float) -> float:
    """The weight of a rating `age_days` old (a rating from the future counts fully)."""
    return 0.5 ** (max(age_days, 0.0) / halflife_days)


@dataclass(frozen=True)
class RatingCount:
    """`count` ratings of `rating` (1 or -1) given to `model`'s answers to `query_type` around `at`."""

    model: str
    query_type: str
    rating: int
    count: int
    at: datetime


def tally(
    rows: Iterable[RatingCount], *, now: datetime, halflife_days: float
) -> dict[str, dict[str, Ratings]]:
    """model -> query type -> Ratings, each rating weighted by its age."""
    acc: dict[tuple[str, str], list[float]] = {}
    last: dict[tuple[str, str], datetime] = {}
    for r in rows:
        key = (r.model, r.query_type)
        a = acc.setdefault(key, [0.0, 0.0, 0, 0])
        w = r.count * decay((now - r.at).total_seconds() / 86400.0, halflife_days)
        a[1] += w
        a[2] += r.count
        if r.rating > 0:
            a[0] += w
            a[3] += r.count
        if key not in last or r.at > last[key]:
            last[key] = r.at
    out: dict[str, dict[str, Ratings]] = {}
    for (model, query_type), (pos, total, votes, pos_votes) in acc.items():
        out.setdefault(model, {})[query_type] = Ratings(
            positive=pos,
            total=total,
            votes=int(votes),
            positive_votes=int(pos_votes),
            last_rated=last[(model, query_type)],
        )
    return out


@dataclass(frozen=True)
class Belief:
    """Beta(alpha, beta) over the chance that the model's next answer of this type satisfies."""

    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def draw(self, rng: random.Random) -> float:
        return rng.betavariate(self.alpha, self.beta)


def prior(m: ModelInfo, query_type: str) -> float:
    low, high = PRIOR_BOUNDS
    return min(max(m.scores.get(query_type, NEUTRAL_SCORE) / 100.0, low), high)


def belief(m: ModelInfo, query_type: str, *, ratings: bool = True) -> Belief:
    """The catalog's prior for the task updated by the (decayed) ratings of the model's answers to it;
    the prior alone without `ratings` (user_feedback_integration off)."""
    p = prior(m, query_type)
    r = m.stats.by_type.get(query_type) if ratings else None
    positive, total = (r.positive, r.total) if r is not None else (0.0, 0.0)
    return Belief(positive + PRIOR_VOTES * p, (total - positive) + PRIOR_VOTES * (1.0 - p))


def is_rated(m: ModelInfo, query_type: str) -> bool:
    r = m.stats.by_type.get(query_type)
    return r is not None and r.votes > 0


def success_rate(r: Ratings) -> float | None:
    """Share of positive ratings, recent ones weighing more; None when nothing is left to weigh."""
    return r.positive / r.total if r.total > 0 else None
