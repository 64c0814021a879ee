"""The distilled local router: retrain the offline classifier on the meta-router's decisions.

`metarouter train-router` and the nightly job run `train_router`; every replica runs `sync_router`
(at start-up and every `router_reload_s`) to switch to the version the database marks active.

What the stored requests teach, and what they do not:
- A meta-router decision the bot followed (source "openai", no fallback reason) with its question
  text is a label: the query type a stronger model gave a real question of this team. When the
  meta-router was not followed (low confidence, unknown model, ...) the stored type is the local
  router's own, and learning from its own outputs would only entrench its mistakes.
- A rating judges the answer, and so the model as much as the type: a 👎 may mean "wrong kind of
  model" or just "weak answer". It cannot say which type was right, but it makes the label doubtful,
  and a doubtful label costs more than one example fewer: questions rated net-negative are left
  out. A 👍 adds nothing: a good general model answers a mislabelled question well too.
- A re-run ("Try <model>", the /route buttons) is a person choosing a model, not a type: its request
  repeats the router's type under the person's model. It corrects model choice (the feedback
  statistics learn from that), so here it is only the same question again: each question counts
  once, with its latest label and rating.
- The shipped examples were written and checked by hand: a stored question with the same text as
  one of them keeps the shipped label.

Validation. One text in HOLDOUT (by a hash of the text, so the split is the same on every run and
every replica) is held back. Two models are trained on the rest with one recipe: the current one's
data (shipped examples plus the decisions the active version learned from) and the candidate's (plus
the new decisions). Scoring the installed model itself would flatter it: it was refitted on the
held-back rows. The candidate is installed when its macro-F1 on all held-back rows is not lower than
the current's, and on the held-back *shipped* rows is not more than SHIPPED_TOLERANCE lower: a batch
of wrong stored labels also poisons the held-back decisions, but cannot touch those. It is then
refitted on every row and stored as the active version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.routing.local import DEFAULT_ARTIFACT, LocalRouter, TrainedModel
from core.store.repository import LabelledDecision, Store, query_hash
from core.types import QUERY_TYPES

if TYPE_CHECKING:
    from core.config import Settings
    from core.routing.embedding import MiniLMEncoder
    from core.routing.training import Example

log = logging.getLogger(__name__)

HOLDOUT = 5  # one text in five is held back
SHIPPED_TOLERANCE = 0.01  # macro-F1 the candidate may lose on the held-back shipped examples
FOLDS = 3  # cross-validation folds for the blend and temperature (the offline training uses 5)
MLP_ALPHA = 0.1  # the L2 strength the offline training chose for the 256-unit MLP
LEXICAL_C = 30.0
FEATURE_CACHE = "router_features.npz"


@dataclass(frozen=True)
class Scores:
    n: int
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class TrainReport:
    installed: bool
    reason: str
    version: int | None  # the recorded run; None when nothing was recorded (dry run, nothing to learn)
    examples: int = 0  # training rows of the installed refit: shipped and stored
    decisions: int = 0  # stored decisions used
    new_decisions: int = 0  # of them, since the active version
    dropped: int = 0  # stored decisions left out (rated net-negative, duplicates of shipped examples)
    current: dict[str, Scores] = field(default_factory=dict)  # held-back part -> scores
    candidate: dict[str, Scores] = field(default_factory=dict)
    train_s: float = 0.0
    # the two validated models (trained without the held-back rows), for benchmarks to score further
    models: dict[str, TrainedModel] = field(default_factory=dict, repr=False)

    def metrics(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "current": {k: asdict(v) for k, v in self.current.items()},
            "candidate": {k: asdict(v) for k, v in self.candidate.items()},
            "new_decisions": self.new_decisions,
            "dropped": self.dropped,
            "train_s": round(self.train_s, 1),
        }


def held_back(text: str) -> bool:
    return int(query_hash(text)[:8], 16) % HOLDOUT == 0


def select_decisions(
    decisions: Sequence[LabelledDecision], shipped_texts: set[str]
) -> tuple[list[LabelledDecision], int]:
    """The stored decisions worth learning from (see the module docstring), and how many were left out."""
    latest: dict[str, LabelledDecision] = {}
    for d in decisions:  # oldest first: a later label of the same question replaces an earlier one
        latest.pop(query_hash(d.text), None)
        latest[query_hash(d.text)] = d
    kept = [
        d
        for key, d in latest.items()
        if d.rating >= 0 and key not in shipped_texts and d.query_type in QUERY_TYPES and d.text.strip()
    ]
    return kept, len(decisions) - len(kept)


def scores(model: TrainedModel, features: np.ndarray, texts: Sequence[str], labels: Sequence[str]) -> Scores:
    """Accuracy and macro-F1 of a model over texts whose dense features are given (batched: the
    router's own `classify` would embed each text again)."""
    from core.routing.training import macro_f1

    if not texts:
        return Scores(0, 0.0, 0.0)
    lexical = np.stack([model.lexical_logits(t) for t in texts])
    probs = model.blend(model.dense_logits(features), lexical)
    predicted = [model.labels[i] for i in probs.argmax(1)]
    accuracy = float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))
    return Scores(len(texts), round(accuracy, 4), round(macro_f1(labels, predicted), 4))


@dataclass
class _Data:
    shipped: list[Example]
    thread: np.ndarray  # the thread mixing weights, taken over from the shipped model
    decisions: list[LabelledDecision]  # selected, oldest first
    dropped: int
    seen_up_to: int  # the request id the active version learned up to


def _train_and_validate(
    data: _Data,
    settings: Settings,
    encoder: MiniLMEncoder | None,
    dry_run: bool,
    log_line: Callable[[str], None],
) -> tuple[TrainReport, bytes | None]:
    """The CPU part, run in a worker thread: train current and candidate, compare, refit the winner."""
    from core.routing.embedding import MiniLMEncoder
    from core.routing.training import ClassifierConfig, DenseConfig, Example, FeatureCache, train

    started = time.perf_counter()
    encoder = encoder or MiniLMEncoder.load()
    hidden = settings.train_router_hidden
    config = ClassifierConfig(DenseConfig(hidden, MLP_ALPHA if hidden else 0.01), LEXICAL_C)
    cache = FeatureCache(settings.data_dir / FEATURE_CACHE)

    stored = [(d, Example(d.text, d.query_type)) for d in data.decisions]
    ship_train = [e for e in data.shipped if not held_back(e.text)]
    ship_held = [e for e in data.shipped if held_back(e.text)]
    old_train = [e for d, e in stored if d.request_id <= data.seen_up_to and not held_back(e.text)]
    new_train = [e for d, e in stored if d.request_id > data.seen_up_to and not held_back(e.text)]
    dec_held = [e for _, e in stored if held_back(e.text)]
    new = sum(d.request_id > data.seen_up_to for d in data.decisions)

    parts = {"all": ship_held + dec_held, "shipped": ship_held, "decisions": dec_held}
    features = {k: cache.featurize(encoder, [e.text for e in v]) for k, v in parts.items() if v}

    def evaluate(model: TrainedModel) -> dict[str, Scores]:
        return {
            k: scores(model, features[k], [e.text for e in v], [e.label for e in v])
            for k, v in parts.items()
            if v
        }

    log_line(
        f"training the current recipe on {len(ship_train)} shipped + {len(old_train)} stored examples, "
        f"the candidate on {len(new_train)} more; {len(parts['all'])} held back"
    )

    def fit(examples: list[Example]) -> TrainedModel:
        model = train(
            examples,
            (),
            encoder=encoder,
            config=config,
            folds=FOLDS,
            cache=cache,
            log=log_line,
        )
        return replace(model, thread=data.thread)

    models = {"current": fit(ship_train + old_train), "candidate": fit(ship_train + old_train + new_train)}
    current, candidate = evaluate(models["current"]), evaluate(models["candidate"])
    worse = candidate["all"].macro_f1 < current["all"].macro_f1
    shipped_drop = current["shipped"].macro_f1 - candidate["shipped"].macro_f1
    if worse:
        reason = "worse on the held-back examples"
    elif shipped_drop > SHIPPED_TOLERANCE:
        reason = f"{shipped_drop:.3f} macro-F1 worse on the held-back shipped examples"
    else:
        reason = "not worse on the held-back examples"
    installed = not worse and shipped_drop <= SHIPPED_TOLERANCE
    artifact: bytes | None = None
    everything = data.shipped + [e for _, e in stored]
    if installed and not dry_run:
        log_line(f"refitting on all {len(everything)} examples")
        model = fit(everything)
        artifact = replace(model, info={**model.info, "distilled_from": len(stored)}).to_bytes()
    cache.save()
    report = TrainReport(
        installed=installed and not dry_run,
        reason=reason,
        version=None,
        examples=len(everything),
        decisions=len(stored),
        new_decisions=new,
        dropped=data.dropped,
        current=current,
        candidate=candidate,
        train_s=time.perf_counter() - started,
        models=models,
    )
    return report, artifact


async def train_router(
    settings: Settings,
    store: Store,
    *,
    dry_run: bool = False,
    encoder: MiniLMEncoder | None = None,
    log_line: Callable[[str], None] = log.info,
) -> TrainReport:
    """Retrain on the shipped examples and the stored decisions; install the result if not worse.

    Training runs in a worker thread: it takes minutes of CPU, and the bot keeps answering meanwhile.
    """
    from core.routing.training import EXAMPLES_DIR, load_examples

    directory: Path = settings.train_router_examples or EXAMPLES_DIR
    shipped = await asyncio.to_thread(load_examples, directory)
    # The thread mixing weights are fitted on the shipped thread examples, which stored decisions do
    # not add to, and they act on probabilities that every training calibrates anew (the blend
    # temperature): a retrained model keeps the shipped model's and saves their slow refit.
    thread = (await asyncio.to_thread(TrainedModel.load, DEFAULT_ARTIFACT)).thread
    versions = await store.router_versions()
    active = next((v for v in versions if v.active), None)
    seen_up_to = active.last_request_id if active is not None else 0
    stored = await store.meta_labelled_decisions()
    decisions, dropped = select_decisions(stored, {query_hash(e.text) for e in shipped})
    if not any(d.request_id > seen_up_to for d in decisions):
        return TrainReport(False, "no new labelled decisions since the active version", None, dropped=dropped)
    data = _Data(shipped, thread, decisions, dropped, seen_up_to)
    report, artifact = await asyncio.to_thread(
        _train_and_validate, data, settings, encoder, dry_run, log_line
    )
    if dry_run:
        return report
    last_id = max((d.request_id for d in stored), default=0)
    version = await store.add_router_version(
        artifact=artifact,
        metrics=report.metrics(),
        examples=report.examples,
        decisions=report.decisions,
        last_request_id=last_id,
        keep=settings.train_router_keep,
    )
    return replace(report, version=version)


async def nightly(settings: Settings, store: Store, router: LocalRouter | None) -> TrainReport | None:
    """The scheduled run: retrain when at least `train_router_min_new` labelled decisions arrived
    since the last run (installed or not), and switch this process to a newly installed version."""
    versions = await store.router_versions()
    since = versions[0].last_request_id if versions else 0
    new = await store.count_meta_labelled(since)
    need = settings.train_router_min_new
    if new < need:
        log.info(
            "train-router: %d new labelled decisions, fewer than %d; skipped",
            new,
            settings.train_router_min_new,
        )
        return None
    report = await train_router(settings, store, encoder=router.encoder if router else None)
    log.warning(
        "train-router: version %s %s (%s); held-back macro-F1 %.4f -> %.4f",
        report.version,
        "installed" if report.installed else "not installed",
        report.reason,
        report.current["all"].macro_f1 if report.current else float("nan"),
        report.candidate["all"].macro_f1 if report.candidate else float("nan"),
    )
    if report.installed and router is not None:
        await sync_router(store, router)
    return report


async def sync_router(store: Store, router: LocalRouter) -> int:
    """Switch `router` to the version the database marks active (0: the shipped artifact), if it is
    not the one in use. Returns the version in use."""
    active = await store.active_router_version()
    if active == router.version:
        return active
    if active == 0:
        model = router.shipped or await asyncio.to_thread(TrainedModel.load, DEFAULT_ARTIFACT)
    else:
        data = await store.router_artifact(active)
        if data is None:  # pruned or rolled back between the two reads: next time
            return router.version
        model = await asyncio.to_thread(TrainedModel.from_bytes, data, f"router version {active}")
    router.use(model, active)
    log.warning("local router: now using version %d", active)
    return active


async def watch_router(store: Store, router: LocalRouter, interval_s: float) -> None:
    """Every `interval_s`, pick up a version another replica (or `train-router`) activated."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await sync_router(store, router)
        except Exception:
            log.warning("cannot check the local router version", exc_info=True)
