"""The distilled local router: retraining on stored meta-router decisions, versions, rollback, the job.

Training runs the real code path on a small slice of the shipped examples with the logistic-regression
dense layer (train_router_hidden=0), so a run takes seconds; the shipped examples left out of the
slice play the meta-router's stored decisions (correct, or deliberately wrong for poisoning).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.routing.distill import held_back, nightly, select_decisions, sync_router, train_router
from core.routing.local import LocalRouter, TrainedModel
from core.routing.training import Example, load_examples, load_threads
from core.scheduling import build_jobs
from core.store import Store, create_engine, upgrade_database
from core.types import QUERY_TYPES, Decision

STEP = 16  # the slice: one shipped example in STEP trains; another one in STEP is a stored decision


def _write_examples(directory: Path, examples: list[Example]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for label in QUERY_TYPES:
        rows = [json.dumps({"text": e.text}) for e in examples if e.label == label]
        (directory / f"{label}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    threads = load_threads()[::8]
    (directory / "threads.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "history": [{"role": t.role, "content": t.content} for t in th.history],
                    "query": th.query,
                    "label": th.label,
                }
            )
            for th in threads
        )
        + "\n",
        encoding="utf-8",
    )
    return directory


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Example], Path]:
    """(examples directory, examples to store as decisions, a feature cache directory shared by the
    module's tests: embedding is the slow part and the texts are the same)."""
    by_label = {t: [e for e in load_examples() if e.label == t] for t in QUERY_TYPES}
    shipped = [e for t in QUERY_TYPES for e in by_label[t][::STEP]]
    stored = [e for t in QUERY_TYPES for e in by_label[t][STEP // 2 :: STEP]]
    root = tmp_path_factory.mktemp("distill")
    return _write_examples(root / "examples", shipped), stored, root / "cache"


def _settings(make_settings, db_url: str, slices, **overrides: object):
    directory, _, cache = slices
    values: dict[str, object] = {
        "database_url": db_url,
        "data_dir": cache,
        "train_router_examples": directory,
        "train_router_hidden": 0,
        "train_router_min_new": 1,
    }
    return make_settings(**(values | overrides))


async def _store(db_url: str) -> Store:
    await upgrade_database(db_url)
    return Store(create_engine(db_url))


def _decision(query_type: str, source: str = "openai", fallback: str | None = None) -> Decision:
    return Decision(
        recommended_model="llama3.2:3b",
        confidence=0.9,
        reasoning="test",
        query_type=query_type,  # type: ignore[arg-type]
        complexity="simple",
        source=source,  # type: ignore[arg-type]
        fallback_reason=fallback,  # type: ignore[arg-type]
    )


async def _record(store: Store, examples: list[Example], *, wrong: bool = False) -> list[int]:
    ids = []
    for e in examples:
        label = QUERY_TYPES[(QUERY_TYPES.index(e.label) + 2) % 5] if wrong else e.label
        ids.append(
            await store.record_request(
                platform="slack", channel_id="C1", user_id="U1", query=e.text, decision=_decision(label)
            )
        )
    return ids


async def test_decisions_improve_the_router_and_are_installed_then_rolled_back(
    db_url: str, make_settings, slices
) -> None:
    settings = _settings(make_settings, db_url, slices)
    store = await _store(db_url)
    _, stored, _ = slices
    try:
        await _record(store, stored)
        report = await train_router(settings, store, log_line=lambda _: None)
        assert report.installed, report.reason
        assert report.candidate["all"].macro_f1 >= report.current["all"].macro_f1
        assert report.decisions == len(stored)
        versions = await store.router_versions()
        assert [(v.id, v.active, v.installed) for v in versions] == [(report.version, True, True)]

        # nothing new since: nothing to train
        again = await train_router(settings, store, log_line=lambda _: None)
        assert again.version is None and "no new" in again.reason

        # a running bot switches to the new version, then back to the shipped one on rollback
        router = LocalRouter.load()
        shipped = router.model
        probe = [e.text for e in stored[::7]]
        before = [router.classify(t).probs for t in probe]
        assert await sync_router(store, router) == report.version
        after = [router.classify(t).probs for t in probe]
        assert after != before
        assert await store.activate_router_version(0)
        assert await sync_router(store, router) == 0
        assert router.model is shipped
        assert [router.classify(t).probs for t in probe] == before
    finally:
        await store.close()


async def test_a_poisoned_batch_scores_worse_and_is_not_installed(db_url: str, make_settings, slices) -> None:
    settings = _settings(make_settings, db_url, slices)
    store = await _store(db_url)
    _, stored, _ = slices
    try:
        await _record(store, stored, wrong=True)
        report = await train_router(settings, store, log_line=lambda _: None)
        assert not report.installed
        assert report.candidate["shipped"].macro_f1 < report.current["shipped"].macro_f1
        versions = await store.router_versions()
        assert [(v.active, v.installed) for v in versions] == [(False, False)]  # recorded, not installed
        assert await store.active_router_version() == 0
        assert versions[0].metrics["candidate"]["shipped"]["macro_f1"] == report.candidate["shipped"].macro_f1
    finally:
        await store.close()


async def test_only_followed_meta_router_decisions_with_text_and_no_bad_rating_count(db_url: str) -> None:
    store = await _store(db_url)
    try:
        (followed,) = await _record(store, [Example("How do I reverse a list in Python?", "coding")])
        await store.record_request(
            platform="slack",
            channel_id="C1",
            user_id="U1",
            query="What rhymes with orange?",
            decision=_decision("creative", source="local", fallback="low_confidence"),
        )
        (panned,) = await _record(store, [Example("Name three moons of Jupiter.", "general")])
        answer = await store.start_answer(panned, "llama3.2:3b", "h")
        await store.set_feedback(answer, "U2", -1, "-1")
        hidden = Store(store.engine, store_question_text=False)
        await _record(hidden, [Example("A private question about a poem", "creative")])
        (relabelled,) = await _record(store, [Example("how do i reverse a list in python?", "general")])

        stored = await store.meta_labelled_decisions()
        assert [(d.request_id, d.rating) for d in stored] == [(followed, 0), (panned, -1), (relabelled, 0)]
        kept, dropped = select_decisions(stored, shipped_texts=set())
        # the panned answer's label is doubtful; the same question asked again keeps its latest label
        assert [(d.text, d.query_type) for d in kept] == [("how do i reverse a list in python?", "general")]
        assert dropped == 2
        assert await store.count_meta_labelled(after_id=followed) == 2
    finally:
        await store.close()


async def test_versions_are_pruned_but_the_active_one_is_kept(db_url: str) -> None:
    store = await _store(db_url)
    try:
        first = await store.add_router_version(
            artifact=b"a", metrics={}, examples=1, decisions=1, last_request_id=1, keep=2
        )
        for i in range(3):  # rejected runs
            await store.add_router_version(
                artifact=None, metrics={}, examples=1, decisions=1, last_request_id=2 + i, keep=2
            )
        versions = await store.router_versions()
        assert [v.id for v in versions][-1] == first and versions[-1].active
        assert len(versions) == 3
        assert not await store.activate_router_version(versions[0].id)  # no artifact: cannot be active
        assert not await store.activate_router_version(999)
    finally:
        await store.close()


def test_the_held_back_split_is_a_stable_fifth() -> None:
    texts = [e.text for e in load_examples()]
    share = np.mean([held_back(t) for t in texts])
    assert 0.15 < share < 0.25
    assert [held_back(t) for t in texts[:50]] == [held_back(t) for t in texts[:50]]


async def test_the_nightly_job_is_registered_and_skips_without_enough_new_decisions(
    db_url: str, make_settings, slices
) -> None:
    settings = _settings(make_settings, db_url, slices, train_router_min_new=5)
    store = await _store(db_url)
    try:
        jobs = build_jobs(settings, store=store, inventory=None, generator=None, sinks={})  # type: ignore[arg-type]
        job = next(j for j in jobs if j.id == "train_router")
        assert job.cron == "30 3 * * *" and job.setting == "train_router_cron"
        off = _settings(make_settings, db_url, slices, train_router_cron="")
        jobs_off = build_jobs(off, store=store, inventory=None, generator=None, sinks={})  # type: ignore[arg-type]
        assert "train_router" not in {j.id for j in jobs_off}
        _, stored, _ = slices
        await _record(store, stored[:4])
        assert await nightly(settings, store, None) is None  # 4 < 5: skipped, nothing recorded
        assert await store.router_versions() == []
    finally:
        await store.close()


def test_a_model_survives_bytes() -> None:
    model = LocalRouter.load().model
    again = TrainedModel.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(again.lex_weights, model.lex_weights)
    assert again.info == model.info


async def test_a_running_router_picks_up_a_version_another_replica_activates(db_url: str) -> None:
    import asyncio

    from core.routing.distill import watch_router

    here, there = await _store(db_url), await _store(db_url)
    router = LocalRouter.load()
    shipped = router.model
    watcher = asyncio.create_task(watch_router(here, router, 0.05))
    try:
        other = replace(shipped, temperature=shipped.temperature * 3)  # flatter probabilities
        version = await there.add_router_version(
            artifact=other.to_bytes(), metrics={}, examples=1, decisions=1, last_request_id=0, keep=5
        )
        for _ in range(100):
            if router.version == version:
                break
            await asyncio.sleep(0.05)
        assert router.version == version
        question = "Write a haiku about autumn rain."
        assert (
            router.classify(question).confidence
            < LocalRouter(router.encoder, shipped).classify(question).confidence
        )
        assert await there.activate_router_version(0)
        for _ in range(100):
            if router.version == 0:
                break
            await asyncio.sleep(0.05)
        assert router.model is shipped
    finally:
        watcher.cancel()
        await here.close()
        await there.close()
