"""Cold start of `metarouter route --json` (process start to decision printed) and its peak RSS.

    python bench/cold_start.py [--runs 5]

Each run is a fresh process on a fresh data directory's database (already migrated once, as a
running installation's is), with no Ollama and no OpenAI reachable: the offline path users get.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

QUERY = "Debug this Python code: def fib(n): return n + fib(n-1)"


def run_once(env: dict[str, str]) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "route", "--json", QUERY],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"route failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024, json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ,
            "METAROUTER_DATA_DIR": data,
            "OLLAMA_HOST": "http://127.0.0.1:9",  # nothing listens: catalog-only inventory
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("OPENAI_API_KEY", None)
        env.pop("DATABASE_URL", None)
        run_once(env)  # migrates the fresh database, as `serve` or `db upgrade` would have
        results = [run_once(env) for _ in range(args.runs)]
    walls = [r[0] for r in results]
    rss = [r[1] for r in results]
    decision = results[-1][2]
    print(f"`python bench/cold_start.py --runs {args.runs}`\n")
    print("| measure | median | max |")
    print("| --- | --- | --- |")
    print(f"| `metarouter route --json` cold start | {statistics.median(walls):.2f} s | {max(walls):.2f} s |")
    print(f"| peak RSS | {statistics.median(rss):.0f} MB | {max(rss):.0f} MB |")
    print(f"\ndecision: {decision['recommended_model']} / {decision['query_type']} / {decision['source']}")


if __name__ == "__main__":
    main()
