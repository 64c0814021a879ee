"""/healthz and /metrics on the shared HTTP listener, over a real socket, with the real app behind."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import build_app
from bot.http import HttpServer
from bot.serve import health_checks
from core.metrics import Metrics
from core.scheduling import JobCounters
from tests.core.test_service import RecordingReply, message


@pytest.fixture
async def served(make_settings, db_url, ollama_double):
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "Hello."
    settings = make_settings(
        database_url=db_url, ollama_host=ollama_double.url, http_port=0, inventory_ttl_s=0
    )
    app = await build_app(settings)
    http = HttpServer(settings)
    counters = JobCounters()
    http.ops(health_checks(app, []), Metrics(app.store, counters))
    await http.start()
    yield app, f"http://127.0.0.1:{http.port}", counters
    await http.close()
    await app.close()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_healthz_is_ok_then_degraded_naming_the_stopped_ollama_host(served, ollama_double) -> None:
    _, base, _ = served
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/healthz") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["status"] == "ok" and body["down"] == []
        assert body["checks"] == {"database": "up", f"ollama {ollama_double.url}": "up"}
        await ollama_double.stop()
        async with session.get(base + "/healthz") as resp:
            assert resp.status == 200  # the process still serves
            body = await resp.json()
    assert body["status"] == "degraded"
    assert body["down"] == [f"ollama {ollama_double.url}"]
    assert body["checks"]["database"] == "up"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_parse_as_prometheus_text_and_count_a_request(served) -> None:
    app, base, counters = served
    status, text = await _get(base + "/metrics")
    assert status == 200
    before = _samples(text)
    assert before[("metarouter_database_up", ())] == 1
    assert ("metarouter_requests_total", (("source", "local"),)) not in before

    answer = await app.service.handle(message("hello there"), RecordingReply())
    assert answer is not None and answer.error is None
    counters.ran("prepull", "ok")

    after = _samples((await _get(base + "/metrics"))[1])
    assert after[("metarouter_requests_total", (("source", "local"),))] == 1
    assert after[("metarouter_fallbacks_total", (("reason", answer.decision.fallback_reason),))] == 1
    assert after[("metarouter_answers_total", (("status", "ok"),))] == 1
    assert after[("metarouter_decision_seconds_count", ())] == 1
    assert after[("metarouter_generation_seconds_count", ())] == 1
    assert after[("metarouter_generation_seconds_bucket", (("le", "+Inf"),))] == 1
    assert after[("metarouter_job_runs_total", (("job", "prepull"), ("status", "ok")))] == 1
