"""A real `python -m bot.cli serve` child process, for replica tests and benchmarks.

Its log goes to a file (a pipe nobody reads would block it after 64 KB); it is ready once it logs
"serving"; /proc gives its RSS, peak RSS, CPU seconds and open file descriptors (Linux only).

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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    log: Path

    @classmethod
    async def start(cls, env: dict[str, str], log: Path, *, ready_within: float = 90) -> ServeProcess:
        """Starts `serve` with exactly `env` (plus INFO logging, to see "serving") and waits until ready."""
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli",
                "serve",
                env={**env, "METAROUTER_LOG_LEVEL": env.get("METAROUTER_LOG_LEVEL", "INFO")},
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
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
