"""The write buffer's bounds and its spool, against a database that refuses every connection."""

from __future__ import annotations

from pathlib import Path

from core.store import BufferedStore, create_engine
from tests.helpers_usage import decision

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:9/nothing"  # port 9: connection refused


def spools(directory: Path) -> list[tuple[int, str]]:
    """(permission bits, text) of each spool file."""
    return [(p.stat().st_mode & 0o777, p.read_text()) for p in sorted(directory.glob("outbox-*.jsonl"))]


async def test_a_long_outage_keeps_at_most_max_ops_writes_and_counts_the_rest(tmp_path: Path) -> None:
    store = BufferedStore(create_engine(UNREACHABLE), spool_dir=tmp_path, max_ops=100, write_timeout_s=2)
    await store.start()
    try:
        for i in range(105):
            await store.record_model_event("llama3.2:3b", "http://h", "load", f"{i}")
        state = store.buffer_state()
        assert (state.pending, state.dropped) == (100, 5)
        [(mode, spooled)] = spools(tmp_path)
        assert mode == 0o600  # it may hold questions: owner only
        assert len(spooled.splitlines()) == 100
    finally:
        await store.close(flush_s=0.5)
    assert len(spools(tmp_path)) == 1  # kept for the next start


async def test_questions_not_to_be_stored_are_not_spooled_either(tmp_path: Path) -> None:
    store = BufferedStore(
        create_engine(UNREACHABLE), spool_dir=tmp_path, store_question_text=False, write_timeout_s=2
    )
    await store.start()
    try:
        rid = await store.record_request(
            platform="slack",
            channel_id="C1",
            user_id="U1",
            query="my secret plan",
            decision=decision("llama3.2:3b", reasoning="r"),
        )
        assert rid < 0  # provisional until the database is back
        assert "secret" not in spools(tmp_path)[0][1]
    finally:
        await store.close(flush_s=0.5)
