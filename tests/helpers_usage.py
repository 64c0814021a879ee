"""Seeding usage history for report and forecast tests: real Store calls, then the timestamps moved
to when the test says the request happened (the Store always stamps "now")."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update

from core.store import Store
from core.store.models import Answer, ModelEvent, Request
from core.types import Decision


def decision(model: str, **kw: object) -> Decision:
    values: dict[str, object] = {
        "recommended_model": model,
        "confidence": 0.9,
        "reasoning": "test",
        "query_type": "general",
        "complexity": "simple",
        "source": "local",
    }
    values.update(kw)
    return Decision(**values)  # type: ignore[arg-type]


async def seed_answer(
    store: Store,
    model: str,
    at: datetime,
    *,
    ratings: tuple[int, ...] = (),
    completion_tokens: int = 10,
    prompt_tokens: int = 5,
    status: str = "ok",
    **decision_fields: object,
) -> int:
    request_id = await store.record_request(
        platform="slack",
        channel_id="C1",
        user_id="U1",
        query="q",
        decision=decision(model, **decision_fields),
    )
    answer_id = await store.start_answer(request_id, model, "http://127.0.0.1:11434")
    await store.finish_answer(
        answer_id, status=status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    for i, r in enumerate(ratings):
        await store.set_feedback(answer_id, f"U{i}", r, "+1" if r > 0 else "-1")
    async with store.engine.begin() as conn:
        await conn.execute(update(Request).where(Request.id == request_id).values(created_at=at))
        await conn.execute(update(Answer).where(Answer.id == answer_id).values(created_at=at))
    return request_id


async def move_events(store: Store, model: str, kind: str, at: datetime) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            update(ModelEvent).where(ModelEvent.model == model, ModelEvent.kind == kind).values(created_at=at)
        )
