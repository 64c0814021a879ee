"""The model inventory: the catalog (core/data/catalog.json) merged with what every Ollama host has.

The catalog's schema is documented in its own `_schema` key. A snapshot lists every catalogued model
and every model present on any host; a host that does not answer is named in `hosts_down` and
costs nothing else. Names match exactly after normalisation (`llama3.2` is `llama3.2:latest`, which
is not `llama3.2:3b`, even when both are the same weights).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import ollama
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.config import Settings
from core.errors import ConfigError
from core.feedback import NEUTRAL_SCORE
from core.types import QUERY_TYPES, Inventory, ModelInfo, ModelStats, normalise_model_name

log = logging.getLogger(__name__)

CATALOG_PATH = Path(__file__).parent / "data" / "catalog.json"

StatsProvider = Callable[[], Awaitable[dict[str, ModelStats]]]


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    family: str
    description: str
    parameters_b: float
    size_gb: float
    context_length: int
    specializations: tuple[str, ...]
    scores: dict[str, float]
    sources: dict[str, str]


class _EntrySchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=3)
    family: str = Field(min_length=1)
    description: str = Field(min_length=1)
    parameters_b: float = Field(gt=0)
    size_gb: float = Field(gt=0)
    context_length: int = Field(ge=512)
    specializations: list[str] = Field(min_length=1)
    scores: dict[str, float]
    sources: dict[str, str]

    @field_validator("name")
    @classmethod
    def _tagged(cls, v: str) -> str:
        if ":" not in v or v != normalise_model_name(v):
            raise ValueError("must be model:tag")
        return v

    @field_validator("scores")
    @classmethod
    def _scores(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(QUERY_TYPES):
            raise ValueError(f"needs exactly the query types {', '.join(QUERY_TYPES)}")
        if any(not 0 <= s <= 100 for s in v.values()):
            raise ValueError("scores are 0-100")
        return v


def load_catalog(path: Path | None = None) -> list[CatalogEntry]:
    """The catalog's models, validated; ConfigError names the file and the bad entry."""
    path = path or CATALOG_PATH
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        items = raw["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"model catalog {path}: unreadable ({exc})") from None
    entries: list[CatalogEntry] = []
    for i, item in enumerate(items):
        label = item.get("name", f"#{i}") if isinstance(item, dict) else f"#{i}"
        try:
            e = _EntrySchema.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"model catalog {path}: entry {label}: {where}: {err['msg']}") from None
        missing = {"size_gb", "parameters_b", "context_length", *QUERY_TYPES} - set(e.sources)
        if missing:
            raise ConfigError(
                f"model catalog {path}: entry {label}: no source for {', '.join(sorted(missing))}"
            )
        entries.append(
            CatalogEntry(
                name=e.name,
                family=e.family,
                description=e.description,
                parameters_b=e.parameters_b,
                size_gb=e.size_gb,
                context_length=e.context_length,
                specializations=tuple(e.specializations),
                scores=dict(e.scores),
                sources=dict(e.sources),
            )
        )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"model catalog {path}: duplicate entries {', '.join(dupes)}")
    return entries


# Uncatalogued models get specialisations from their name: enough to be routable at all.
_NAME_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("coder", "code", "starcoder", "devstral", "codestral"), "coding"),
    (("math",), "math"),
    (("r1", "qwq", "reason", "think"), "reasoning"),
    (("story", "writer", "creative", "poet"), "creative"),
)


def guess_specializations(name: str) -> tuple[str, ...]:
    base = name.split(":", 1)[0].rsplit("/", 1)[-1].lower()
    parts = set(re.split(r"[-_.]", base))
    found = []
    for hints, spec in _NAME_HINTS:
        # short hints ("r1") must be a whole part of the name, longer ones may be inside a word
        if any(h in parts if len(h) < 4 else h in base for h in hints):
            found.append(spec)
    return tuple(found) or ("general",)


def _parameters_b(parameter_size: str | None) -> float | None:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMBT])\s*", parameter_size or "", re.IGNORECASE)
    if not m:
        return None
    scale = {"K": 1e-6, "M": 1e-3, "B": 1.0, "T": 1e3}[m.group(2).upper()]
    return round(float(m.group(1)) * scale, 3)


@dataclass
class _HostState:
    sizes: dict[str, int]  # model -> bytes
    params: dict[str, float | None]
    loaded: dict[str, int | None]  # model -> context length in use, when Ollama says


class InventoryService:
    """Live inventory across every Ollama host, cached for `settings.inventory_ttl_s`."""

    def __init__(
        self,
        settings: Settings,
        hosts: list[str] | None = None,
        stats_provider: StatsProvider | None = None,
        catalog: list[CatalogEntry] | None = None,
    ) -> None:
        self.settings = settings
        self.hosts = list(
            dict.fromkeys(h.rstrip("/") for h in (hosts if hosts is not None else settings.hosts))
        )
        self.catalog = catalog if catalog is not None else load_catalog()
        self._stats_provider = stats_provider
        t = settings.ollama_probe_timeout_s
        self._clients = {h: ollama.AsyncClient(host=h, timeout=httpx.Timeout(t)) for h in self.hosts}
        self._cached: Inventory | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the cached snapshot (after a pull, a removal, or new feedback)."""
        self._cached = None

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def snapshot(self, *, refresh: bool = False) -> Inventory:
        async with self._lock:
            fresh = time.monotonic() - self._cached_at < self.settings.inventory_ttl_s
            if self._cached is not None and fresh and not refresh:
                return self._cached
            states, stats = await asyncio.gather(
                asyncio.gather(*(self._probe(h) for h in self.hosts)), self._stats()
            )
            self._cached = self._merge(dict(zip(self.hosts, states, strict=True)), stats)
            self._cached_at = time.monotonic()
            return self._cached

    async def _probe(self, host: str) -> _HostState | None:
        client = self._clients[host]
        try:
            async with asyncio.timeout(self.settings.ollama_probe_timeout_s):
                tags, ps = await asyncio.gather(client.list(), client.ps(), return_exceptions=True)
        except TimeoutError:
            log.warning(
                "Ollama host %s did not answer within %.1f s", host, self.settings.ollama_probe_timeout_s
            )
            return None
        if isinstance(tags, BaseException):
            log.warning("Ollama host %s is down: %s", host, tags)
            return None
        state = _HostState({}, {}, {})
        for m in tags.models:
            if not m.model:
                continue
            name = normalise_model_name(m.model)
            state.sizes[name] = int(m.size or 0)
            state.params[name] = _parameters_b(m.details.parameter_size if m.details else None)
        if isinstance(ps, BaseException):
            # listing worked, so the host is up; only "loaded" is unknown
            log.info("Ollama host %s: /api/ps failed: %s", host, ps)
        else:
            for p in ps.models:
                if p.model:
                    state.loaded[normalise_model_name(p.model)] = p.context_length
        return state

    async def _stats(self) -> dict[str, ModelStats]:
        if self._stats_provider is None:
            return {}
        try:
            stats = await self._stats_provider()
        except Exception:
            log.warning("model statistics unavailable; inventory without them", exc_info=True)
            return {}
        return {normalise_model_name(k): v for k, v in stats.items()}

    def _merge(self, states: dict[str, _HostState | None], stats: dict[str, ModelStats]) -> Inventory:
        up = {h: s for h, s in states.items() if s is not None}

        def where(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
            hosts = tuple(h for h, s in up.items() if name in s.sizes)
            loaded = tuple(h for h, s in up.items() if name in s.loaded)
            return hosts, loaded

        def local_size(name: str, hosts: tuple[str, ...]) -> float | None:
            sizes = [up[h].sizes[name] for h in hosts if up[h].sizes[name]]
            return max(sizes) / 1e9 if sizes else None

        models: list[ModelInfo] = []
        for e in self.catalog:
            hosts, loaded = where(e.name)
            models.append(
                ModelInfo(
                    name=e.name,
                    local=bool(hosts),
                    hosts=hosts,
                    loaded_on=loaded,
                    size_gb=local_size(e.name, hosts) or e.size_gb,
                    parameters_b=e.parameters_b,
                    context_length=e.context_length,
                    specializations=e.specializations,
                    scores=dict(e.scores),
                    catalogued=True,
                    stats=stats.get(e.name, ModelStats()),
                    description=e.description,
                )
            )
        known = {e.name for e in self.catalog}
        extra = sorted({n for s in up.values() for n in s.sizes} - known)
        for name in extra:
            hosts, loaded = where(name)
            params = next((up[h].params[name] for h in hosts if up[h].params[name]), None)
            ctx = next((up[h].loaded[name] for h in loaded if up[h].loaded[name]), None)
            models.append(
                ModelInfo(
                    name=name,
                    local=True,
                    hosts=hosts,
                    loaded_on=loaded,
                    size_gb=local_size(name, hosts),
                    parameters_b=params,
                    context_length=ctx,
                    specializations=guess_specializations(name),
                    scores={t: NEUTRAL_SCORE for t in QUERY_TYPES},
                    catalogued=False,
                    stats=stats.get(name, ModelStats()),
                    description="present on an Ollama host; not in the catalog",
                )
            )
        down = tuple(h for h, s in states.items() if s is None)
        return Inventory(models=tuple(models), hosts=tuple(self.hosts), hosts_down=down)


def _iso_utc(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:  # the store keeps UTC; a naive value is UTC
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def models_json(inv: Inventory) -> list[dict[str, Any]]:
    """The objects of `metarouter models --json` (CONTRACT.md), one per model."""
    rows = []
    for m in inv.models:
        s = m.stats
        rows.append(
            {
                "name": m.name,
                "local": m.local,
                "hosts": list(m.hosts),
                "size_gb": round(m.size_gb, 2) if m.size_gb is not None else None,
                "specializations": list(m.specializations),
                "satisfaction": s.satisfaction if s.feedback_count else None,
                "feedback_count": s.feedback_count,
                "requests": s.requests,
                "last_used": _iso_utc(s.last_used),
            }
        )
    return rows
