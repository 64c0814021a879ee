"""The offline router: classification, thread follow-ups, model choice, the trained artifact."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from core.errors import RoutingError
from core.routing.keyword import KeywordRouter
from core.routing.local import DEFAULT_ARTIFACT, LocalRouter, TrainedModel
from core.routing.selection import select_model
from core.routing.training import (
    ClassifierConfig,
    DenseConfig,
    examples_hash,
    load_examples,
    load_threads,
    train,
)
from core.types import QUERY_TYPES, Inventory, ModelInfo, ModelStats, Ratings, RouteRequest, Turn


def info(
    name: str,
    *,
    local: bool = True,
    scores: dict[str, float] | None = None,
    specs: tuple[str, ...] = ("general",),
    params: float | None = 7.0,
    stats: ModelStats | None = None,
    catalogued: bool = True,
    loaded: bool = False,
) -> ModelInfo:
    return ModelInfo(
        name=name,
        local=local,
        hosts=("http://127.0.0.1:11434",) if local else (),
        loaded_on=("http://127.0.0.1:11434",) if loaded else (),
        size_gb=None if params is None else round(params * 0.62, 1),
        parameters_b=params,
        context_length=8192,
        specializations=specs,
        scores=scores if scores is not None else {t: 50.0 for t in QUERY_TYPES},
        catalogued=catalogued,
        stats=stats or ModelStats(),
    )


def scores(**by_type: float) -> dict[str, float]:
    return {t: by_type.get(t, 50.0) for t in QUERY_TYPES}


INVENTORY = Inventory(
    models=(
        info("coder:7b", scores=scores(coding=88, math=60), specs=("coding", "debugging", "python")),
        info("mathy:7b", scores=scores(math=90, reasoning=70), specs=("math", "calculus", "algebra")),
        info("writer:9b", params=9.0, scores=scores(creative=75, general=70), specs=("creative", "writing")),
        info("thinker:8b", params=8.0, scores=scores(reasoning=82, math=80), specs=("reasoning", "logic")),
        info("chat:3b", params=3.0, scores=scores(general=66, creative=60), specs=("general", "chat")),
        info(
            "big:70b", local=False, params=70.0, scores=scores(coding=92, math=93, reasoning=92, general=90)
        ),
    ),
    hosts=("http://127.0.0.1:11434",),
)


@pytest.fixture(scope="module")
def router() -> LocalRouter:
    return LocalRouter.load()


# --- the artifact --------------------------------------------------------------------------------


def test_artifact_was_trained_on_the_current_examples() -> None:
    model = TrainedModel.load(DEFAULT_ARTIFACT)
    assert model.data_hash == examples_hash(load_examples(), load_threads()), (
        "core/data/router_examples changed since core/data/local_router.npz was trained: "
        "run `python -m core.routing.training`"
    )
    assert model.labels == QUERY_TYPES
    assert model.temperature > 0


def test_train_save_load_round_trip(tmp_path: Path) -> None:
    """A small training run: the model generalises to examples it did not see, and survives a save."""
    examples = load_examples()
    by_label = {t: [e for e in examples if e.label == t] for t in QUERY_TYPES}
    # the files run in batches of one style (short searches, multilingual, ...): sample across them
    train_set = [e for t in QUERY_TYPES for e in by_label[t][::10]]
    held_out = [e for t in QUERY_TYPES for e in by_label[t][5::20]]
    threads = load_threads()[::4]
    config = ClassifierConfig(DenseConfig(hidden=0, strength=0.01), lexical_c=30.0)
    model = train(train_set, threads, config=config, log=lambda _: None)
    path = tmp_path / "router.npz"
    model.save(path)
    loaded = TrainedModel.load(path)
    r = LocalRouter(LocalRouter.load().encoder, loaded)
    predicted = [r.classify(e.text).query_type for e in held_out]
    accuracy = np.mean([p == e.label for p, e in zip(predicted, held_out, strict=True)])
    assert accuracy >= 0.75
    assert loaded.data_hash == examples_hash(train_set, threads)
    np.testing.assert_allclose(loaded.thread, model.thread)


# --- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("My Flask route returns 500 and the log says KeyError: 'user_id'. How do I fix it?", "coding"),
        ("Write a SQL query listing customers who ordered nothing in 2023.", "coding"),
        (
            "A train leaves at 3pm going 80 km/h; a second leaves at 4pm at 100 km/h. When does it catch up?",
            "math",
        ),
        ("Find all real x with x^2 - 5x + 6 = 0.", "math"),
        ("Write a melancholic poem about a lighthouse that nobody visits anymore.", "creative"),
        ("Give me a short bedtime story about a dragon who is afraid of the dark.", "creative"),
        (
            "All poets are dreamers. Some dreamers are engineers. Does it follow that some poets are "
            "engineers?",
            "reasoning",
        ),
        ("What is the capital of Canada?", "general"),
        ("How do I get candle wax out of a wool carpet?", "general"),
    ],
)
def test_clear_questions_get_their_type(router: LocalRouter, query: str, expected: str) -> None:
    c = router.classify(query)
    assert c.query_type == expected, c.probs
    assert abs(sum(c.probs.values()) - 1.0) < 1e-3
    assert c.confidence == max(c.probs.values())


@pytest.mark.parametrize(
    ("history", "follow_up", "expected"),
    [
        (
            [
                ("user", "Write a Python function that computes the factorial of n."),
                (
                    "assistant",
                    "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i",
                ),
            ],
            "now make it recursive",
            "coding",
        ),
        (
            [
                ("user", "If 3 pens cost $4.50, how much do 7 pens cost?"),
                ("assistant", "One pen costs $1.50, so 7 pens cost $10.50."),
            ],
            "why?",
            "math",
        ),
        (
            [("user", "Write a haiku about the first snow."), ("assistant", "Soft white on the roofs / ...")],
            "another one please",
            "creative",
        ),
        (
            [
                ("user", "What's the tallest mountain in Africa?"),
                ("assistant", "Mount Kilimanjaro, at 5,895 m."),
            ],
            "and in Europe?",
            "general",
        ),
    ],
)
def test_follow_ups_take_the_thread_into_account(
    router: LocalRouter, history: list[tuple[str, str]], follow_up: str, expected: str
) -> None:
    turns = [Turn(role=role, content=text) for role, text in history]  # type: ignore[arg-type]
    assert router.classify(follow_up, turns).query_type == expected


def test_a_bare_follow_up_is_less_certain_than_a_full_question(router: LocalRouter) -> None:
    assert router.classify("why?").confidence < router.classify("Solve 2x + 7 = 19 for x.").confidence


def test_complexity_and_specialisations(router: LocalRouter) -> None:
    quick = router.classify("What is the capital of Peru?")
    assert quick.complexity == "simple"
    bug = router.classify("Why does my Python script raise a TypeError when I add a string and an int?")
    assert {"python", "debugging"} <= set(bug.specializations)
    design = router.classify(
        "Design a scalable, distributed rate limiter for our API gateway. Compare token bucket and sliding "
        "window designs, discuss the trade-offs under high concurrency, and sketch a production-ready "
        "implementation in Go with Redis, including failure handling when Redis is unreachable.\n"
        "```go\nfunc Allow(key string) bool {\n    // ...\n}\n```"
    )
    assert design.complexity == "complex"
    poem = router.classify("Write a sonnet about the sea")
    assert "poetry" in poem.specializations


# --- decisions ---------------------------------------------------------------------------------


async def test_decide_returns_a_contract_decision(router: LocalRouter) -> None:
    req = RouteRequest(query="My pandas merge drops rows and I get a KeyError, what's wrong?")
    d = await router.decide(req, INVENTORY)
    assert d.source == "local" and d.cost_usd == 0.0 and d.fallback_reason is None
    assert d.query_type == "coding"
    assert d.recommended_model == "coder:7b"
    assert d.recommended_model in INVENTORY.names()
    assert 2 <= len(d.alternatives) <= 3 and d.recommended_model not in d.alternatives
    assert set(d.alternatives) <= set(INVENTORY.names())
    assert d.download_if_needed is False
    assert d.decision_ms > 0
    assert "coder:7b" in d.reasoning


async def test_decide_is_deterministic(router: LocalRouter) -> None:
    req = RouteRequest(
        query="and what if it were 12?",
        history=(Turn(role="user", content="What's 15% of 80?"), Turn(role="assistant", content="12")),
    )
    first = (await router.decide(req, INVENTORY)).model_dump(exclude={"decision_ms"})
    for _ in range(3):
        assert (await router.decide(req, INVENTORY)).model_dump(exclude={"decision_ms"}) == first


async def test_decide_needs_no_network(router: LocalRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    d = await router.decide(RouteRequest(query="Write a limerick about a forgetful robot"), INVENTORY)
    assert d.query_type == "creative" and d.recommended_model == "writer:9b"


async def test_empty_inventory_raises(router: LocalRouter) -> None:
    with pytest.raises(RoutingError):
        await router.decide(RouteRequest(query="hello"), Inventory(models=(), hosts=()))


async def test_keyword_baseline_has_the_same_shape() -> None:
    kw = KeywordRouter()
    assert kw.classify("Write a poem about rain").query_type == "creative"
    assert kw.classify("Who painted the Mona Lisa?").query_type == "general"
    d = await kw.decide(RouteRequest(query="debug this python function"), INVENTORY)
    assert d.query_type == "coding" and d.recommended_model in INVENTORY.names()


# --- model choice ------------------------------------------------------------------------------


def test_specialist_wins_its_task() -> None:
    assert select_model("coding", "moderate", INVENTORY).model == "coder:7b"
    assert select_model("math", "moderate", INVENTORY, specializations=["calculus"]).model == "mathy:7b"
    assert select_model("reasoning", "moderate", INVENTORY).model == "thinker:8b"


def test_download_only_when_much_better_and_warranted() -> None:
    local = info("local:8b", params=8.0, scores=scores(math=75))
    remote = info("remote:14b", local=False, params=14.0, scores=scores(math=78))
    far_better = info("remote:32b", local=False, params=32.0, scores=scores(math=95))
    slightly = Inventory(models=(local, remote), hosts=())
    much = Inventory(models=(local, far_better), hosts=())
    assert select_model("math", "complex", slightly).model == "local:8b"
    complex_pick = select_model("math", "complex", much)
    assert complex_pick.model == "remote:32b" and complex_pick.download_needed
    assert select_model("math", "simple", much).model == "local:8b"


def test_no_local_model_means_a_download() -> None:
    inv = Inventory(models=(info("a:7b", local=False), info("b:3b", local=False, params=3.0)), hosts=())
    sel = select_model("general", "simple", inv)
    assert sel.download_needed and sel.model in {"a:7b", "b:3b"}


def test_size_follows_complexity() -> None:
    small = info("small:1.5b", params=1.5)
    large = info("large:14b", params=14.0)
    inv = Inventory(models=(small, large), hosts=())
    assert select_model("general", "simple", inv).model == "small:1.5b"
    assert select_model("general", "complex", inv).model == "large:14b"


def test_a_few_votes_do_not_outweigh_the_catalog_but_many_do() -> None:
    few = ModelStats(satisfaction=0.0, feedback_count=3, by_type={"coding": Ratings(0, 3, 3, 0)})
    many = ModelStats(satisfaction=0.1, feedback_count=40, by_type={"coding": Ratings(4, 40, 40, 4)})
    rival = info("rival:7b", scores=scores(coding=76), specs=("coding",))

    def pick(stats: ModelStats) -> str:
        good = info("good:7b", scores=scores(coding=85), specs=("coding",), stats=stats)
        return select_model("coding", "moderate", Inventory(models=(good, rival), hosts=())).model

    assert pick(ModelStats()) == "good:7b"
    assert pick(few) == "good:7b"
    assert pick(many) == "rival:7b"


def test_uncatalogued_local_model_is_choosable() -> None:
    mine = info("my-finetune:latest", catalogued=False, params=None, specs=("general",))
    remote = info("catalogued:7b", local=False, scores=scores(general=70))
    sel = select_model("general", "simple", Inventory(models=(mine, remote), hosts=()))
    assert sel.model == "my-finetune:latest" and not sel.download_needed
    assert sel.alternatives == ["catalogued:7b"]


def test_alternatives_and_exclusions() -> None:
    sel = select_model("coding", "moderate", INVENTORY)
    assert len(sel.alternatives) == 3 and len(set(sel.alternatives)) == 3
    assert sel.model not in sel.alternatives
    again = select_model("coding", "moderate", INVENTORY, exclude=[sel.model])
    assert again.model == sel.alternatives[0] and sel.model not in again.alternatives
    with pytest.raises(RoutingError):
        select_model("coding", "moderate", INVENTORY, exclude=INVENTORY.names())
