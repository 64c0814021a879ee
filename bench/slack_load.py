"""Slack under load: 50 mentions across 10 channels at once, answered by an instant Ollama.

    python bench/slack_load.py [--mentions 50] [--channels 10] [--mode socket|http] [--interval 1.0]
                               [--database-url postgresql+asyncpg://...]

Everything real but the far ends: the Slack double (Web API + Socket Mode or signed HTTP events) and
the Ollama double (no token delay) on loopback, slack-bolt and the whole core in this process, a
fresh SQLite database (or the PostgreSQL database given, which should be empty). Times run from the
moment a mention is handed to the transport to the moment the Slack double receives the call: the
placeholder's chat.postMessage, and the last write that completes the answer (the one carrying the
routing footer). Answers are streamed with the real edit interval (1 s), so an instant model's answer
still takes about two intervals: "Routing…", one throttled edit, the final edit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

# The doubles live in the test tree, which is not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import build_app  # noqa: E402
from bot.http import HttpServer  # noqa: E402
from bot.slack.app import SlackAdapter  # noqa: E402
from core.config import Settings  # noqa: E402
from tests.doubles.ollama import OllamaDouble  # noqa: E402
from tests.doubles.slack import SlackDouble  # noqa: E402

ANSWER = " ".join(f"token{i}" for i in range(120))  # ~1 KB, streamed as 120 chunks


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(mentions: int, channels: int, mode: str, interval: float, db: str | None) -> dict[str, object]:
    slack = await SlackDouble().start()
    ollama = await OllamaDouble(reply=ANSWER).start()
    ollama.add_model("llama3.2:3b", size_gb=2.0)
    ollama.add_model("qwen2.5-coder:7b", size_gb=4.7)
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            data_dir=Path(data),
            meta_router_enabled=False,
            ollama_host=ollama.url,
            # a load test, not an abuse test: the per-user and per-channel limits would shape it
            user_rate_per_minute=0,
            channel_rate_per_minute=0,
            slack_bot_token="xoxb-bench",
            slack_api_url=slack.api_url,
            slack_update_interval_s=interval,
            http_port=0,
            database_url=db,
            **(
                {"slack_app_token": "xapp-bench"}
                if mode == "socket"
                else {"slack_signing_secret": slack.signing_secret}
            ),
        )
        app = await build_app(settings)
        http = HttpServer(settings) if mode == "http" else None
        adapter = SlackAdapter(settings, app.service, http)
        if http is not None:
            await http.start()
            slack.events_url = f"http://127.0.0.1:{http.port}/slack/events"
        await adapter.start()
        if mode == "socket":
            await slack.wait_for_socket()
        try:
            # warm-up: auth.test, the inventory probe, the router's first encode
            warm = slack.mention("CWARM", "U1", "<@UBOT> hello")
            await slack.deliver(warm)
            while adapter.tasks or not slack.bot_replies("CWARM", warm["event"]["ts"]):  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling the double is how a benchmark watches from outside
            slack.api_calls.clear()

            questions = [
                "write a python function to merge two sorted lists",
                "what is 17 * 23?",
                "a haiku about autumn",
                "why is the sky blue?",
                "summarise the plot of Hamlet",
            ]
            events = [
                slack.mention(f"C{i % channels}", "U1", f"<@UBOT> {questions[i % len(questions)]} (#{i})")
                for i in range(mentions)
            ]
            sent: dict[str, float] = {}

            async def send(e: dict) -> None:
                sent[e["event"]["ts"]] = time.monotonic()
                await slack.deliver(e)

            started = time.monotonic()
            await asyncio.gather(*(send(e) for e in events))
            while time.monotonic() - started < 120:
                done = [e for e in events if final_at(slack, e) is not None]
                if len(done) == len(events) and not adapter.tasks:
                    break
                await asyncio.sleep(0.02)
        finally:
            await adapter.close(grace_s=5)
            if http is not None:
                await http.close()
            await app.close()
            await ollama.stop()
            await slack.stop()

    placeholder, final, updates, lost, duplicated = [], [], [], 0, 0
    for e in events:
        ts, channel = e["event"]["ts"], e["event"]["channel"]
        posts = [c for c in slack.calls("chat.postMessage") if c.args.get("thread_ts") == ts]
        finished = final_at(slack, e)
        if not posts or finished is None:
            lost += 1
            continue
        footers = [
            m for m in slack.bot_replies(channel, ts) if any(b.get("type") == "actions" for b in m.blocks)
        ]
        duplicated += len(footers) > 1
        placeholder.append(posts[0].at - sent[ts])
        final.append(finished - sent[ts])
        ids = {m.ts for m in slack.bot_replies(channel, ts)}
        updates.append(sum(1 for c in slack.calls("chat.update") if c.args.get("ts") in ids))
    return {"placeholder": placeholder, "final": final, "updates": updates, "lost": lost, "dup": duplicated}


def final_at(slack: SlackDouble, e: dict) -> float | None:
    ts, channel = e["event"]["ts"], e["event"]["channel"]
    ids = {m.ts for m in slack.bot_replies(channel, ts)}
    times = [
        c.at
        for c in slack.api_calls
        if c.method in ("chat.postMessage", "chat.update")
        and (c.args.get("ts") in ids or c.args.get("thread_ts") == ts)
        and any(b.get("type") == "actions" for b in c.args.get("blocks") or [])
    ]
    return max(times) if times else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mentions", type=int, default=50)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--mode", choices=["socket", "http"], default="socket")
    ap.add_argument("--interval", type=float, default=1.0, help="METAROUTER_SLACK_UPDATE_INTERVAL_S")
    ap.add_argument("--database-url", help="default: a fresh SQLite file")
    args = ap.parse_args()
    r = asyncio.run(run(args.mentions, args.channels, args.mode, args.interval, args.database_url))
    ph, fin, upd = r["placeholder"], r["final"], r["updates"]
    print(
        f"`python bench/slack_load.py --mentions {args.mentions} --channels {args.channels} "
        f"--mode {args.mode} --interval {args.interval:g}"
        + (" --database-url postgresql+asyncpg://…" if args.database_url else "")
        + "`\n"
    )
    print("| measure | p50 | p99 | max |")
    print("| --- | --- | --- | --- |")
    if ph:
        for name, xs, unit in (
            ("event → placeholder visible", ph, "s"),
            ("event → final answer", fin, "s"),
            ("chat.update calls per answer", upd, ""),
        ):
            fmt = (lambda x: f"{x:.3f} s") if unit else (lambda x: f"{x:.0f}")
            print(f"| {name} | {fmt(pct(xs, 50))} | {fmt(pct(xs, 99))} | {fmt(max(xs))} |")
    print(f"| answers lost / duplicated | {r['lost']} / {r['dup']} | | |")


if __name__ == "__main__":
    main()
