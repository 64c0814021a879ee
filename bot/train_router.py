"""`metarouter train-router`: retrain, list, or roll back the local router's versions (text output)."""

from __future__ import annotations

import sys

from core.config import Settings
from core.routing.distill import Scores, TrainReport, train_router
from core.routing.local import DEFAULT_ARTIFACT, TrainedModel
from core.store import RouterVersionInfo, Store, create_engine, upgrade_database

PARTS = (("all", "held back"), ("shipped", "  shipped examples"), ("decisions", "  stored decisions"))


async def train_router_command(
    settings: Settings, *, dry_run: bool, list_: bool, rollback: int | None
) -> int:
    """`rollback` is a version, -1 for the one before the active version, or None."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade_database(settings.db_url)
    store = Store(create_engine(settings.db_url), store_question_text=settings.store_question_text)
    try:
        if list_:
            print_versions(await store.router_versions())
            return 0
        if rollback is not None:
            return await _rollback(store, rollback)
        report = await train_router(settings, store, dry_run=dry_run, log_line=lambda line: print(line))
    finally:
        await store.close()
    print_report(report, dry_run=dry_run)
    return 0


async def _rollback(store: Store, target: int) -> int:
    versions = await store.router_versions()
    active = next((v.id for v in versions if v.active), 0)
    if target < 0:
        if active == 0:
            print(
                "metarouter train-router: the shipped model (version 0) is active: nothing to roll back to",
                file=sys.stderr,
            )
            return 1
        target = next((v.id for v in versions if v.installed and v.id < active), 0)
    if not await store.activate_router_version(target):
        print(
            f"metarouter train-router: --rollback {target}: no installed version {target} (see --list)",
            file=sys.stderr,
        )
        return 2
    print(f"version {target} is active (was {active}); running bots switch to it within router_reload_s")
    return 0


def _row(label: str, s: Scores | None) -> str:
    return f"{label:22} {s.n:>5}  {s.accuracy:>8.4f}  {s.macro_f1:>8.4f}" if s else f"{label:22}     –"


def print_report(r: TrainReport, *, dry_run: bool) -> None:
    if not r.current:
        print(f"nothing trained: {r.reason}")
        return
    print(
        f"\n{r.decisions} stored decisions used ({r.new_decisions} new, {r.dropped} left out), "
        f"{r.examples} examples in all; trained in {r.train_s:.0f} s"
    )
    print(f"\n{'':22} {'rows':>5}  {'accuracy':>8}  {'macro-F1':>8}")
    for who, scores in (("current", r.current), ("candidate", r.candidate)):
        print(who)
        for key, label in PARTS:
            print(_row(label, scores.get(key)))
    if dry_run:
        verdict = "would be installed" if r.reason.startswith("not worse") else "would not be installed"
        print(f"\ndry run: the candidate {verdict} ({r.reason}); nothing changed")
    elif r.installed:
        print(f"\ninstalled as version {r.version} ({r.reason})")
    else:
        print(f"\nnot installed ({r.reason}); recorded as run {r.version}")


def print_versions(versions: list[RouterVersionInfo]) -> None:
    active = next((v.id for v in versions if v.active), 0)
    head = f"  {'VERSION':>7}  {'CREATED (UTC)':16}  {'EXAMPLES':>8}  {'DECISIONS':>9}"
    print(f"{head}  {'HELD-BACK MACRO-F1':20}  STATUS")
    for v in versions:
        cur = v.metrics.get("current", {}).get("all", {}).get("macro_f1")
        cand = v.metrics.get("candidate", {}).get("all", {}).get("macro_f1")
        f1 = f"{cur:.4f} -> {cand:.4f}" if cur is not None and cand is not None else "–"
        status = "active" if v.active else "installed" if v.installed else "rejected"
        mark = "*" if v.active else " "
        created = v.created_at.strftime("%Y-%m-%d %H:%M")
        print(f"{mark} {v.id:>7}  {created:16}  {v.examples:>8}  {v.decisions:>9}  {f1:20}  {status}")
    shipped = TrainedModel.load(DEFAULT_ARTIFACT).info
    mark = "*" if active == 0 else " "
    cv = shipped.get("cv_macro_f1")
    f1 = f"cv {cv:.4f}" if cv is not None else "–"
    status = "active" if active == 0 else "installed"
    print(f"{mark} {0:>7}  {'shipped':16}  {shipped.get('examples', 0):>8}  {0:>9}  {f1:20}  {status}")
