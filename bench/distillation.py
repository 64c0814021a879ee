"""Distillation: local router accuracy on the dev rows before and after learning 500 meta-router labels.

    python bench/distillation.py [--noise 0.1] [--questions bench/data/distill_questions.jsonl]
                                 [--dev /work/shared/data/routing_dev.jsonl] [--seed 0]

1. The questions of bench/data/distill_questions.jsonl (written for this benchmark, each with the
   label its author intended; none comes from the dev rows) are routed by the real chain: MetaRouter
   over the openai client, against a real endpoint when OPENAI_API_KEY is set, else against the
   loopback OpenAI double of tests/doubles/openai.py answering the intended label, flipped to another
   type for a `--noise` share of the questions (an imperfect meta-router). Each decision is stored as
   a request in a temporary SQLite database, as the bot stores them.
2. `train_router` (what `metarouter train-router` runs) retrains, validates on held-back examples and
   installs the new version when it is not worse.
3. The shipped model and the installed version are scored on the dev rows (evaluation only: nothing
   trains or tunes on them).

Prints a Markdown table, the held-back validation of train-router, and the training wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pydantic import SecretStr  # noqa: E402

from core.config import Settings  # noqa: E402
from core.routing.distill import Scores, scores, sync_router, train_router  # noqa: E402
from core.routing.local import LocalRouter  # noqa: E402
from core.routing.training import FeatureCache  # noqa: E402
from core.types import QUERY_TYPES, RouteRequest  # noqa: E402

QUESTIONS = ROOT / "bench" / "data" / "distill_questions.jsonl"
DEV = Path("/work/shared/data/routing_dev.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def label_and_store(settings: Settings, questions: list[dict], noise: float, seed: int) -> dict:
    """Route every question through the app's chain (meta-router first) and store the decisions."""
    from bot.app import build_app

    double = None
    simulated = settings.openai_api_key is None
    pending: list[str] = []  # the label the double gives the question being routed (one at a time)
    if simulated:
        from tests.doubles.openai import OpenAIDouble, Reply

        rng = random.Random(seed)
        flips = {i for i in range(len(questions)) if rng.random() < noise}
        meant = [
            rng.choice([t for t in QUERY_TYPES if t != q["label"]]) if i in flips else q["label"]
            for i, q in enumerate(questions)
        ]

        def responder(req) -> Reply:
            return Reply.decision(query_type=pending[-1], confidence=0.9)

        double = await OpenAIDouble(responder=responder).start()
        settings = settings.model_copy(
            update={"openai_api_key": SecretStr("sk-simulated-000000"), "openai_base_url": double.base_url}
        )
    app = await build_app(settings, use_cache=False)
    assert app.store is not None
    labels: list[str] = []
    sources: Counter[str] = Counter()
    try:
        for i, q in enumerate(questions):
            if simulated:
                pending.append(meant[i])
            decision = await app.service.route(RouteRequest(query=q["text"]))
            await app.store.record_request(
                platform="bench", channel_id="bench", user_id=None, query=q["text"], decision=decision
            )
            sources[decision.source if decision.fallback_reason is None else decision.fallback_reason] += 1
            labels.append(decision.query_type)
    finally:
        await app.close()
        if double is not None:
            await double.stop()
    intended = [q["label"] for q in questions]
    agree = sum(a == b for a, b in zip(labels, intended, strict=True)) / len(questions)
    return {"simulated": simulated, "sources": dict(sources), "agreement": agree}


def _pair(s: Scores) -> str:
    return f"{s.accuracy:.4f} | {s.macro_f1:.4f}"


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=Path, default=QUESTIONS)
    p.add_argument("--dev", type=Path, default=DEV)
    p.add_argument("--noise", type=float, default=0.1, help="share of simulated labels flipped (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=256, help="train_router_hidden (0: logistic regression)")
    p.add_argument("--cache", type=Path, help="directory of a feature cache to reuse (default: a fresh one)")
    args = p.parse_args()

    questions = read_jsonl(args.questions)
    dev = read_jsonl(args.dev)
    work = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    if args.cache:  # embeddings of earlier runs: the wall time then is the training's alone
        for f in args.cache.glob("*.npz"):
            shutil.copy(f, work / f.name)
    key = os.environ.get("OPENAI_API_KEY")
    settings = Settings(
        data_dir=work,
        database_url=f"sqlite+aiosqlite:///{work / 'bench.db'}",
        openai_api_key=key,
        openai_base_url=os.environ.get("OPENAI_BASE_URL"),
        ollama_host="http://127.0.0.1:9",  # no Ollama: the catalog is the inventory
        use_local_for_simple_queries=False,  # every question goes to the meta-router
        cache_decisions=False,
        max_requests_per_hour=100_000,
        monthly_budget_usd=1_000.0,
        decision_timeout_s=30.0,
        train_router_hidden=args.hidden,
    )

    started = time.perf_counter()
    labelled = await label_and_store(settings, questions, args.noise, args.seed)
    label_s = time.perf_counter() - started

    from core.store import Store, create_engine

    store = Store(create_engine(settings.db_url))
    router = LocalRouter.load()
    try:
        started = time.perf_counter()
        report = await train_router(
            settings, store, encoder=router.encoder, log_line=lambda s: print("  " + s)
        )
        train_wall = time.perf_counter() - started
        shipped = router.model
        await sync_router(store, router)
        installed = router.model if router.version else None
    finally:
        await store.close()

    texts = [r["query"] for r in dev]
    truth = [r["label"] for r in dev]
    cache = FeatureCache(work / "dev_features.npz")
    features = cache.featurize(router.encoder, texts)
    rows = [(f"shipped model ({shipped.info.get('examples')} examples, all shipped)", shipped)]
    for name, what in (("current", "shipped examples"), ("candidate", "shipped examples + decisions")):
        if name in report.models:
            model = report.models[name]
            rows.append((f"{name}: train split of the {what} ({model.info.get('examples')})", model))
    if installed is not None:
        rows.append((f"installed version {router.version}: refit on all ({report.examples})", installed))
    cache.save()

    who = (
        f"simulated: the loopback double answered the intended label, {args.noise:.0%} flipped at random"
        if labelled["simulated"]
        else "a real meta-router (OPENAI_API_KEY)"
    )
    print(f"\n## Distillation: {len(questions)} meta-router-labelled decisions added\n")
    print(f"Labels: {who}; they agree with the authors' intended labels on {labelled['agreement']:.1%}.")
    print(f"Decisions by source: {labelled['sources']}; labelling took {label_s:.0f} s.\n")
    print(f"| local router on {args.dev.name} ({len(dev)} rows) | accuracy | macro-F1 |")
    print("| --- | --- | --- |")
    for name, model in rows:
        print(f"| {name} | {_pair(scores(model, features, texts, truth))} |")
    if installed is None:
        print(f"| nothing installed: {report.reason} | – | – |")
    print("\ntrain-router's own validation (held-back fifth; both models retrained on the rest):\n")
    print("| held back | rows | current acc | current F1 | candidate acc | candidate F1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for part in ("all", "shipped", "decisions"):
        c, n = report.current.get(part), report.candidate.get(part)
        if c and n:
            print(f"| {part} | {c.n} | {_pair(c)} | {_pair(n)} |")
    trainings = "current, candidate, refit" if report.installed else "current, candidate"
    embeddings = "embeddings from --cache" if args.cache else "embeddings computed fresh"
    print(
        f"\n{report.reason}; installed: {report.installed}. train-router wall time {train_wall:.0f} s "
        f"({trainings}; {embeddings}; {os.cpu_count()} cores shared with other work)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
