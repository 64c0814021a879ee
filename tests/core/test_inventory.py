"""The inventory: the packaged catalog merged with live Ollama hosts, through the real ollama client."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from core.errors import ConfigError
from core.inventory import CATALOG_PATH, InventoryService, guess_specializations, load_catalog, models_json
from core.types import QUERY_TYPES, ModelStats
from tests.doubles.ollama import OllamaDouble

CONTRACT_ROW = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "name",
        "local",
        "hosts",
        "size_gb",
        "specializations",
        "satisfaction",
        "feedback_count",
        "requests",
        "last_used",
    ],
    "properties": {
        "name": {"type": "string", "pattern": "^[^:]+:[^:]+$"},
        "local": {"type": "boolean"},
        "hosts": {"type": "array", "items": {"type": "string", "pattern": "^https?://.*[^/]$"}},
        "size_gb": {"type": ["number", "null"]},
        "specializations": {"type": "array", "items": {"type": "string"}},
        "satisfaction": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "feedback_count": {"type": "integer", "minimum": 0},
        "requests": {"type": "integer", "minimum": 0},
        "last_used": {"type": ["string", "null"], "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
    },
}


def test_catalog_has_real_models_for_every_query_type_with_sources() -> None:
    catalog = load_catalog()
    names = {e.name for e in catalog}
    assert len(catalog) >= 15
    assert {"qwen2.5-coder:7b", "llama3.2:3b", "deepseek-r1:7b", "mathstral:7b"} <= names
    for qtype in QUERY_TYPES:
        assert any(qtype in e.specializations for e in catalog), qtype
    for e in catalog:
        # a Q4-Q8 download weighs 0.4-1.1 GB per billion parameters: catches a slipped decimal point
        assert 0.4 <= e.size_gb / e.parameters_b <= 1.1, e.name
        assert all(e.sources.get(k) for k in ("size_gb", "parameters_b", "context_length", *QUERY_TYPES))
        assert "estimate" in e.sources["creative"].lower()  # no benchmark exists for it


def test_a_bad_catalog_entry_is_named_in_the_error(tmp_path: Path) -> None:
    good = json.loads(CATALOG_PATH.read_text())["models"][0]
    bad = {**good, "name": "broken:1b", "scores": {**good["scores"], "math": 140}}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": [good, bad]}))
    with pytest.raises(ConfigError, match=r"broken:1b.*scores"):
        load_catalog(path)

    unsourced = {**good, "sources": {"size_gb": "x"}}
    path.write_text(json.dumps({"models": [unsourced]}))
    with pytest.raises(ConfigError, match="no source for"):
        load_catalog(path)


async def test_snapshot_merges_the_catalog_with_two_hosts(ollama_factory, make_settings) -> None:
    a: OllamaDouble = await ollama_factory()
    b: OllamaDouble = await ollama_factory()
    a.add_model("llama3.2:3b", size_gb=2.02, loaded=True)
    a.add_model("my-coder:latest", size_gb=1.23, parameter_size="1.5B")
    b.add_model("llama3.2:3b", size_gb=2.02)
    b.add_model("qwen2.5-coder:7b", size_gb=4.68)
    settings = make_settings(ollama_hosts=[a.url, b.url + "/"])
    service = InventoryService(settings, settings.hosts, None, load_catalog())

    inv = await service.snapshot()

    assert inv.hosts == (a.url, b.url) and inv.hosts_down == ()
    llama = inv.get("llama3.2:3b")
    assert llama.local and llama.hosts == (a.url, b.url) and llama.loaded_on == (a.url,)
    assert llama.size_gb == pytest.approx(2.02)  # what Ollama reports, not the catalog's 2.0
    coder = inv.get("qwen2.5-coder:7b")
    assert coder.hosts == (b.url,) and coder.loaded_on == ()
    remote = inv.get("gemma2:9b")
    assert not remote.local and remote.hosts == () and remote.size_gb == 5.4  # the catalog's figure
    extra = inv.get("my-coder")  # tag defaults to latest
    assert extra is not None and extra.local and not extra.catalogued
    assert extra.hosts == (a.url,) and extra.specializations == ("coding",)
    assert extra.size_gb == pytest.approx(1.23) and extra.parameters_b == 1.5
    assert set(extra.scores.values()) == {50.0}
    assert len(inv.models) == len(load_catalog()) + 1
    await service.aclose()


async def test_a_host_that_is_down_is_listed_and_the_rest_still_works(ollama_factory, make_settings) -> None:
    up: OllamaDouble = await ollama_factory()
    dead: OllamaDouble = await ollama_factory()
    broken: OllamaDouble = await ollama_factory()
    up.add_model("llama3.2:1b", size_gb=1.3)
    broken.add_model("gemma2:2b", size_gb=1.6)
    broken.fail("/api/tags", 500, "boom")
    await dead.stop()  # connection refused from now on
    settings = make_settings(ollama_hosts=[up.url, dead.url, broken.url])
    service = InventoryService(settings, settings.hosts)

    inv = await service.snapshot()

    assert inv.hosts_down == (dead.url, broken.url)
    assert inv.get("llama3.2:1b").hosts == (up.url,)
    assert not inv.get("gemma2:2b").local  # its only host could not list it
    await service.aclose()


async def test_a_latest_tag_is_not_merged_into_a_sized_tag(
    ollama_double: OllamaDouble, make_settings
) -> None:
    ollama_double.add_model("llama3.2", size_gb=2.0)  # what `ollama pull llama3.2` leaves
    settings = make_settings(ollama_host=ollama_double.url)
    service = InventoryService(settings, settings.hosts)

    inv = await service.snapshot()

    assert inv.get("llama3.2:latest").local and not inv.get("llama3.2:latest").catalogued
    assert not inv.get("llama3.2:3b").local
    await service.aclose()


async def test_snapshot_is_cached_until_the_ttl_or_an_invalidation(
    ollama_double: OllamaDouble, make_settings
) -> None:
    settings = make_settings(ollama_host=ollama_double.url, inventory_ttl_s=3600)
    service = InventoryService(settings, settings.hosts)

    await service.snapshot()
    ollama_double.add_model("phi3:mini", size_gb=2.2)
    assert not (await service.snapshot()).get("phi3:mini").local  # cached
    service.invalidate()
    assert (await service.snapshot()).get("phi3:mini").local
    await service.snapshot(refresh=True)
    assert len(ollama_double.calls("/api/tags")) == 3
    await service.aclose()


async def test_statistics_appear_and_a_failing_provider_costs_only_the_statistics(
    ollama_double: OllamaDouble, make_settings
) -> None:
    used = datetime(2026, 11, 27, 9, 12, tzinfo=UTC)

    async def stats() -> dict[str, ModelStats]:
        return {"llama3.2:3b": ModelStats(satisfaction=0.75, feedback_count=4, requests=9, last_used=used)}

    async def broken() -> dict[str, ModelStats]:
        raise ConnectionError("database is gone")

    settings = make_settings(ollama_host=ollama_double.url)
    ok = InventoryService(settings, settings.hosts, stats)
    row = next(r for r in models_json(await ok.snapshot()) if r["name"] == "llama3.2:3b")
    assert row["satisfaction"] == 0.75 and row["feedback_count"] == 4 and row["requests"] == 9
    assert row["last_used"] == "2026-11-27T09:12:00Z"

    failing = InventoryService(settings, settings.hosts, broken)
    inv = await failing.snapshot()
    assert inv.get("llama3.2:3b").stats == ModelStats()
    await ok.aclose()
    await failing.aclose()


async def test_models_json_has_exactly_the_contract_shape(ollama_double: OllamaDouble, make_settings) -> None:
    ollama_double.add_model("qwen2.5-coder:7b", size_gb=4.683087332)
    ollama_double.add_model("custom-model:q8", size_gb=3.0)
    settings = make_settings(ollama_host=ollama_double.url + "/")
    service = InventoryService(settings, settings.hosts)

    rows = json.loads(json.dumps(models_json(await service.snapshot())))

    for row in rows:
        jsonschema.validate(row, CONTRACT_ROW)
    by_name = {r["name"]: r for r in rows}
    assert by_name["qwen2.5-coder:7b"]["local"] is True
    assert by_name["qwen2.5-coder:7b"]["hosts"] == [ollama_double.url]
    assert by_name["qwen2.5-coder:7b"]["size_gb"] == pytest.approx(4.68, abs=0.01)
    assert by_name["custom-model:q8"]["local"] is True  # every locally present model is listed
    assert by_name["deepseek-r1:7b"] == {
        "name": "deepseek-r1:7b",
        "local": False,
        "hosts": [],
        "size_gb": 4.7,
        "specializations": ["reasoning", "math", "logic", "step-by-step"],
        "satisfaction": None,
        "feedback_count": 0,
        "requests": 0,
        "last_used": None,
    }
    assert all(re.fullmatch(r"[^:]+:[^:]+", r["name"]) for r in rows)
    await service.aclose()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my-coder:latest", ("coding",)),
        ("deepseek-r1:32b", ("reasoning",)),
        ("wizard-math:7b", ("math",)),
        ("hf.co/someone/storywriter-13b:q4", ("creative",)),
        ("llama3.3:70b", ("general",)),
        ("starr1se:7b", ("general",)),  # "r1" inside a word is not a reasoning model
    ],
)
def test_uncatalogued_specialisations_are_guessed_from_the_name(name: str, expected: tuple[str, ...]) -> None:
    assert guess_specializations(name) == expected
