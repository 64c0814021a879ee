"""`metarouter`: the command line of CONTRACT.md.

Exit status: 0 success, 2 bad usage or configuration (one line naming the setting), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.config import Settings, load_settings
from core.errors import ConfigError
from core.types import RouteRequest, Turn

log = logging.getLogger("metarouter")

DESCRIPTION = """MetaRouter answers questions with local Ollama models and picks the right model for each one.
With OPENAI_API_KEY set, a small OpenAI model (the meta-router) makes the choice; without it, or when
it is slow, rate-limited or unsure, an offline router decides. Settings come from the environment
and an optional TOML file (METAROUTER_CONFIG); see README.md."""


PREVIOUS = -1  # `--rollback` without a version: the one before the active version


def _version(text: str) -> int:
    try:
        version = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number") from None
    if version < 0:
        raise argparse.ArgumentTypeError("versions are 0 (the shipped model) or more")
    return version


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metarouter", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser(
        "serve",
        help="run the bot (Slack, Discord, or the terminal console when no tokens are set)",
        description="Runs the bot on every platform whose credentials are set. With none, chats on "
        "this terminal: type a question, /help for commands. Stops cleanly on Ctrl-C or SIGTERM.",
    )

    r = sub.add_parser(
        "route",
        help="show which model would answer a question (generates nothing)",
        description="Routes a question and prints the decision. Nothing is generated.",
    )
    r.add_argument("query", nargs="?", help="the question (quote it)")
    r.add_argument("--json", action="store_true", help="print the decision JSON of CONTRACT.md")
    r.add_argument(
        "--batch",
        metavar="FILE",
        help='JSON Lines of {"query": ..., "history": [...]} ("-" for stdin); one decision per line',
    )

    a = sub.add_parser(
        "ask",
        help="route a question, pull the model if needed, and stream the answer",
        description="Routes the question, pulls the chosen model when needed (showing progress), "
        "and streams the answer here, followed by the routing decision.",
    )
    a.add_argument("query", help="the question (quote it)")

    m = sub.add_parser(
        "models",
        help="list catalogued and local models with satisfaction and usage",
        description="Every catalogued model and every model present on any Ollama host.",
    )
    m.add_argument("--json", action="store_true", help="print the JSON array of CONTRACT.md")

    rep = sub.add_parser(
        "report",
        help="the usage report for a period, as text and optionally a PNG chart",
        description="Requests, models, query types, satisfaction, who decided (meta-router, local, "
        "cache), fallbacks, decision times, router cost, tokens, pulls and pre-pull hits.",
    )
    rep.add_argument(
        "--since", default="7d", metavar="PERIOD", help="how far back: 30m, 12h, 7d, 2w (default 7d)"
    )
    rep.add_argument("--png", metavar="FILE", help="also write the chart to FILE")

    tr = sub.add_parser(
        "train-router",
        help="retrain the local router on the meta-router's stored decisions",
        description="Retrains the offline router from the shipped examples plus the meta-router's "
        "stored decisions, validates on held-back examples and installs the result only when it is not "
        "worse. Versions live in the database; every running bot switches to the active one.",
    )
    what = tr.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="train and report; install nothing")
    what.add_argument("--list", action="store_true", help="list the versions and which is active")
    what.add_argument(
        "--rollback",
        nargs="?",
        type=_version,
        const=PREVIOUS,
        metavar="VERSION",
        help="activate VERSION (0: the shipped model), or the one before the active version",
    )

    db = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    dbsub.add_parser("upgrade", help="apply the migrations to DATABASE_URL")
    return p


def main(argv: list[str] | None = None) -> int:
    # The embedding model ships inside a package: never let a library reach for the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"metarouter: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings)
    if args.command == "route" and not args.batch and not args.query:
        print("metarouter route: give a QUERY or --batch FILE", file=sys.stderr)
        return 2
    if args.command == "report":
        from core.reports import parse_since

        try:
            args.since = parse_since(args.since)
        except ValueError as exc:
            print(f"metarouter report: --since {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_run(args, settings))
    except ConfigError as exc:
        print(f"metarouter: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        log.debug("failed", exc_info=True)
        print(f"metarouter: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.app import build_app

    if args.command == "db":
        from core.store import upgrade_database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade_database(settings.db_url)
        print("database is up to date")
        return 0

    if args.command == "serve":
        from bot.serve import serve

        return await serve(settings)

    if args.command == "report":
        return await _report(settings, args.since, args.png)

    if args.command == "train-router":
        from bot.train_router import train_router_command

        return await train_router_command(
            settings, dry_run=args.dry_run, list_=args.list, rollback=args.rollback
        )

    app = await build_app(settings, use_cache=False)
    try:
        if args.command == "route":
            if args.batch:
                return await _route_batch(app.service, args.batch)
            decision = await app.service.route(RouteRequest(query=args.query))
            if args.json:
                print(decision.model_dump_json())
            else:
                from bot.common.render import decision_details, decision_summary

                print(decision_summary(decision))
                print("\n".join("  " + line for line in decision_details(decision)))
            return 0
        if args.command == "ask":
            from bot.console import Console

            answer = await Console(app.service).ask(args.query)
            return 0 if answer is not None and answer.error is None else 1
        if args.command == "models":
            return await _models(app.service, as_json=args.json)
    finally:
        await app.close()
    return 2


async def _report(settings: Settings, since: Any, png_path: str | None) -> int:
    from datetime import UTC, datetime

    from core.reports import build_report, render_png, render_text
    from core.store import Store, create_engine, upgrade_database

    # the report needs only the database: no Ollama, no routers
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade_database(settings.db_url)
    store = Store(create_engine(settings.db_url))
    try:
        report = await build_report(store, datetime.now(UTC) - since)
    finally:
        await store.close()
    print(render_text(report), end="")
    if png_path:
        png = await asyncio.to_thread(render_png, report)
        await asyncio.to_thread(Path(png_path).write_bytes, png)
        print(f"chart written to {png_path}")
    return 0


async def _route_batch(service: Any, path: str) -> int:
    # reading a local file line by line between decisions; a thread per line would cost more than it saves
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115, ASYNC230
    try:
        for line in _nonblank(stream):
            try:
                req = _parse_batch_line(line)
            except ValueError as exc:
                print(json.dumps({"error": str(exc)}), flush=True)
                continue
            decision = await service.route(req)
            print(decision.model_dump_json(), flush=True)
    finally:
        if stream is not sys.stdin:
            stream.close()
    return 0


def _nonblank(lines: Iterable[str]) -> Iterable[str]:
    return (line for line in lines if line.strip())


def _parse_batch_line(line: str) -> RouteRequest:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("query"), str):
        raise ValueError('each line needs a "query" string')
    try:
        history = tuple(Turn(role=t["role"], content=t["content"]) for t in obj.get("history") or [])
    except (KeyError, TypeError, ValidationError):
        raise ValueError('"history" must be a list of {"role": "user"|"assistant", "content": str}') from None
    return RouteRequest(query=obj["query"], history=history)


async def _models(service: Any, *, as_json: bool) -> int:
    from core.inventory import models_json

    inv = await service.models()
    rows = models_json(inv)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    print(f"{'MODEL':28} {'WHERE':9} {'SIZE':>7}  {'SATISFACTION':>12}  {'USED':>5}  SPECIALISATIONS")
    for r in rows:
        where = "local" if r["local"] else "download"
        sat = "–" if r["satisfaction"] is None else f"{r['satisfaction']:.0%} of {r['feedback_count']}"
        size = f"{r['size_gb']:.1f} GB" if r["size_gb"] is not None else "?"
        specs = ", ".join(r["specializations"])
        print(f"{r['name']:28} {where:9} {size:>7}  {sat:>12}  {r['requests']:>5}  {specs}")
    await _forecast_footer(service, inv)
    if inv.hosts_down:
        print(f"\nunreachable Ollama hosts: {', '.join(inv.hosts_down)}", file=sys.stderr)
    return 0


async def _forecast_footer(service: Any, inv: Any) -> None:
    """What the pre-pull job expects next (human form only: `models --json` keeps its contract)."""
    store = service.store
    if store is None:
        return
    from core.forecast import expected_demand, plan

    settings = service.settings
    try:
        expected = await expected_demand(store, settings)
    except Exception:
        return
    if not expected:
        return
    window_h = settings.prepull_window_h
    window = f"{window_h:g} h"
    shown = []
    for e in expected[:5]:
        info = inv.get(e.model)
        where = "local" if info is not None and info.local else "not local"
        shown.append(f"{e.model} ~{e.requests:.1f} ({where})")
    print(f"\nforecast, next {window}: " + ", ".join(shown))
    p = plan(
        expected,
        inv,
        budget_gb=settings.disk_budget_gb,
        min_expected=settings.prepull_min_expected,
        evict=settings.evict_enabled,
    )
    if settings.prepull_enabled and (p.pull or p.evict):
        todo = [f"pull {', '.join(e.model for e in p.pull)}"] if p.pull else []
        todo += [f"evict {', '.join(p.evict)}"] if p.evict else []
        print(f"the next pre-pull would {' and '.join(todo)}")


class _SecretFilter(logging.Filter):
    """Masks every configured secret in every log record, whatever logged it."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            masked = msg
            for s in self.secrets:
                masked = masked.replace(s, "***")
            if masked != msg:
                record.msg, record.args = masked, None
        return True


def setup_logging(settings: Settings) -> None:
    level = settings.log_level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    secrets = [
        s.get_secret_value()
        for s in (
            settings.openai_api_key,
            settings.slack_bot_token,
            settings.slack_app_token,
            settings.slack_signing_secret,
            settings.discord_bot_token,
            *(m.api_key for m in settings.meta_routers),
        )
        if s is not None
    ]
    handler.addFilter(_SecretFilter(secrets))
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), handlers=[handler], force=True)
    # httpx logs every request line at INFO; keep it for debugging only
    logging.getLogger("httpx").setLevel(max(logging.getLogger().level, logging.WARNING))


if __name__ == "__main__":
    raise SystemExit(main())
