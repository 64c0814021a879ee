"""Discord under a burst: many mentions across channels at once, answered through the real discord.py
client against the loopback Discord double, with an instant Ollama double.

    python bench/discord_load.py [--mentions 50] [--channels 10] [--words 120] [--no-limit]

The double limits writes per channel like Discord (5 posts or edits per 5 s per channel, with the
X-RateLimit headers, and 429 + retry_after beyond that), so the figures include waiting out rate
limits; `--no-limit` lifts that to show the adapter's own overhead. Routing is
scripted (an instant meta-router double) and the model server takes every request at once, so the
benchmark measures the adapter, not the router or the generation queue.
Prints a Markdown table: placeholder and final-answer latency from the mention's dispatch, edits
per answer, answers lost or duplicated (target 0) and rate-limit hits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import discord

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import build_app  # noqa: E402
from bot.discord.client import DiscordAdapter  # noqa: E402
from core.config import Settings  # noqa: E402
from tests.doubles.discord import DiscordDouble  # noqa: E402
from tests.doubles.ollama import OllamaDouble  # noqa: E402
from tests.doubles.openai import OpenAIDouble  # noqa: E402
from tests.doubles.openai import Reply as OpenAIReply  # noqa: E402

MODEL = "llama3.2:3b"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(mentions: int, channels: int, words: int, limit: bool) -> dict[str, Any]:
    double = await DiscordDouble().start()
    if limit:
        double.limit_channel_writes(5, 5.0)
    rooms = [double.general, double.random] + [double.add_channel(f"room{i}") for i in range(channels - 2)]
    ollama = await OllamaDouble(reply=" ".join(f"word{i}" for i in range(words))).start()
    ollama.add_model(MODEL, size_gb=2.0)
    router = await OpenAIDouble(responder=lambda req: OpenAIReply.decision(recommended_model=MODEL)).start()
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            data_dir=Path(data),
            ollama_host=ollama.url,
            openai_api_key="sk-bench",
            openai_base_url=router.base_url,
            use_local_for_simple_queries=False,
            cache_decisions=False,
            # a load test, not an abuse test: the per-user and per-channel limits would shape it
            user_rate_per_minute=0,
            channel_rate_per_minute=0,
            per_host_concurrency=mentions,  # the instant model server is not the bottleneck under test
            discord_bot_token=double.token,
            discord_api_url=double.api_url,
        )
        app = await build_app(settings)
        adapter = DiscordAdapter(settings, app.service, guild_ready_timeout=0.1)
        try:
            await adapter.start()
            await adapter.wait_ready()
            people = [double.person(f"Person{i}") for i in range(mentions)]
            sent_at: dict[str, float] = {}

            async def mention(i: int, person: dict[str, Any]) -> dict[str, Any]:
                posted = time.monotonic()
                q = await double.post(rooms[i % channels], person, f"question {i}?", mention_bot=True)
                sent_at[q["id"]] = posted
                return q

            started = time.monotonic()
            questions = await asyncio.gather(*(mention(i, p) for i, p in enumerate(people)))

            def finished() -> bool:
                return all(_final(double, q) is not None for q in questions)

            try:
                await double.wait_for(finished, 120.0)
            except AssertionError:
                pass
            await double.wait_for(lambda: adapter.in_flight == 0, 60.0)
            elapsed = time.monotonic() - started
            return _figures(double, questions, sent_at, elapsed)
        finally:
            await adapter.close()
            await app.close()
            await double.stop()
            await ollama.stop()
            await router.stop()


def _parts(double: DiscordDouble, question_id: str) -> list[dict[str, Any]]:
    found, current = [], question_id
    while nxt := double.replies_to(current):
        found.append(nxt[0])
        current = nxt[0]["id"]
    return found


def _final(double: DiscordDouble, q: dict[str, Any]) -> dict[str, Any] | None:
    parts = _parts(double, q["id"])
    return parts[-1] if parts and parts[-1]["embeds"] else None


def _figures(
    double: DiscordDouble, questions: list[dict[str, Any]], sent_at: dict[str, float], elapsed: float
) -> dict[str, Any]:
    placeholder, final, edits = [], [], []
    lost = duplicated = 0
    posts = [
        r for r in double.requests if r.method == "POST" and r.path.endswith("/messages") and r.status == 200
    ]
    for q in questions:
        first_posts = [
            r for r in posts if str((r.body.get("message_reference") or {}).get("message_id")) == q["id"]
        ]
        if len(first_posts) > 1:
            duplicated += 1
        parts = _parts(double, q["id"])
        if not parts or not parts[-1]["embeds"]:
            lost += 1
            continue
        placeholder.append(first_posts[0].answered_at - sent_at[q["id"]])
        ids = {p["id"] for p in parts}
        writes = [r for r in double.requests if r.method == "PATCH" and r.path.rsplit("/", 1)[-1] in ids]
        landed = [r for r in writes if r.status == 200]
        edits.append(len(landed))
        last = landed[-1] if landed else first_posts[0]
        final.append(last.answered_at - sent_at[q["id"]])
    return {
        "placeholder": placeholder,
        "final": final,
        "edits": edits,
        "lost": lost,
        "duplicated": duplicated,
        "rate_limited": double.rate_limit_hits,
        "elapsed": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mentions", type=int, default=50)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--words", type=int, default=120, help="length of each answer")
    ap.add_argument("--no-limit", action="store_true", help="no per-channel rate limit in the double")
    args = ap.parse_args()
    if args.channels < 2:
        raise SystemExit("--channels must be at least 2")
    logging.basicConfig(level=logging.ERROR)
    discord.utils.setup_logging(level=logging.ERROR)
    r = asyncio.run(run(args.mentions, args.channels, args.words, not args.no_limit))
    ms = 1000.0
    print(
        f"`python bench/discord_load.py --mentions {args.mentions} --channels {args.channels} "
        f"--words {args.words}{' --no-limit' if args.no_limit else ''}`\n"
    )
    print("| measure | p50 | p99 | max |")
    print("| --- | --- | --- | --- |")
    for name, key in (("placeholder latency", "placeholder"), ("final-answer latency", "final")):
        v = r[key]
        if v:
            print(
                f"| {name} | {pct(v, 0.5) * ms:.0f} ms | {pct(v, 0.99) * ms:.0f} ms | {max(v) * ms:.0f} ms |"
            )
    e = r["edits"]
    if e:
        print(f"| edits per answer | {statistics.median(e):.0f} | {pct(e, 0.99):.0f} | {max(e)} |")
    print()
    print("| answers | lost | duplicated | rate-limit hits (429) | wall time |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {args.mentions} | {r['lost']} | {r['duplicated']} | {r['rate_limited']} | {r['elapsed']:.1f} s |"
    )


if __name__ == "__main__":
    main()
