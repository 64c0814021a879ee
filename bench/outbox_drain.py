"""Database outage: how fast the buffered writes of N answers reach the database once it is back.

    python bench/outbox_drain.py [--answers 500] [--db postgresql://postgres@127.0.0.1:5432/test]

Each answer is what the service writes for one question (conversation, request, answer start and
finish, one message, one rating). A fresh PostgreSQL database is reached through a loopback TCP
proxy; the proxy is stopped (connections refused), the answers are buffered, the proxy restarted, and
the flush timed until the queue is empty (the first retry waits up to the 0.5 s initial backoff).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from core.store import BufferedStore, create_engine, upgrade_database
from tests.doubles.tcpproxy import TcpProxy
from tests.helpers_usage import decision

DECISION = decision("llama3.2:3b", reasoning="bench")


async def buffer_answers(store: BufferedStore, n: int) -> None:
    for i in range(n):
        conv = await store.conversation("slack", "C1", f"{i}")
        req = await store.record_request(
            platform="slack",
            channel_id="C1",
            user_id="U1",
            query=f"question {i}",
            decision=DECISION,
            conversation_id=conv,
        )
        answer = await store.start_answer(req, "llama3.2:3b", "http://127.0.0.1:11434")
        await store.finish_answer(answer, status="ok", chars=100, completion_tokens=30)
        await store.add_answer_message(answer, "slack", "C1", f"17000000{i:05d}.000100")
        await store.set_feedback(answer, "U1", 1, "+1")


async def run(answers: int, db: str) -> None:
    name = f"mr_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(db)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    host_port = db.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    user = db.split("//", 1)[1].split("@", 1)[0]
    url = f"postgresql+asyncpg://{user}@127.0.0.1:{proxy.port}/{name}"
    try:
        await upgrade_database(url)
        await proxy.stop()  # the outage: connections refused
        store = BufferedStore(create_engine(url), spool_dir=Path(tempfile.mkdtemp()), write_timeout_s=2)
        await store.start()
        t0 = time.perf_counter()
        await buffer_answers(store, answers)
        buffering_s = time.perf_counter() - t0
        pending = store.buffer_state().pending
        await proxy.start()  # the database is back
        t1 = time.perf_counter()
        # polled, not awaited: the store's public state is what is measured
        while store.buffer_state().pending == pending:  # noqa: ASYNC110 (the flusher's backoff runs out)
            await asyncio.sleep(0.005)
        t2 = time.perf_counter()
        while store.buffer_state().pending:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        t3 = time.perf_counter()
        await store.close()
        print(
            "| answers | writes buffered | buffering (ms/write) | first write lands (s) | drain (s) "
            "| writes/s |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        print(
            f"| {answers} | {pending} | {buffering_s / pending * 1000:.3f} | {t2 - t1:.2f} | {t3 - t2:.2f} "
            f"| {pending / (t3 - t2):.0f} |"
        )
    finally:
        await proxy.stop()
        admin = await asyncpg.connect(db)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--answers", type=int, default=500)
    p.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test", help="an admin URL")
    args = p.parse_args(argv)
    asyncio.run(run(args.answers, args.db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
