"""Soak: steady traffic on one real `serve` process for N minutes, through periodic Ollama and
meta-router outages; does memory or the file-descriptor count grow, and is any question left unanswered?

    python bench/soak.py [--minutes 30] [--interval 2] [--channels 10] [--cycle 300]
                         [--database-url URL] [--redis-url URL]

A mention every `--interval` seconds (each question different, so the decision cache does not hide the
meta-router). Every `--cycle` seconds the same outage schedule repeats, from the cycle's start:
  20-30 %  Ollama down (the port closed: connection refused; streams in flight are cut)
  50-60 %  meta-router returns HTTP 500
  70-80 %  meta-router hangs (answers after 30 s, past the 4 s decision timeout)
(with the default 300 s cycle: 60-90 s, 150-180 s, 210-240 s).
The Ollama double streams at 30 tokens/s (a 120-token answer takes 4 s; METAROUTER_PER_HOST_CONCURRENCY=4,
so the default traffic uses half the capacity); the meta-router double answers at once otherwise.
RSS, open file descriptors and CPU seconds of the serve process are printed every minute. At the end
every question must have an answer or a clear :warning: message; "lost" counts the rest (target 0).
RSS and descriptors are compared after a warm-up and after the last answers drained (target: flat).
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

from bench.load import outcome, replica_env  # noqa: E402
from bench.slack_load import ANSWER, final_at  # noqa: E402
from tests.doubles.ollama import OllamaDouble  # noqa: E402
from tests.doubles.openai import OpenAIDouble, RecordedRequest, Reply  # noqa: E402
from tests.doubles.slack import SlackDouble  # noqa: E402
from tests.serve_process import ServeProcess, events_url  # noqa: E402

# parts of each cycle: 60-90 s, 150-180 s and 210-240 s of a 5-minute cycle
OUTAGES = (("ollama down", 0.2, 0.3), ("meta 500", 0.5, 0.6), ("meta hangs", 0.7, 0.8))


def phase(t: float, cycle: float) -> str:
    s = (t % cycle) / cycle
    return next((name for name, a, b in OUTAGES if a <= s < b), "normal")


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


async def run(args: argparse.Namespace) -> int:
    slack = await SlackDouble().start()
    ollama = await OllamaDouble(reply=ANSWER, token_delay=1 / 30).start()
    ollama.add_model("llama3.2:3b", size_gb=2.0, loaded=True)
    ollama.add_model("qwen2.5-coder:7b", size_gb=4.7, loaded=True)
    meta_mode = "normal"

    def respond(_: RecordedRequest) -> Reply:
        if meta_mode == "meta 500":
            return Reply.server_error(500)
        if meta_mode == "meta hangs":
            return Reply(delay_s=30, answer={})
        return Reply.decision()

    openai = await OpenAIDouble(responder=respond).start()
    events: list[dict[str, Any]] = []
    phases: dict[str, str] = {}
    samples: list[tuple[float, float, int, float]] = []
    deliveries: set[asyncio.Task[Any]] = set()
    with tempfile.TemporaryDirectory() as tmp:
        env = replica_env(
            slack,
            ollama.url,
            Path(tmp) / "data",
            db=args.database_url,
            redis=args.redis_url,
            OPENAI_API_KEY="sk-soak-0000000000",
            OPENAI_BASE_URL=openai.base_url,
            METAROUTER_USE_LOCAL_FOR_SIMPLE_QUERIES="false",
            METAROUTER_PER_HOST_CONCURRENCY="4",  # 4 answers of 4 s at once: twice the default traffic
            METAROUTER_MAX_REQUESTS_PER_HOUR="100000",
            METAROUTER_MONTHLY_BUDGET_USD="1000",
            # limits on (so the limiter is soaked too) but far above the traffic
            METAROUTER_USER_RATE_PER_MINUTE="1000",
            METAROUTER_CHANNEL_RATE_PER_MINUTE="1000",
        )
        proc = await ServeProcess.start(env, Path(tmp) / "serve.log")
        url = events_url(env)
        try:
            # warm-up: a few answers, so the start figures include the router and client pools
            for i in range(5):
                warm = slack.mention("CWARM", "U1", f"<@UBOT> hello {i}")
                await slack.deliver(warm, url=url)
                while final_at(slack, warm) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # polling the double is how a benchmark watches from outside
            start_rss, start_fds = proc.rss_mb(), proc.open_fds()
            say(f"start: RSS {start_rss:.1f} MB, fds {start_fds}, CPU {proc.cpu_s():.1f} s")

            started = time.monotonic()
            next_sample = started + 60
            i = 0
            while (now := time.monotonic()) - started < args.minutes * 60:
                p = phase(now - started, args.cycle)
                if p == "ollama down" and ollama._runner is not None:
                    await ollama.stop()
                    say("outage: Ollama down")
                elif p != "ollama down" and ollama._runner is None:
                    await ollama.start()
                    say("Ollama back")
                if p != meta_mode and (p.startswith("meta") or meta_mode.startswith("meta")):
                    say(f"meta-router: {p}")
                meta_mode = p
                e = slack.mention(
                    f"C{i % args.channels}", f"U{i % 20}", f"<@UBOT> question {i}: why is the sky blue?"
                )
                events.append(e)
                phases[e["event"]["ts"]] = p
                task = asyncio.create_task(slack.deliver(e, url=url))
                deliveries.add(task)
                task.add_done_callback(deliveries.discard)
                i += 1
                if now >= next_sample:
                    next_sample += 60
                    samples.append((now - started, proc.rss_mb(), proc.open_fds(), proc.cpu_s()))
                    kinds = [outcome(slack, x)[0] for x in events[:-30]]
                    say(
                        f"t={(now - started) / 60:.0f} min: RSS {samples[-1][1]:.1f} MB, "
                        f"fds {samples[-1][2]}, "
                        f"CPU {samples[-1][3]:.1f} s; asked {len(events)}, answered "
                        f"{kinds.count('answered')}, errors {kinds.count('error')}"
                    )
                await asyncio.sleep(args.interval)

            if ollama._runner is None:
                await ollama.start()
            meta_mode = "normal"
            drain_until = time.monotonic() + 180
            while time.monotonic() < drain_until and any(outcome(slack, e)[0] == "lost" for e in events):  # noqa: ASYNC110
                await asyncio.sleep(1)  # polling the double is how a benchmark watches from outside
            await asyncio.sleep(5)  # let the process settle before the end sample
            end_rss, end_fds = proc.rss_mb(), proc.open_fds()
            say(
                f"end: RSS {end_rss:.1f} MB, fds {end_fds}, CPU {proc.cpu_s():.1f} s, "
                f"peak RSS {proc.peak_rss_mb():.1f} MB"
            )
        finally:
            code = await proc.stop()
            log_tail = proc.log.read_text()[-2000:]
            await openai.stop()
            await ollama.stop()
            await slack.stop()

    by_phase: dict[str, dict[str, int]] = {}
    lost, twice = [], 0
    for e in events:
        kind, shown = outcome(slack, e)
        twice += shown > 1
        row = by_phase.setdefault(phases[e["event"]["ts"]], {"answered": 0, "error": 0, "lost": 0})
        row[kind] += 1
        if kind == "lost":
            lost.append(e)
    cmd = (
        f"python bench/soak.py --minutes {args.minutes:g} --interval {args.interval:g} --cycle {args.cycle:g}"
    )
    cmd += " --database-url postgresql+asyncpg://…" if args.database_url else ""
    cmd += " --redis-url redis://…" if args.redis_url else ""
    print(f"\n`{cmd}`\n")
    print("| phase when asked | questions | answered | clear error | lost |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in sorted(by_phase.items()):
        print(f"| {name} | {sum(row.values())} | {row['answered']} | {row['error']} | {row['lost']} |")
    print(f"\nanswered twice: {twice}; meta-router calls: {openai.calls}; serve exit code {code}")
    print(f"RSS {start_rss:.1f} → {end_rss:.1f} MB ({end_rss - start_rss:+.1f}); fds {start_fds} → {end_fds}")
    for e in lost[:5]:
        ev = e["event"]
        say(
            f"lost: {ev['text']!r}: {[m.visible()[:120] for m in slack.bot_replies(ev['channel'], ev['ts'])]}"
        )
    if lost:
        print("serve log tail:\n" + log_tail)
    return 1 if lost or twice else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between two mentions")
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--cycle", type=float, default=300.0, help="seconds of one outage schedule")
    ap.add_argument("--database-url", help="default: a fresh SQLite file")
    ap.add_argument("--redis-url", help="REDIS_URL for the serve process (default: none)")
    args = ap.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
