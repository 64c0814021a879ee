"""A real `python -m bot.cli serve` child process, for the CLI, fault and replica tests and the
benchmarks, and the environment it runs in.

Its log goes to a file (a pipe nobody reads would block it after 64 KB); it is ready once it logs
"serving"; /proc gives its RSS, peak RSS, CPU seconds and open file descriptors (Linux only).

    env = serve_env(tmp_path / "data", ollama_double.url, **slack_socket_mode(slack_double))
    proc = await ServeProcess.start(env, tmp_path / "a.log")
    ...
    code = await proc.stop()
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(check: Callable[[], object], within: float = 30, what: Any = None) -> None:
    """Waits for `check()` to hold, failing after `within` seconds with `what` (or `what()`)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what() if callable(what) else what
        await asyncio.sleep(0.1)  # polling the doubles is how a test watches other processes


def serve_env(data_dir: Path, ollama_url: str, **settings: str) -> dict[str, str]:
    """This process's environment without its MetaRouter, OpenAI, Slack, Discord, database and Redis
    settings (a developer's own must not leak into a test), offline for Hugging Face; then `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METAROUTER_", "OPENAI_", "SLACK_", "DISCORD_"))
        and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return env | {
        "HF_HUB_OFFLINE": "1",
        "METAROUTER_DATA_DIR": str(data_dir),
        "OLLAMA_HOST": ollama_url,
        **settings,
    }


def slack_socket_mode(slack: Any) -> dict[str, str]:
    """Settings for Slack over Socket Mode against the Slack double."""
    return {
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_APP_TOKEN": "xapp-test-token",
        "SLACK_API_URL": slack.api_url,
    }


def slack_http_mode(slack: Any, port: int) -> dict[str, str]:
    """Settings for Slack over HTTP events on `port` against the Slack double."""
    return {
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_SIGNING_SECRET": slack.signing_secret,
        "SLACK_API_URL": slack.api_url,
        "METAROUTER_HTTP_PORT": str(port),
    }


def events_url(env: dict[str, str]) -> str:
    """The Slack events URL of a serve process in HTTP mode."""
    return f"http://127.0.0.1:{env['METAROUTER_HTTP_PORT']}/slack/events"


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    log: Path

    @classmethod
    async def start(
        cls, env: dict[str, str], log: Path, *, ready_within: float = 90, stdin_open: bool = False
    ) -> ServeProcess:
        """Starts `serve` with exactly `env` (plus INFO logging, to see "serving") and waits until ready.
        `stdin_open` keeps a pipe on its stdin, for the console, which stops at end of input."""
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli",
                "serve",
                env={**env, "METAROUTER_LOG_LEVEL": env.get("METAROUTER_LOG_LEVEL", "INFO")},
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE if stdin_open else asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self = cls(proc, log)
        deadline = time.monotonic() + ready_within
        while b"serving" not in log.read_bytes():  # noqa: ASYNC240 - a small local file
            if proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"serve did not become ready:\n{log.read_text()[-3000:]}")  # noqa: ASYNC240
            await asyncio.sleep(0.1)  # the log file is the only sign of readiness from outside
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self._status("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self._status("VmHWM") / 1024

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_s(self) -> float:
        # fields 14 and 15 of /proc/PID/stat (after the parenthesised name): user and system ticks
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    async def kill(self) -> None:
        """SIGKILL: no shutdown at all, as if the machine died."""
        self.proc.kill()
        await self.proc.wait()

    async def stop(self, within: float = 40) -> int:
        """SIGTERM, then the exit code (SIGKILL and -9 if it does not stop in time)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -9
