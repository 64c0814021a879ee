"""Load on real `serve` processes: mentions spread over a minute and over channels, answered by an Ollama
double that streams at a human-like speed, with one replica or two on one PostgreSQL database.

    python bench/load.py [--mentions 200] [--seconds 60] [--channels 20] [--tokens-per-s 30]
                         [--concurrency 4] [--replicas 1|2] [--database-url postgresql+asyncpg://...]
                         [--redis-url redis://127.0.0.1:6379/0]

Everything but the far ends is real: `python -m bot.cli serve` child processes (Slack HTTP mode, each on
its own port), the Slack double delivering signed events round-robin over the replicas like a load
balancer, and one Ollama double shared by every replica (one model server behind the bot: each replica
keeps its own METAROUTER_PER_HOST_CONCURRENCY, so two replicas put up to twice that on it). Routing is
the local router (no meta-router), and rate limits are off: this measures queueing, not abuse control.
Two replicas need --database-url (PostgreSQL): SQLite is one process.

Times run from the mention's delivery to the Slack double receiving the placeholder's
chat.postMessage and the write that completes the answer (the one carrying the routing footer).
Peak RSS is VmHWM, CPU is user + system seconds of each serve process, both from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.slack_load import ANSWER, final_at, pct  # noqa: E402
from tests.doubles.ollama import OllamaDouble  # noqa: E402
from tests.doubles.slack import SlackDouble  # noqa: E402
from tests.serve_process import ServeProcess, events_url, free_port, serve_env, slack_http_mode  # noqa: E402

QUESTIONS = [
    "write a python function to merge two sorted lists",
    "what is 17 * 23?",
    "a haiku about autumn",
    "why is the sky blue?",
    "summarise the plot of Hamlet",
]
_LAST_TOKEN = ANSWER.split()[-1]


def replica_env(
    slack: SlackDouble, ollama_url: str, data_dir: Path, *, db: str | None, redis: str | None, **extra: str
) -> dict[str, str]:
    """The environment of a `serve` process in Slack HTTP mode against the doubles, on its own port."""
    env = serve_env(
        data_dir,
        ollama_url,
        **slack_http_mode(slack, free_port()),
        METAROUTER_SCHEDULER_ENABLED="false",
        METAROUTER_LOG_LEVEL="INFO",
    )
    if db:
        env["DATABASE_URL"] = db
    if redis:
        env["REDIS_URL"] = redis
    return env | extra


def outcome(slack: SlackDouble, e: dict[str, Any]) -> tuple[str, int]:
    """("answered" | "error" | "lost", answers shown): an error is a clear :warning: message; lost is
    no reply, or a reply that never got past a status line."""
    ts, channel = e["event"]["ts"], e["event"]["channel"]
    replies = slack.bot_replies(channel, ts)
    text = "\n".join(m.visible() for m in replies)
    shown = sum(1 for m in replies if any(b.get("type") == "actions" for b in m.blocks))
    if ":warning:" in text:
        return "error", shown
    if _LAST_TOKEN in text and final_at(slack, e) is not None:
        return "answered", shown
    return "lost", shown


async def run(args: argparse.Namespace) -> dict[str, Any]:
    slack = await SlackDouble().start()
    ollama = await OllamaDouble(reply=ANSWER, token_delay=1 / args.tokens_per_s).start()
    ollama.add_model("llama3.2:3b", size_gb=2.0, loaded=True)
    ollama.add_model("qwen2.5-coder:7b", size_gb=4.7, loaded=True)
    procs: list[ServeProcess] = []
    urls: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(args.replicas):
                env = replica_env(
                    slack,
                    ollama.url,
                    Path(tmp) / "data",
                    db=args.database_url,
                    redis=args.redis_url,
                    METAROUTER_META_ROUTER_ENABLED="false",
                    METAROUTER_PER_HOST_CONCURRENCY=str(args.concurrency),
                    METAROUTER_USER_RATE_PER_MINUTE="0",
                    METAROUTER_CHANNEL_RATE_PER_MINUTE="0",
                )
                procs.append(await ServeProcess.start(env, Path(tmp) / f"serve{i}.log"))
                urls.append(events_url(env))
            # warm-up on every replica: auth.test, the inventory probe, the router's first encode
            for url in urls:
                warm = slack.mention("CWARM", "U1", "<@UBOT> hello")
                await slack.deliver(warm, url=url)
                deadline = time.monotonic() + 60
                while final_at(slack, warm) is None and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling the double is how a benchmark watches from outside
            slack.api_calls.clear()
            cpu0 = [p.cpu_s() for p in procs]

            events = [
                slack.mention(
                    f"C{i % args.channels}",
                    f"U{i % 50}",
                    f"<@UBOT> {QUESTIONS[i % len(QUESTIONS)]} (#{i})",
                )
                for i in range(args.mentions)
            ]
            sent: dict[str, float] = {}
            gap = args.seconds / args.mentions
            started = time.monotonic()

            async def send(i: int, e: dict[str, Any]) -> None:
                await asyncio.sleep(max(0.0, started + i * gap - time.monotonic()))
                sent[e["event"]["ts"]] = time.monotonic()
                await slack.deliver(e, url=urls[i % len(urls)])

            await asyncio.gather(*(send(i, e) for i, e in enumerate(events)))
            pending = list(events)
            while pending and time.monotonic() - started < args.seconds + args.drain:
                # only the unfinished ones, once a second: this process shares the CPUs with the bot
                await asyncio.sleep(1)
                pending = [e for e in pending if outcome(slack, e)[0] == "lost"]
            wall = time.monotonic() - started
            cpu = [p.cpu_s() - c for p, c in zip(procs, cpu0, strict=True)]
            peak = [p.peak_rss_mb() for p in procs]
        finally:
            codes = [await p.stop() for p in procs]
            await ollama.stop()
            await slack.stop()

    placeholder, final, kinds, dup = [], [], {"answered": 0, "error": 0, "lost": 0}, 0
    for e in events:
        ts = e["event"]["ts"]
        kind, shown = outcome(slack, e)
        kinds[kind] += 1
        dup += shown > 1
        posts = [c for c in slack.calls("chat.postMessage") if c.args.get("thread_ts") == ts]
        if posts:
            placeholder.append(posts[0].at - sent[ts])
        if kind == "answered":
            final.append((final_at(slack, e) or 0.0) - sent[ts])
    return {
        "placeholder": placeholder,
        "final": final,
        "kinds": kinds,
        "dup": dup,
        "cpu": cpu,
        "peak": peak,
        "wall": wall,
        "codes": codes,
        "max_chats": ollama.max_concurrent_chats,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mentions", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="the mentions are spread evenly over this")
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--tokens-per-s", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=4, help="METAROUTER_PER_HOST_CONCURRENCY")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--database-url", help="default: a fresh SQLite file (one replica only)")
    ap.add_argument("--redis-url", help="REDIS_URL for the replicas (default: none)")
    ap.add_argument("--drain", type=float, default=400.0, help="most seconds to wait for the last answers")
    args = ap.parse_args()
    if args.replicas > 1 and not (args.database_url or "").startswith("postgresql"):
        ap.error("several replicas need --database-url postgresql+asyncpg://...")
    r = asyncio.run(run(args))
    ph, fin = r["placeholder"], r["final"]
    print(
        f"`python bench/load.py --mentions {args.mentions} --seconds {args.seconds:g}"
        f" --channels {args.channels} --tokens-per-s {args.tokens_per_s:g}"
        f" --concurrency {args.concurrency} --replicas {args.replicas}"
        + (" --database-url postgresql+asyncpg://…" if args.database_url else "")
        + (" --redis-url redis://…" if args.redis_url else "")
        + "`\n"
    )
    print("| measure | p50 | p99 | max |")
    print("| --- | --- | --- | --- |")
    for name, xs in (("mention → placeholder", ph), ("mention → final answer", fin)):
        if xs:
            print(f"| {name} | {pct(xs, 50):.2f} s | {pct(xs, 99):.2f} s | {max(xs):.2f} s |")
    k = r["kinds"]
    print(
        f"\nanswered {k['answered']}, clear errors {k['error']}, lost {k['lost']}, answered twice {r['dup']}"
    )
    print(
        f"wall time to the last answer {r['wall']:.1f} s; "
        f"most chats at once on the Ollama double {r['max_chats']}"
    )
    for i, (cpu, peak, code) in enumerate(zip(r["cpu"], r["peak"], r["codes"], strict=True)):
        print(f"replica {i}: CPU {cpu:.1f} s, peak RSS {peak:.0f} MB, exit code {code}")


if __name__ == "__main__":
    main()
