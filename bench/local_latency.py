"""Local router latency: warm decision times, cold start, memory.

    python bench/local_latency.py [--dev-dir /work/shared/data] [--repeat 1]

Warm: one LocalRouter decides every dev query (500 single, then 50 with their thread) plus
synthetic follow-ups; p50/p90/p99/max of the wall time of `decide` (the asyncio.to_thread hop
included) and of `decide_sync` (inline). A thread's earlier turns are encoded on first sight and then
cached, so threads are measured both ways. Cold: fresh processes that import the router and load
it, and `metarouter route` end to end; time and peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLD_SNIPPET = """
import json, resource, time
t0 = time.perf_counter()
from core.routing.local import DEFAULT_ARTIFACT, LocalRouter, MiniLMEncoder, TrainedModel
t1 = time.perf_counter()
encoder = MiniLMEncoder.load()
t2 = time.perf_counter()
router = LocalRouter(encoder, TrainedModel.load(DEFAULT_ARTIFACT))
t3 = time.perf_counter()
router.classify("How do I reverse a linked list in Python?")
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "encoder_load_s": t2 - t1, "artifact_load_s": t3 - t2,
                  "first_classify_s": t4 - t3, "total_s": t4 - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(values)
    return {
        "n": len(a),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def inventory():
    from core.inventory import load_catalog
    from core.types import Inventory, ModelInfo

    local = {"qwen2.5-coder:7b", "llama3.2:3b", "qwen2.5:7b", "phi3:mini"}
    models = tuple(
        ModelInfo(
            name=e.name,
            local=e.name in local,
            hosts=("http://127.0.0.1:11434",) if e.name in local else (),
            loaded_on=(),
            size_gb=e.size_gb,
            parameters_b=e.parameters_b,
            context_length=e.context_length,
            specializations=e.specializations,
            scores=e.scores,
            catalogued=True,
        )
        for e in load_catalog()
    )
    return Inventory(models=models, hosts=("http://127.0.0.1:11434",))


def cold(runs: int) -> list[dict]:
    out = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", COLD_SNIPPET], capture_output=True, text=True, cwd=ROOT, check=True
        )
        out.append(json.loads(proc.stdout))
    return out


def cli_route(runs: int) -> list[dict] | str:
    exe = Path(sys.executable).parent / "metarouter"
    if not exe.exists():
        return "metarouter is not installed in this environment"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "METAROUTER_"))}
    env["METAROUTER_DATA_DIR"] = "/tmp/metarouter-bench"
    env["OLLAMA_HOST"] = "http://127.0.0.1:9"  # nothing listens: the inventory comes from the catalog
    out = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(exe), "route", "--json", "Write a haiku about the sea"],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            return f"`metarouter route` exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
        # ru_maxrss of children is the largest child so far; this child dominates when it grew it
        out.append(
            {
                "wall_s": wall,
                "peak_rss_mb": max(after, before) / 1024,
                "source": json.loads(proc.stdout)["source"],
            }
        )
    return out


async def warm(
    dev_dir: Path, repeat: int, blas_threads: int | None
) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    from core.routing.local import LocalRouter
    from core.types import RouteRequest, Turn

    singles = [
        json.loads(line)["query"] for line in (dev_dir / "routing_dev.jsonl").read_text().splitlines() if line
    ]
    threads = []
    for line in (dev_dir / "routing_dev_threads.jsonl").read_text().splitlines():
        if line:
            r = json.loads(line)
            threads.append(
                (r["query"], tuple(Turn(role=t["role"], content=t["content"]) for t in r["history"]))
            )
    # more thread shapes: each single query as the start of a thread, then a short follow-up
    follow_ups = [
        "why?",
        "can you explain that step by step?",
        "make it shorter",
        "and what about the edge cases?",
    ]
    synthetic = [
        (
            follow_ups[i % len(follow_ups)],
            (Turn(role="user", content=q), Turn(role="assistant", content=q[::-1])),
        )
        for i, q in enumerate(singles[:200])
    ]
    inv = inventory()
    router = LocalRouter.load(blas_threads=blas_threads)
    for q in singles[:20]:  # warm-up: first calls pay for lazy allocations
        router.decide_sync(RouteRequest(query=q), inv)
    router.clear_cache()

    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    async def measure(case: str, call: Callable[[], object]) -> None:
        # process CPU time counts BLAS worker threads too; wall time also counts waiting for a core
        t, c = time.perf_counter(), time.process_time()
        result = call()
        if inspect.isawaitable(result):
            await result
        wall.setdefault(case, []).append((time.perf_counter() - t) * 1000)
        cpu.setdefault(case, []).append((time.process_time() - c) * 1000)

    for _ in range(repeat):
        for q in singles:
            req = RouteRequest(query=q)
            router.clear_cache()  # every query is new to the router
            await measure("single, decide (thread hop)", lambda req=req: router.decide(req, inv))
            router.clear_cache()
            await measure("single, decide_sync (inline)", lambda req=req: router.decide_sync(req, inv))
        for q, history in threads + synthetic:
            req = RouteRequest(query=q, history=history)
            router.clear_cache()
            await measure("thread, history first seen", lambda req=req: router.decide(req, inv))
            # the follow-up itself new, its thread already seen (the bot's normal case)
            again = RouteRequest(query=q + " please", history=history)
            await measure("thread, history cached", lambda req=again: router.decide(req, inv))
    return {case: (percentiles(wall[case]), percentiles(cpu[case])) for case in wall}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dev-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS pool for the warm runs (0: the library's default)"
    )
    args = parser.parse_args()

    load1 = os.getloadavg()[0]
    warm_results = asyncio.run(warm(args.dev_dir, args.repeat, args.blas_threads or None))
    threads = args.blas_threads or "default"
    print(
        f"## Local router latency (warm; {os.cpu_count()} CPUs, BLAS threads {threads}, "
        f"load average {load1:.2f} at start)\n"
    )
    print("| case | n | p50 ms | p90 ms | p99 ms | max ms | CPU p50 ms | CPU p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (w, c) in warm_results.items():
        print(
            f"| {name} | {w['n']} | {w['p50']:.1f} | {w['p90']:.1f} | {w['p99']:.1f} | {w['max']:.1f} | "
            f"{c['p50']:.1f} | {c['p99']:.1f} |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")

    runs = cold(args.cold_runs)
    print("\n## Cold start (fresh process each run; median of runs)\n")
    print("| step | seconds |")
    print("| --- | ---: |")
    for key in ("import_s", "encoder_load_s", "artifact_load_s", "first_classify_s", "total_s"):
        values = sorted(r[key] for r in runs)
        print(f"| {key.removesuffix('_s').replace('_', ' ')} | {values[len(values) // 2]:.3f} |")
    print(f"| peak RSS after the first classification (MB) | {max(r['peak_rss_mb'] for r in runs):.0f} |")

    cli = cli_route(args.cold_runs)
    print("\n## `metarouter route --json QUERY`, end to end (no API key, no Ollama)\n")
    if isinstance(cli, str):
        print(cli)
    else:
        walls = sorted(r["wall_s"] for r in cli)
        print("| runs | median wall s | max wall s | peak RSS MB | source |")
        print("| ---: | ---: | ---: | ---: | --- |")
        print(
            f"| {len(cli)} | {walls[len(walls) // 2]:.2f} | {walls[-1]:.2f} | "
            f"{max(r['peak_rss_mb'] for r in cli):.0f} | {cli[0]['source']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
