"""Training the local router's classifier, offline: `python -m core.routing.training`.

Reads the project's own examples (core/data/router_examples/{type}.jsonl and threads.jsonl), picks the
classifier by cross-validation on them, fits a calibration temperature on held-out folds, fits the
thread mixing weights on threads.jsonl, and writes core/data/local_router.npz. scikit-learn and scipy
are needed here only; inference (core/routing/local.py) is numpy.

Cross-validation groups near-duplicate examples (cosine >= GROUP_COSINE) into one fold, so a template
written five times with other numbers cannot flatter a model that memorises it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.routing.embedding import MiniLMEncoder
from core.routing.local import (
    DEFAULT_ARTIFACT,
    QUERY_TOKENS,
    LocalRouter,
    TrainedModel,
    form_features,
    softmax,
    thread_mix,
)
from core.types import QUERY_TYPES, Turn

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "router_examples"
GROUP_COSINE = 0.9
FOLDS = 5
THREAD_START = np.array([0.0, -0.5, 2.0, 0.7])


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
class ClassifierConfig:
    """One candidate: regularisation strength, optional hidden layer, and whether to add form features."""

    c: float = 1.0
    hidden: int = 0  # 0: multinomial logistic regression; else one ReLU layer of this width
    form: bool = True

    def describe(self) -> str:
        kind = f"mlp{self.hidden}" if self.hidden else "logreg"
        return f"{kind} C={self.c:g}{' +form' if self.form else ''}"


CANDIDATES: tuple[ClassifierConfig, ...] = (
    *(ClassifierConfig(c=c, form=True) for c in (0.03, 0.1, 0.3, 1.0, 3.0)),
    *(ClassifierConfig(c=c, form=False) for c in (0.1, 0.3, 1.0)),
    ClassifierConfig(c=1.0, hidden=128),
    ClassifierConfig(c=0.3, hidden=128),
)


# --------------------------------------------------------------------------------------------------
# Data


def load_examples(directory: Path = EXAMPLES_DIR) -> list[Example]:
    rows: list[Example] = []
    for label in QUERY_TYPES:
        path = directory / f"{label}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
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
    """Embedding + form features for many texts: the same vector LocalRouter.features builds for one."""
    embeddings = encoder.encode(texts, max_tokens=max_tokens)
    forms = np.stack([form_features(t) for t in texts]) if texts else np.zeros((0, 0), np.float32)
    return np.concatenate([embeddings, forms], axis=1)


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
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total / max(len(confidence), 1))


# --------------------------------------------------------------------------------------------------
# Fitting


def _groups(embeddings: np.ndarray, threshold: float = GROUP_COSINE) -> np.ndarray:
    """Connected components of the 'near-duplicate' graph (cosine >= threshold)."""
    n = len(embeddings)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    sims = embeddings @ embeddings.T
    for i, j in zip(*np.nonzero(np.triu(sims >= threshold, k=1)), strict=True):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[ri] = rj
    return np.array([find(i) for i in range(n)])


def _fit(config: ClassifierConfig, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[list, list]:
    """Fit one candidate on standardised features; returns (weights, biases) as x @ w + b layers.

    `y` holds indices into QUERY_TYPES, so the output columns come out in QUERY_TYPES order."""
    if config.hidden:
        from sklearn.neural_network import MLPClassifier

        mlp = MLPClassifier(
            hidden_layer_sizes=(config.hidden,),
            alpha=1.0 / (config.c * len(x)),
            max_iter=400,
            early_stopping=False,
            random_state=seed,
        )
        mlp.fit(x, y)
        return [w.astype(np.float32) for w in mlp.coefs_], [b.astype(np.float32) for b in mlp.intercepts_]
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=config.c, max_iter=3000)
    lr.fit(x, y)
    return [lr.coef_.T.astype(np.float32)], [lr.intercept_.astype(np.float32)]


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-6] = 1.0  # a feature constant in training carries no signal; keep it finite
    return mean.astype(np.float32), scale.astype(np.float32)


def _columns(config: ClassifierConfig, features: np.ndarray, dim: int) -> np.ndarray:
    return features if config.form else features[:, :dim]


def _model(
    config: ClassifierConfig, features: np.ndarray, y: np.ndarray, dim: int, seed: int
) -> TrainedModel:
    x = _columns(config, features, dim)
    mean, scale = _standardiser(x)
    weights, biases = _fit(config, (x - mean) / scale, y, seed)
    if not config.form:
        # the artifact always takes the full feature vector: form features get zero weight
        extra = features.shape[1] - dim
        weights[0] = np.concatenate([weights[0], np.zeros((extra, weights[0].shape[1]), np.float32)])
        mean = np.concatenate([mean, np.zeros(extra, np.float32)])
        scale = np.concatenate([scale, np.ones(extra, np.float32)])
    return TrainedModel(
        labels=QUERY_TYPES,
        mean=mean,
        scale=scale,
        weights=tuple(weights),
        biases=tuple(biases),
        temperature=1.0,
        thread=THREAD_START.copy(),
        data_hash="",
    )


def _oof_logits(
    config: ClassifierConfig, features: np.ndarray, y: np.ndarray, groups: np.ndarray, dim: int, seed: int
) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    logits = np.zeros((len(y), len(QUERY_TYPES)))
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    for train_idx, test_idx in folds.split(features, y, groups):
        model = _model(config, features[train_idx], y[train_idx], dim, seed)
        logits[test_idx] = model.logits(features[test_idx])
    return logits


def fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T) on held-out predictions."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(logits / math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y_idx)), y_idx], 1e-12, None)).mean())

    return float(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


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
        p_query, pieces = router._text_probs(th.query, router.model.query_tokens)
        p_users, p_answer = router.history_probs(th.history)
        out.append(_ThreadInputs(p_query, pieces, p_users, p_answer, QUERY_TYPES.index(th.label)))  # type: ignore[arg-type]
    return out


def fit_thread_weights(inputs: Sequence[_ThreadInputs], start: np.ndarray = THREAD_START) -> np.ndarray:
    """Mixing weights minimising the thread examples' negative log-likelihood (lightly regularised)."""
    from scipy.optimize import minimize

    def loss(params: np.ndarray) -> float:
        total = 0.0
        for t in inputs:
            p = thread_mix(t.p_query, t.pieces, t.p_users, t.p_answer, params)
            total -= math.log(max(float(p[t.label]), 1e-9))
        return total / len(inputs) + 0.01 * float(np.sum((params - start) ** 2))

    result = minimize(
        loss, start, method="Nelder-Mead", options={"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6}
    )
    params = result.x.copy()
    params[3] = min(max(params[3], 0.0), 1.0)
    return params


def _thread_cv(inputs: Sequence[_ThreadInputs], seed: int) -> float:
    """Macro-F1 of the thread mixing when its weights are fitted on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([t.label for t in inputs])
    predicted = np.zeros(len(inputs), dtype=int)
    for train_idx, test_idx in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(labels, labels):
        params = fit_thread_weights([inputs[i] for i in train_idx])
        for i in test_idx:
            t = inputs[i]
            predicted[i] = int(np.argmax(thread_mix(t.p_query, t.pieces, t.p_users, t.p_answer, params)))
    names = [QUERY_TYPES[i] for i in labels]
    return macro_f1(names, [QUERY_TYPES[i] for i in predicted])


def train(
    examples: Sequence[Example],
    threads: Sequence[ThreadExample] = (),
    *,
    encoder: MiniLMEncoder | None = None,
    config: ClassifierConfig | None = None,
    candidates: Sequence[ClassifierConfig] = CANDIDATES,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> TrainedModel:
    """Fit the classifier (chosen by grouped cross-validation unless `config` is given), its
    temperature and the thread weights. Deterministic for a given seed."""
    started = time.perf_counter()
    encoder = encoder or MiniLMEncoder.load()
    texts = [e.text for e in examples]
    unknown = {e.label for e in examples} - set(QUERY_TYPES)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}")
    y = np.array([QUERY_TYPES.index(e.label) for e in examples])  # type: ignore[arg-type]
    features = featurize(encoder, texts)
    dim = encoder.dim
    groups = _groups(features[:, :dim])
    log(
        f"{len(texts)} examples, {len(set(groups))} near-duplicate groups, encoded in "
        f"{time.perf_counter() - started:.1f}s"
    )

    results: dict[ClassifierConfig, tuple[float, np.ndarray]] = {}
    for cand in [config] if config else candidates:
        logits = _oof_logits(cand, features, y, groups, dim, seed)
        f1 = macro_f1([e.label for e in examples], [QUERY_TYPES[i] for i in logits.argmax(1)])
        results[cand] = (f1, logits)
        log(f"  cv {cand.describe():24s} macro-F1 {f1:.4f}")
    # ties go to the simpler (earlier-listed, linear) candidate
    chosen = max(results, key=lambda c: (round(results[c][0], 3), -list(results).index(c)))
    cv_f1, oof = results[chosen]
    temperature = fit_temperature(oof, y)
    oof_conf = softmax(oof / temperature).max(1)
    ece = expected_calibration_error(oof_conf, oof.argmax(1) == y)
    log(f"chosen {chosen.describe()}: cv macro-F1 {cv_f1:.4f}, T {temperature:.3f}, cv ECE {ece:.4f}")

    model = _model(chosen, features, y, dim, seed)
    model = _replace(model, temperature=temperature)
    info: dict[str, object] = {
        "classifier": chosen.describe(),
        "examples": len(texts),
        "cv_macro_f1": round(cv_f1, 4),
        "cv_ece": round(ece, 4),
        "temperature": round(temperature, 4),
        "query_tokens": QUERY_TOKENS,
    }
    if threads:
        router = LocalRouter(encoder, model)
        inputs = _thread_inputs(router, threads)
        alone = macro_f1(
            [th.label for th in threads], [QUERY_TYPES[int(np.argmax(t.p_query))] for t in inputs]
        )
        thread_cv = _thread_cv(inputs, seed)
        params = fit_thread_weights(inputs)
        model = _replace(model, thread=params)
        info.update(
            threads=len(threads),
            thread_cv_macro_f1=round(thread_cv, 4),
            followup_alone_macro_f1=round(alone, 4),
            thread_params=[round(float(p), 4) for p in params],
        )
        log(
            f"threads: follow-up alone macro-F1 {alone:.4f}; mixed (cv) {thread_cv:.4f}; "
            f"params {params.round(3)}"
        )
    model = _replace(model, data_hash=examples_hash(examples, threads), info=info)
    log(f"trained in {time.perf_counter() - started:.1f}s")
    return model


def _replace(model: TrainedModel, **changes: object) -> TrainedModel:
    from dataclasses import replace

    return replace(model, **changes)  # type: ignore[arg-type]


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
