"""`metarouter train-router` as an operator runs it: a real process on a fresh database, exit codes,
the listing, a dry run, an installation and rollbacks."""

from __future__ import annotations

import os

import pytest

from core.store import Store, create_engine, upgrade_database
from core.types import QUERY_TYPES, Decision
from tests.bot.test_cli import run
from tests.core.test_distill import STEP, _write_examples, load_examples


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The slice of examples, and one data directory: the feature cache there saves the second
    database's run from embedding the same texts again."""
    tmp_path = tmp_path_factory.mktemp("train-router")
    examples = load_examples()
    small = [e for t in QUERY_TYPES for e in [x for x in examples if x.label == t][:: STEP * 2]]
    directory = _write_examples(tmp_path / "examples", small)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METAROUTER_", "OPENAI_", "SLACK_", "DISCORD_"))
    }
    base.pop("DATABASE_URL", None)
    return base | {
        "METAROUTER_DATA_DIR": str(tmp_path / "data"),
        "METAROUTER_TRAIN_ROUTER_EXAMPLES": str(directory),
        "METAROUTER_TRAIN_ROUTER_HIDDEN": "0",
        "OLLAMA_HOST": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
    }


async def _store_decisions(db_url: str) -> None:
    """The meta-router's labels for shipped examples the small slice left out."""
    examples = load_examples()
    await upgrade_database(db_url)
    store = Store(create_engine(db_url))
    try:
        for t in QUERY_TYPES:
            for e in [x for x in examples if x.label == t][STEP :: STEP * 2]:
                decision = Decision(
                    recommended_model="llama3.2:3b",
                    confidence=0.9,
                    reasoning="test",
                    query_type=e.label,
                    complexity="simple",
                    source="openai",
                )
                await store.record_request(
                    platform="slack", channel_id="C1", user_id="U1", query=e.text, decision=decision
                )
    finally:
        await store.close()


async def test_train_list_and_roll_back(env: dict[str, str], db_url: str) -> None:
    env = env | {"DATABASE_URL": db_url}
    code, out, err = await run(env, "train-router", "--list")
    assert code == 0, err
    assert "shipped" in out and "active" in out  # a fresh database: only the shipped model, active

    code, out, err = await run(env, "train-router")
    assert code == 0, err
    assert "nothing trained: no new labelled decisions" in out

    await _store_decisions(db_url)
    code, out, err = await run(env, "train-router", "--dry-run", wait_s=600)
    assert code == 0, err
    assert "dry run" in out and "nothing changed" in out
    code, out, _ = await run(env, "train-router", "--list")
    assert "rejected" not in out and "installed" not in out.split("shipped")[0]

    code, out, err = await run(env, "train-router", wait_s=600)
    assert code == 0, err
    assert "installed as version 1" in out, out
    code, out, _ = await run(env, "train-router", "--list")
    listed = [line.split() for line in out.splitlines()[1:]]
    assert listed[0][:2] == ["*", "1"] and listed[0][-1] == "active"
    assert listed[-1][:2] == ["0", "shipped"] and listed[-1][-1] == "installed"

    code, out, err = await run(env, "train-router", "--rollback")
    assert code == 0, err
    assert "version 0 is active (was 1)" in out
    code, out, err = await run(env, "train-router", "--rollback")
    assert code == 1 and "nothing to roll back" in err
    code, out, err = await run(env, "train-router", "--rollback", "7")
    assert code == 2 and "no installed version 7" in err
    code, out, err = await run(env, "train-router", "--rollback", "-1")
    assert code == 2 and "versions are 0" in err
    code, out, err = await run(env, "train-router", "--rollback", "1")
    assert code == 0 and "version 1 is active (was 0)" in out
