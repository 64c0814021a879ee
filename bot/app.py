"""The composition root: settings → database → clients → routers → service. Importing does nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.config import Settings
from core.generation import Generator
from core.inventory import InventoryService, load_catalog
from core.routing.chain import MemoryLedger, RoutingChain
from core.routing.local import LocalRouter
from core.routing.meta import MetaRouter
from core.service import ChatService
from core.shared_state import SharedState, shared_state
from core.store import Store, create_engine, upgrade_database

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    service: ChatService
    store: Store | None
    local_router: LocalRouter
    meta: MetaRouter | None = None
    shared: SharedState | None = None

    async def close(self) -> None:
        if self.meta is not None:
            await self.meta.aclose()
        if self.shared is not None:
            await self.shared.close()
        if self.store is not None:
            await self.store.close()


async def build_app(settings: Settings, *, use_cache: bool = True, database: bool = True) -> App:
    """Wire every core part from the settings. `use_cache=False` for one-shot CLI commands, whose
    decisions must not depend on what an earlier line of the same batch asked."""
    store: Store | None = None
    if database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade_database(settings.db_url)
        store = Store(create_engine(settings.db_url), store_question_text=settings.store_question_text)

    inventory = InventoryService(
        settings, settings.hosts, store.model_stats if store is not None else None, load_catalog()
    )
    local = LocalRouter.load()
    meta = MetaRouter(settings) if settings.meta_router_enabled and settings.openai_api_key else None
    # Redis, else PostgreSQL, else this process: what replicas share (core/shared_state.py)
    shared = shared_state(settings, store.engine if store is not None else None)
    log.info("decision cache and rate limits: %s", shared.backend)
    cache = shared.cache if settings.cache_decisions and use_cache else None
    chain = RoutingChain(settings, local=local, meta=meta, cache=cache, ledger=store or MemoryLedger())
    generator = Generator(settings, inventory, store_events=store.record_model_event if store else None)
    service = ChatService(
        settings, inventory=inventory, chain=chain, generator=generator, store=store, limiter=shared.limiter
    )
    return App(settings=settings, service=service, store=store, local_router=local, meta=meta, shared=shared)
