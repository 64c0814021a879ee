"""The composition root: settings → database → clients → routers → service. Importing does nothing."""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from core.config import Settings
from core.errors import StoreUnavailable
from core.generation import Generator
from core.inventory import InventoryService, load_catalog
from core.routing.chain import MemoryLedger, RoutingChain
from core.routing.distill import sync_router
from core.routing.ensemble import Ensemble, build_meta_router
from core.routing.local import LocalRouter
from core.routing.memory import DecisionMemory
from core.routing.meta import MetaRouter
from core.routing.selection import Exploration
from core.service import ChatService
from core.shared_state import SharedState, shared_state
from core.store import BufferedStore, create_engine, upgrade_database

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    service: ChatService
    store: BufferedStore | None
    local_router: LocalRouter
    meta: MetaRouter | Ensemble | None = None
    shared: SharedState | None = None

    async def close(self) -> None:
        if self.meta is not None:
            await self.meta.aclose()
        if self.shared is not None:
            await self.shared.close()
        if self.store is not None:
            await self.store.close()


async def build_app(
    settings: Settings, *, use_cache: bool = True, database: bool = True, outage_ok: bool = False
) -> App:
    """Wire every core part from the settings. `use_cache=False` for one-shot CLI commands, whose
    decisions must not depend on what an earlier line of the same batch asked. `outage_ok` (serve)
    starts even when the database is down: writes are buffered and the schema upgraded once it is up."""
    store: BufferedStore | None = None
    if database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.db_url
        prepare = None
        try:
            await upgrade_database(url)
        except StoreUnavailable:
            if not outage_ok:
                raise
            log.warning("the database is unavailable; serving anyway and buffering what it should record")
            prepare = functools.partial(upgrade_database, url)
        store = BufferedStore(
            create_engine(url),
            spool_dir=settings.data_dir,
            store_question_text=settings.store_question_text,
            replica_id=replica_id(),
            max_ops=settings.db_buffer_max_ops,
            write_timeout_s=settings.db_write_timeout_s,
            prepare=prepare,
        )
        await store.start()

    stats = (
        functools.partial(store.model_stats, halflife_days=settings.feedback_halflife_days) if store else None
    )
    inventory = InventoryService(settings, settings.hosts, stats, load_catalog())
    local = LocalRouter.load(
        exploration=Exploration.from_settings(settings), ratings=settings.user_feedback_integration
    )
    if store is not None:
        try:
            await sync_router(store, local)
        except Exception:  # the shipped model answers as well as ever meanwhile
            log.warning("cannot read the active local router version; using the shipped one", exc_info=True)
    memory = DecisionMemory(settings, store, local.embedding) if store and settings.decision_memory else None
    meta = build_meta_router(settings, memory=memory)
    # Redis, else PostgreSQL, else this process: what replicas share (core/shared_state.py)
    shared = shared_state(settings, store.engine if store is not None else None)
    log.info("decision cache and rate limits: %s", shared.backend)
    cache = shared.cache if settings.cache_decisions and use_cache else None
    chain = RoutingChain(settings, local=local, meta=meta, cache=cache, ledger=store or MemoryLedger())
    generator = Generator(settings, inventory, store_events=store.record_model_event if store else None)
    service = ChatService(
        settings,
        inventory=inventory,
        chain=chain,
        generator=generator,
        store=store,
        limiter=shared.limiter,
        memory=memory,
    )
    return App(settings=settings, service=service, store=store, local_router=local, meta=meta, shared=shared)


def replica_id() -> str:
    """This process among the replicas sharing the database: unique per start, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
