"""`metarouter serve` as a real process against the Slack and Ollama doubles, for faults that need
one: a kill, a start-up without a database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def serve_env(data_dir: Path, slack_double: Any, ollama_url: str, **settings: str) -> dict[str, str]:
    """The environment of a serve process on Slack Socket Mode; `settings` are METAROUTER_* or others."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAROUTER_", "SLACK_", "OPENAI_"))}
    env.pop("DATABASE_URL", None)
    return env | {
        "METAROUTER_DATA_DIR": str(data_dir),
        "METAROUTER_HTTP_PORT": "0",
        "METAROUTER_SLACK_UPDATE_INTERVAL_S": "0.05",
        "HF_HUB_OFFLINE": "1",
        "OLLAMA_HOST": ollama_url,
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_APP_TOKEN": "xapp-test-token",
        "SLACK_API_URL": slack_double.api_url,
        **settings,
    }


async def serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "serve",
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
