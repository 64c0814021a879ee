"""Training the local router's classifier, offline: `python -m core.routing.training`.

Reads the project's own examples (core/data/router_examples/{type}.jsonl and threads.jsonl) and writes
core/data/local_router.npz. Steps:

1. features: MiniLM embedding + form features (dense), hashed tf-idf (lexical);
2. for every candidate dense and lexical classifier, out-of-fold logits from grouped 5-fold
   cross-validation. A group is a run of BLOCK consecutive examples of a file: authors write in
   batches of one style (search-style, multilingual, multiple choice...), so held-out folds differ in
   style from the training folds, as real questions differ from our examples, and a template written
   five times with other numbers cannot flatter a model that memorises it. (Joining near-duplicates
   across blocks as well chained 434 of the 554 reasoning examples into one group, leaving folds
   without most reasoning styles: too pessimistic to choose by.)
3. per pair, the blend share and temperature that minimise the held-out log-loss (this calibrates the
   confidence); the pair with the best held-out macro-F1 wins and is refitted on all examples;
4. the thread mixing weights, fitted on threads.jsonl.

scikit-learn and scipy are needed here only; inference (core/routing/local.py) is numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.routing.embedding import MiniLMEncoder
from core.routing.local import (
    DEFAULT_ARTIFACT,
    FORM_FEATURES,
    LEX_SIZE,
    QUERY_TOKENS,
    LocalRouter,
    TrainedModel,
    form_features,
    lexical_counts,
    lexical_vector,
    log_softmax,
    mlp_forward,
    softmax,
    thread_mix,
)
from core.types import QUERY_TYPES, Turn

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "router_examples"
BLOCK = 60
FOLDS = 5
THREAD_START = np.array([-8.0, 2.0, 4.0, 1.0])  # until fitted: trust the thread over a short follow-up
SWITCH_SHARE = 0.25


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class ThreadExample:
    history: tuple[Turn, ...]
    query: str
    label: str


@dataclass(frozen=True)
class DenseConfig:
    hidden: int = (
        0  # 0: multinomial logistic regression (strength = C); else one ReLU layer (strength = L2 alpha)
    )
    strength: float = 0.01

    def describe(self) -> str:
        return f"mlp{self.hidden} alpha={self.strength:g}" if self.hidden else f"logreg C={self.strength:g}"


@dataclass(frozen=True)
class ClassifierConfig:
    dense: DenseConfig = DenseConfig()
    lexical_c: float = 30.0

    def describe(self) -> str:
        return f"{self.dense.describe()} + lexical logreg C={self.lexical_c:g}"


DENSE_CANDIDATES = (DenseConfig(0, 0.01), DenseConfig(256, 0.1), DenseConfig(256, 0.3))
LEXICAL_CANDIDATES = (10.0, 30.0)


# --------------------------------------------------------------------------------------------------
# Data


def load_examples(directory: Path = EXAMPLES_DIR) -> list[Example]:
    rows: list[Example] = []
    for label in QUERY_TYPES:
        for line in (directory / f"{label}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows.append(Example(text=row["text"], label=row.get("label", label)))
    return rows


def load_threads(directory: Path = EXAMPLES_DIR) -> list[ThreadExample]:
    path = directory / "threads.jsonl"
    if not path.exists():
        return []
    rows: list[ThreadExample] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            history = tuple(Turn(role=t["role"], content=t["content"]) for t in row["history"])
            rows.append(ThreadExample(history=history, query=row["query"], label=row["label"]))
    return rows


def examples_hash(examples: Sequence[Example], threads: Sequence[ThreadExample] = ()) -> str:
    """Identifies the training data regardless of row order; stored in the artifact to spot staleness."""
    lines = sorted(json.dumps([e.text, e.label], ensure_ascii=False) for e in examples)
    lines += sorted(
        json.dumps([[[t.role, t.content] for t in th.history], th.query, th.label], ensure_ascii=False)
        for th in threads
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def featurize(encoder: MiniLMEncoder, texts: Sequence[str], max_tokens: int = QUERY_TOKENS) -> np.ndarray:
    """Embedding + form features for many texts: the vector LocalRouter.features builds for one."""
    embeddings = encoder.encode(texts, max_tokens=max_tokens)
    forms = np.stack([form_features(t) for t in texts])
    return np.concatenate([embeddings, forms], axis=1)


class FeatureCache:
    """Dense features by text, so a retraining embeds only the texts it has not seen (embedding the
    3,474 shipped examples takes over a minute on two idle cores).

    Kept in an npz file (text hashes and the feature matrix) when given a path. The signature (encoder
    and form features) is stored with it: features of another encoder or feature set start afresh.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._rows: dict[str, np.ndarray] = {}
        self._signature = ""
        self._dirty = False

    def _key(self, text: str, max_tokens: int) -> str:
        return hashlib.sha256(f"{max_tokens}\0{text}".encode()).hexdigest()[:32]

    def _check(self, encoder: MiniLMEncoder) -> None:
        signature = f"{encoder.model_dir.name}:{encoder.dim}:{','.join(FORM_FEATURES)}"
        if signature == self._signature:
            return
        self._rows, self._signature = {}, signature
        if self.path is not None and self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    if str(z["signature"]) == signature:
                        self._rows = dict(zip((str(k) for k in z["keys"]), z["features"], strict=True))
            except (OSError, ValueError, KeyError):
                pass  # unreadable: recompute (it is only a cache)

    def featurize(
        self, encoder: MiniLMEncoder, texts: Sequence[str], max_tokens: int = QUERY_TOKENS
    ) -> np.ndarray:
        self._check(encoder)
        keys = [self._key(t, max_tokens) for t in texts]
        missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in self._rows}.items())
        if missing:
            fresh = featurize(encoder, [t for _, t in missing], max_tokens)
            self._rows.update(zip((k for k, _ in missing), fresh, strict=True))
            self._dirty = True
        return np.stack([self._rows[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                signature=np.array(self._signature),
                keys=np.array(list(self._rows)),
                features=np.stack(list(self._rows.values())).astype(np.float32),
            )
        tmp.replace(self.path)  # another process reading it sees the old file or the new, never half
        self._dirty = False


# --------------------------------------------------------------------------------------------------
# Metrics


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = QUERY_TYPES) -> float:
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != label and p == label for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == label and p != label for t, p in zip(y_true, y_pred, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    which = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total / max(len(confidence), 1))


# --------------------------------------------------------------------------------------------------
# The two classifiers


@dataclass(frozen=True)
class _Dense:
    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return mlp_forward(x, self.mean, self.scale, self.weights, self.biases)


def _fit_dense(config: DenseConfig, x: np.ndarray, y: np.ndarray, seed: int) -> _Dense:
    """`y` holds indices into QUERY_TYPES, so output columns come out in QUERY_TYPES order."""
    mean = x.mean(0).astype(np.float32)
    scale = x.std(0).astype(np.float32)
    scale[scale < 1e-6] = 1.0  # a feature constant in training carries no signal; keep it finite
    z = (x - mean) / scale
    if config.hidden:
        from sklearn.neural_network import MLPClassifier

        mlp = MLPClassifier((config.hidden,), alpha=config.strength, max_iter=400, random_state=seed).fit(
            z, y
        )
        weights, biases = mlp.coefs_, mlp.intercepts_
    else:
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=config.strength, max_iter=3000).fit(z, y)
        weights, biases = [lr.coef_.T], [lr.intercept_]
    return _Dense(
        mean, scale, tuple(w.astype(np.float32) for w in weights), tuple(b.astype(np.float32) for b in biases)
    )


Counts = tuple[Counter[int], Counter[int]]


@dataclass(frozen=True)
class _Lexical:
    idf: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def logits(self, counts: Sequence[Counts]) -> np.ndarray:
        return _lexical_matrix(counts, self.idf) @ self.weights + self.bias


def _lexical_matrix(counts: Sequence[Counts], idf: np.ndarray):  # -> scipy.sparse.csr_matrix
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for r, c in enumerate(counts):
        idx, val = lexical_vector(c, idf)
        rows.append(np.full(len(idx), r))
        cols.append(idx)
        vals.append(val)
    return csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(counts), 2 * LEX_SIZE),
    )


def _fit_lexical(c: float, counts: Sequence[Counts], y: np.ndarray) -> _Lexical:
    from sklearn.linear_model import LogisticRegression

    # smoothed idf, as scikit-learn's TfidfVectorizer computes it
    df = np.zeros((2, LEX_SIZE))
    for doc in counts:
        for block in (0, 1):
            df[block, list(doc[block])] += 1
    idf = (np.log((1 + len(counts)) / (1 + df)) + 1).astype(np.float32)
    lr = LogisticRegression(C=c, max_iter=3000).fit(_lexical_matrix(counts, idf), y)
    return _Lexical(idf, lr.coef_.T.astype(np.float32), lr.intercept_.astype(np.float32))


def fit_blend(dense_logits: np.ndarray, lexical_logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(dense share, temperature) minimising the log-loss of the blend on held-out logits."""
    from scipy.optimize import minimize

    ld, ll = log_softmax(dense_logits), log_softmax(lexical_logits)

    def nll(log_ab: np.ndarray) -> float:
        a, b = np.exp(log_ab)
        p = softmax(a * ld + b * ll)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    a, b = np.exp(minimize(nll, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-4}).x)
    return float(a / (a + b)), float(1.0 / (a + b))


def _blend(
    dense_logits: np.ndarray, lexical_logits: np.ndarray, share: float, temperature: float
) -> np.ndarray:
    return softmax(
        (share * log_softmax(dense_logits) + (1 - share) * log_softmax(lexical_logits)) / temperature
    )


def _groups(labels: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """Cross-validation groups: runs of BLOCK consecutive examples of one label (shorter runs when a
    label has too few examples to give every fold some)."""
    group = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        block = max(1, min(BLOCK, len(rows) // folds))
        group[rows] = int(label) * 100_000 + np.arange(len(rows)) // block
    return group


# --------------------------------------------------------------------------------------------------
# Threads


@dataclass(frozen=True)
class _ThreadInputs:
    p_query: np.ndarray
    pieces: int
    p_users: np.ndarray | None
    p_answer: np.ndarray | None
    label: int


def _thread_inputs(router: LocalRouter, threads: Sequence[ThreadExample]) -> list[_ThreadInputs]:
    out = []
    for th in threads:
        p_query, pieces = router.text_probs(th.query, router.model.query_tokens)
        p_users, p_answer = router.history_probs(th.history)
        out.append(_ThreadInputs(p_query, pieces, p_users, p_answer, QUERY_TYPES.index(th.label)))  # type: ignore[arg-type]
    return out


def fit_thread_weights(inputs: Sequence[_ThreadInputs]) -> np.ndarray:
    """Mixing weights minimising the thread examples' log-loss.

    The loss has poor local minima (a follow-up's own confidence and length pull in opposite
    directions on the two kinds of example), so a coarse grid picks the start of the local search.
    """
    from scipy.optimize import minimize

    def loss(params: np.ndarray) -> float:
        total = 0.0
        for t in inputs:
            p = thread_mix(t.p_query, t.pieces, t.p_users, t.p_answer, params)
            total -= math.log(max(float(p[t.label]), 1e-9))
        return total / len(inputs) + 1e-4 * float(params @ params)

    grid = itertools.product((-12.0, -8.0, -4.0, 0.0), (0.0, 1.0, 2.0, 3.0), (0.0, 2.0, 4.0, 8.0), (0.5, 1.0))
    start = min((np.array(g) for g in grid), key=loss)
    params = minimize(loss, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-4}).x.copy()
    params[3] = min(max(params[3], 0.0), 1.0)
    return params


def _thread_cv(inputs: Sequence[_ThreadInputs], seed: int) -> np.ndarray:
    """Predictions of the thread mixing when its weights are fitted on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([t.label for t in inputs])
    predicted = np.zeros(len(inputs), dtype=int)
    for train_idx, test_idx in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(labels, labels):
        params = fit_thread_weights([inputs[i] for i in train_idx])
        for i in test_idx:
            t = inputs[i]
            predicted[i] = int(np.argmax(thread_mix(t.p_query, t.pieces, t.p_users, t.p_answer, params)))
    return predicted


def topic_switches(threads: Sequence[ThreadExample], share: float = SWITCH_SHARE) -> list[ThreadExample]:
    """Threads whose next message is a new, self-contained question of another type (another thread's
    opening question). threads.jsonl holds only follow-ups that stay on topic; without these the fitted
    weights would trust the thread even over a full new question."""
    openers = [
        (th.history[0].content, th.label) for th in threads if th.history and th.history[0].role == "user"
    ]
    n = int(len(threads) * share)
    out = []
    for k in range(n):
        th = threads[k * len(threads) // n]
        for step in range(1, len(openers)):
            text, label = openers[(k * 37 + step) % len(openers)]
            if label != th.label:
                out.append(ThreadExample(history=th.history, query=text, label=label))
                break
    return out


def fit_threads(
    model: TrainedModel,
    encoder: MiniLMEncoder,
    threads: Sequence[ThreadExample],
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> TrainedModel:
    """The model with its thread mixing weights fitted on `threads` plus topic switches built from them."""
    switches = topic_switches(threads)
    router = LocalRouter(encoder, model)
    inputs = _thread_inputs(router, [*threads, *switches])
    truth = [QUERY_TYPES[t.label] for t in inputs]
    alone = [QUERY_TYPES[int(np.argmax(t.p_query))] for t in inputs]
    mixed = [QUERY_TYPES[i] for i in _thread_cv(inputs, seed)]
    n = len(threads)
    switch_acc = (
        float(np.mean([a == b for a, b in zip(truth[n:], mixed[n:], strict=True)])) if switches else 0.0
    )
    params = fit_thread_weights(inputs)
    info = {
        **model.info,
        "threads": n,
        "topic_switches": len(switches),
        "followup_alone_macro_f1": round(macro_f1(truth[:n], alone[:n]), 4),
        "thread_cv_macro_f1": round(macro_f1(truth[:n], mixed[:n]), 4),
        "topic_switch_cv_accuracy": round(switch_acc, 4),
        "thread_params": [round(float(p), 4) for p in params],
    }
    log(
        f"threads: follow-up alone macro-F1 {info['followup_alone_macro_f1']}; with the thread (cv) "
        f"{info['thread_cv_macro_f1']}; topic switches (cv) accuracy {switch_acc:.4f}; "
        f"params {params.round(3)}"
    )
    return replace(model, thread=params, info=info)


# --------------------------------------------------------------------------------------------------


def train(
    examples: Sequence[Example],
    threads: Sequence[ThreadExample] = (),
    *,
    encoder: MiniLMEncoder | None = None,
    config: ClassifierConfig | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    folds: int = FOLDS,
    cache: FeatureCache | None = None,
) -> TrainedModel:
    """Fit the classifiers (chosen by grouped cross-validation unless `config` is given), their blend
    and temperature, and the thread weights. Deterministic for a given seed.

    Retraining (core/routing/distill.py) passes a fixed `config`, fewer `folds` and a feature `cache`:
    the same recipe at a fraction of the time."""
    from sklearn.model_selection import StratifiedGroupKFold

    started = time.perf_counter()
    unknown = {e.label for e in examples} - set(QUERY_TYPES)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}")
    encoder = encoder or MiniLMEncoder.load()
    texts = [e.text for e in examples]
    y = np.array([QUERY_TYPES.index(e.label) for e in examples])  # type: ignore[arg-type]
    dense_x = cache.featurize(encoder, texts) if cache is not None else featurize(encoder, texts)
    counts = [lexical_counts(t) for t in texts]
    groups = _groups(y, folds)
    log(
        f"{len(texts)} examples in {len(set(groups))} cross-validation groups, featurised in "
        f"{time.perf_counter() - started:.1f}s"
    )

    dense_cands = [config.dense] if config else list(DENSE_CANDIDATES)
    lexical_cands = [config.lexical_c] if config else list(LEXICAL_CANDIDATES)
    oof_dense = {c: np.zeros((len(y), len(QUERY_TYPES))) for c in dense_cands}
    oof_lex = {c: np.zeros((len(y), len(QUERY_TYPES))) for c in lexical_cands}
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in splitter.split(dense_x, y, groups):
        for dc in dense_cands:
            oof_dense[dc][te] = _fit_dense(dc, dense_x[tr], y[tr], seed).logits(dense_x[te])
        for lc in lexical_cands:
            oof_lex[lc][te] = _fit_lexical(lc, [counts[i] for i in tr], y[tr]).logits([counts[i] for i in te])

    labels = [e.label for e in examples]

    def f1_of(logits: np.ndarray) -> float:
        return macro_f1(labels, [QUERY_TYPES[i] for i in logits.argmax(1)])

    for dc in dense_cands:
        log(f"  cv {dc.describe():32s} macro-F1 {f1_of(oof_dense[dc]):.4f}")
    for lc in lexical_cands:
        log(f"  cv {'lexical logreg C=' + format(lc, 'g'):32s} macro-F1 {f1_of(oof_lex[lc]):.4f}")
    best: tuple[float, ClassifierConfig, float, float, np.ndarray] | None = None
    for dc in dense_cands:
        for lc in lexical_cands:
            share, temperature = fit_blend(oof_dense[dc], oof_lex[lc], y)
            probs = _blend(oof_dense[dc], oof_lex[lc], share, temperature)
            f1 = f1_of(probs)
            cand = ClassifierConfig(dc, lc)
            log(
                f"  cv blend {cand.describe():48s} macro-F1 {f1:.4f} "
                f"(dense share {share:.2f}, T {temperature:.2f})"
            )
            if best is None or round(f1, 3) > round(best[0], 3):  # ties keep the earlier, simpler one
                best = (f1, cand, share, temperature, probs)
    assert best is not None
    cv_f1, chosen, share, temperature, oof_probs = best
    ece = expected_calibration_error(oof_probs.max(1), oof_probs.argmax(1) == y)
    log(f"chosen {chosen.describe()}: cv macro-F1 {cv_f1:.4f}, cv ECE {ece:.4f}")

    dense = _fit_dense(chosen.dense, dense_x, y, seed)
    lexical = _fit_lexical(chosen.lexical_c, counts, y)
    info: dict[str, object] = {
        "classifier": chosen.describe(),
        "examples": len(texts),
        "cv_macro_f1": round(cv_f1, 4),
        "cv_ece": round(ece, 4),
        "query_tokens": QUERY_TOKENS,
    }
    model = TrainedModel(
        labels=QUERY_TYPES,
        mean=dense.mean,
        scale=dense.scale,
        weights=dense.weights,
        biases=dense.biases,
        lex_idf=lexical.idf,
        lex_weights=lexical.weights,
        lex_bias=lexical.bias,
        dense_share=share,
        temperature=temperature,
        thread=THREAD_START.copy(),
        data_hash=examples_hash(examples, threads),
        info=info,
    )
    if threads:
        model = fit_threads(model, encoder, threads, seed, log)
    log(f"trained in {time.perf_counter() - started:.1f}s")
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the local router's classifier.")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_DIR, help="directory of {type}.jsonl files")
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT, help="artifact to write (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = train(load_examples(args.examples), load_threads(args.examples), seed=args.seed)
    model.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
