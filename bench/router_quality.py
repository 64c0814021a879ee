"""Router quality on the public dev rows: the local router, the keyword baseline, semantic-router 1.x.

    python bench/router_quality.py [--dev-dir /work/shared/data] [--peer-python PATH]

Prints Markdown tables: accuracy and macro-F1 on single queries and on thread follow-ups (ambiguous and
specific follow-ups apart), the local router's expected calibration error, and confusion matrices.
The dev rows are for evaluation only: nothing here trains or tunes on them.

The peer, semantic-router, is an IndexedRouter over a LocalIndex whose routes hold our own training
examples as utterances, embedded by our MiniLM encoder. Its releases pin openai<3 while this project
uses openai 3.x, so it lives in its own virtualenv (see bench/README.md); this script runs itself there
as a worker (`--peer-worker`) and exchanges JSON over stdin/stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = ("coding", "math", "creative", "reasoning", "general")
DEFAULT_PEER_PYTHON = "/work/venv-semantic-router/bin/python"


# --------------------------------------------------------------------------------------------------
# semantic-router worker: runs inside the peer virtualenv, imports only our numpy encoder.


def peer_worker() -> None:
    import asyncio

    import numpy as np
    import semantic_router
    from semantic_router import Route
    from semantic_router.encoders.base import DenseEncoder
    from semantic_router.index.local import LocalIndex
    from semantic_router.routers import IndexedRouter

    from core.routing.embedding import MiniLMEncoder

    job = json.load(sys.stdin)
    minilm = MiniLMEncoder.load(Path(job["model_dir"]))  # the model package lives in our venv only

    class OurMiniLM(DenseEncoder):
        """semantic-router's encoder seam around our numpy all-MiniLM-L6-v2."""

        name: str = "all-MiniLM-L6-v2 (numpy)"
        type: str = "local"

        def __call__(self, docs: list) -> list[list[float]]:
            return minilm.encode([str(d) for d in docs]).tolist()

        async def acall(self, docs: list) -> list[list[float]]:
            return self(docs)

    routes = [Route(name=label, utterances=texts) for label, texts in job["utterances"].items()]
    started = time.perf_counter()
    router = IndexedRouter(encoder=OurMiniLM(), routes=routes, index=LocalIndex(), top_k=job["top_k"])
    built = time.perf_counter() - started

    async def predict(queries: list[str]) -> list[str]:
        out = []
        for q in queries:
            choice = await router.acall(q)
            out.append(choice.name or "general")  # no route at all: the router's "no match"
        return out

    started = time.perf_counter()
    predictions = {name: asyncio.run(predict(qs)) for name, qs in job["queries"].items()}
    json.dump(
        {
            "version": semantic_router.__version__,
            "predictions": predictions,
            "index_s": built,
            "per_query_ms": (time.perf_counter() - started)
            * 1000
            / max(sum(map(len, job["queries"].values())), 1),
            "dims": int(np.asarray(router.encoder(["x"])).shape[1]),
        },
        sys.stdout,
    )


def run_peer(
    python: str, utterances: dict[str, list[str]], queries: dict[str, list[str]], top_k: int
) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    from core.routing.embedding import default_model_dir

    job = json.dumps(
        {"utterances": utterances, "queries": queries, "top_k": top_k, "model_dir": str(default_model_dir())}
    )
    proc = subprocess.run(
        [python, __file__, "--peer-worker"], input=job, capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "peer failed")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------------------------------
# Metrics and tables


def confusion(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, dict[str, int]]:
    m = {t: dict.fromkeys(LABELS, 0) for t in LABELS}
    for t, p in zip(y_true, y_pred, strict=True):
        m[t][p] += 1
    return m


def scores(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[float, float]:
    from core.routing.training import macro_f1

    accuracy = sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / max(len(y_true), 1)
    return accuracy, macro_f1(y_true, y_pred, LABELS)


def confusion_table(title: str, y_true: Sequence[str], y_pred: Sequence[str]) -> str:
    m = confusion(y_true, y_pred)
    lines = [f"**{title}** (rows: true label, columns: predicted)", ""]
    lines.append("| true \\ predicted | " + " | ".join(LABELS) + " | recall |")
    lines.append("| --- |" + " ---: |" * (len(LABELS) + 1))
    for t in LABELS:
        total = sum(m[t].values())
        recall = m[t][t] / total if total else 0.0
        lines.append(f"| {t} | " + " | ".join(str(m[t][p]) for p in LABELS) + f" | {recall:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dev-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument(
        "--peer-python", default=os.environ.get("SEMANTIC_ROUTER_PYTHON", DEFAULT_PEER_PYTHON)
    )
    parser.add_argument("--peer-top-k", type=int, default=5, help="semantic-router's top_k (its default)")
    parser.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        peer_worker()
        return 0

    import numpy as np

    from core.routing.keyword import KeywordRouter
    from core.routing.local import LocalRouter
    from core.routing.training import expected_calibration_error, load_examples
    from core.types import Turn

    singles = [
        json.loads(line) for line in (args.dev_dir / "routing_dev.jsonl").read_text().splitlines() if line
    ]
    threads = [
        json.loads(line)
        for line in (args.dev_dir / "routing_dev_threads.jsonl").read_text().splitlines()
        if line
    ]
    y_single = [r["label"] for r in singles]
    y_thread = [r["label"] for r in threads]
    ambiguous = [bool(r.get("followup_ambiguous")) for r in threads]

    local = LocalRouter.load()
    keyword = KeywordRouter()
    preds: dict[str, dict[str, list[str]]] = {}
    notes: list[str] = []

    started = time.perf_counter()
    local_single = [local.classify(r["query"]) for r in singles]
    local_thread = [
        local.classify(r["query"], [Turn(role=t["role"], content=t["content"]) for t in r["history"]])
        for r in threads
    ]
    local_alone = [local.classify(r["query"]) for r in threads]
    local_s = time.perf_counter() - started
    preds["local router"] = {
        "single": [c.query_type for c in local_single],
        "thread": [c.query_type for c in local_thread],
    }
    preds["local router, follow-up alone"] = {"single": [], "thread": [c.query_type for c in local_alone]}
    preds["keyword baseline"] = {
        "single": [keyword.classify(r["query"]).query_type for r in singles],
        "thread": [keyword.classify(r["query"]).query_type for r in threads],
    }

    peer_name = "semantic-router"
    if Path(args.peer_python).exists():
        by_label: dict[str, list[str]] = {label: [] for label in LABELS}
        for e in load_examples():
            by_label[e.label].append(e.text)
        try:
            peer = run_peer(
                args.peer_python,
                by_label,
                {"single": [r["query"] for r in singles], "thread": [r["query"] for r in threads]},
                args.peer_top_k,
            )
            peer_name = (
                f"semantic-router {peer['version']} (IndexedRouter + LocalIndex, top_k={args.peer_top_k})"
            )
            preds[peer_name] = peer["predictions"]
            notes.append(
                f"{peer_name}: {sum(map(len, by_label.values()))} utterances (our training examples) "
                f"embedded by our MiniLM encoder ({peer['dims']} dims), index built in "
                f"{peer['index_s']:.1f} s, "
                f"{peer['per_query_ms']:.1f} ms per query; threads: the follow-up alone (it has no notion of "
                "a conversation)."
            )
        except (RuntimeError, OSError, ValueError) as exc:
            notes.append(f"semantic-router peer not run: {exc}")
    else:
        notes.append(
            f"semantic-router peer not run: no interpreter at {args.peer_python} (see bench/README.md)"
        )

    print(f"## Router quality on the dev set ({len(singles)} single queries, {len(threads)} threads)\n")
    print(
        "| router | single: accuracy | single: macro-F1 | threads: accuracy | threads: macro-F1 "
        "| ambiguous follow-ups: acc. | specific follow-ups: acc. |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, p in preds.items():
        cells = ["–", "–"]
        if p["single"]:
            acc, f1 = scores(y_single, p["single"])
            cells = [f"{acc:.3f}", f"{f1:.3f}"]
        acc_t, f1_t = scores(y_thread, p["thread"])
        amb = [t == q for t, q, a in zip(y_thread, p["thread"], ambiguous, strict=True) if a]
        spec = [t == q for t, q, a in zip(y_thread, p["thread"], ambiguous, strict=True) if not a]
        print(
            f"| {name} | {cells[0]} | {cells[1]} | {acc_t:.3f} | {f1_t:.3f} | "
            f"{np.mean(amb):.3f} ({len(amb)}) | {np.mean(spec):.3f} ({len(spec)}) |"
        )

    print("\n### Calibration of the local router's confidence\n")
    print(
        "| set | ECE (10 bins) | mean confidence | accuracy | share with confidence ≥ 0.9 | accuracy there |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, classified, truth in (("single", local_single, y_single), ("threads", local_thread, y_thread)):
        conf = np.array([c.confidence for c in classified])
        correct = np.array([c.query_type == t for c, t in zip(classified, truth, strict=True)])
        sure = conf >= 0.9  # the chain's default local_confidence_threshold
        sure_acc = f"{correct[sure].mean():.3f}" if sure.any() else "–"
        print(
            f"| {name} | {expected_calibration_error(conf, correct):.3f} | {conf.mean():.3f} | "
            f"{correct.mean():.3f} | {sure.mean():.3f} | {sure_acc} |"
        )
    print(
        f"\n(temperature {local.model.temperature:.3f}; {local.model.info.get('classifier')}; "
        f"local router: {1000 * local_s / (len(singles) + 2 * len(threads)):.1f} ms per classification here)"
    )

    print("\n### Confusion matrices (single queries)\n")
    for name, p in preds.items():
        if p["single"]:
            print(confusion_table(name, y_single, p["single"]) + "\n")
    print("### Confusion matrix (threads, local router)\n")
    print(confusion_table("local router, threads", y_thread, preds["local router"]["thread"]) + "\n")
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
