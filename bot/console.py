"""The terminal adapter: chat on stdin/stdout, the routing line after each answer, ratings by command.

Used by `metarouter serve` when no platform credentials are set, and by `metarouter ask`.

Admin: the console is the operator's own terminal, on the machine that runs the bot and its Ollama
server, so whoever types here is the admin: they can pull or remove a model with `ollama` directly.
The console therefore has no admin commands of its own (`/pull` and `/remove` are unknown here), and
what is typed as a question is only ever a question: asking for a model in it pulls nothing, exactly
as on Slack and Discord.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable
from typing import TextIO

from bot.common.render import decision_details, decision_summary
from core.chat import FinalAnswer, IncomingMessage
from core.service import ChatService
from core.types import RouteRequest, Turn

HELP = """Type a question and press Enter. Commands:
  /good, /bad       rate the last answer (the router learns from it)
  /why              show the full routing decision of the last answer
  /route QUESTION   show the decision for a question without answering it
  /models           list the models
  /new              start a new conversation
  /quit             leave (Ctrl-D works too)"""


class ConsoleReply:
    """Streams into the terminal: status lines are replaced in place, tokens are printed as they come."""

    def __init__(self, out: TextIO, *, show_status: bool = True) -> None:
        self.out = out
        self.show_status = show_status and out.isatty()
        self.printed = 0
        self._status_shown = False

    async def status(self, text: str) -> None:
        if self.show_status and self.printed == 0:
            self.out.write("\r\033[K" + text)
            self.out.flush()
            self._status_shown = True

    async def stream(self, text: str) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False
        self.out.write(text[self.printed :])
        self.out.flush()
        self.printed = len(text)

    async def finish(self, answer: FinalAnswer) -> list[str]:
        await self.stream(answer.text)
        if self._status_shown:
            self.out.write("\r\033[K")
        if answer.text and not answer.text.endswith("\n"):
            self.out.write("\n")
        if answer.error:
            self.out.write(("[incomplete] " if answer.text else "") + answer.error + "\n")
        for note in answer.notes:
            self.out.write(f"({note})\n")
        if answer.decision is not None:
            self.out.write(f"-- {decision_summary(answer.decision)}\n")
        self.out.flush()
        return [str(answer.answer_id)] if answer.answer_id is not None else []


class Console:
    def __init__(self, service: ChatService, out: TextIO = sys.stdout) -> None:
        self.service = service
        self.out = out
        self.history: list[Turn] = []
        self.last: FinalAnswer | None = None
        self.thread = 1

    async def ask(self, text: str) -> FinalAnswer | None:
        msg = IncomingMessage(
            platform="console",
            channel_id="console",
            thread_id=str(self.thread),
            user_id="console",
            text=text,
            history=tuple(self.history),
            author_name=None,
        )
        answer = await self.service.handle(msg, ConsoleReply(self.out))
        if answer is not None:
            self.last = answer
            if answer.text:
                self.history += [Turn(role="user", content=text), Turn(role="assistant", content=answer.text)]
        return answer

    async def command(self, line: str) -> bool:
        """Handles one input line; False means quit."""
        cmd, _, arg = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/help":
            self.out.write(HELP + "\n")
        elif cmd in ("/good", "/bad"):
            if self.last is None or self.last.answer_id is None:
                self.out.write("Nothing to rate yet.\n")
            else:
                rating = 1 if cmd == "/good" else -1
                await self.service.rate_answer(self.last.answer_id, "console", rating, cmd[1:])
                self.out.write("Thanks, rating saved.\n")
        elif cmd == "/why":
            if self.last is None or self.last.decision is None:
                self.out.write("No answer yet.\n")
            else:
                self.out.write("\n".join(decision_details(self.last.decision)) + "\n")
        elif cmd == "/route":
            if not arg.strip():
                self.out.write("Usage: /route QUESTION\n")
            else:
                d = await self.service.route(RouteRequest(query=arg, history=tuple(self.history)))
                self.out.write(decision_summary(d) + "\n" + "\n".join(decision_details(d)) + "\n")
        elif cmd == "/models":
            inv = await self.service.models()
            for m in inv.models:
                where = "local" if m.local else "download"
                self.out.write(
                    f"{m.name:28} {where:8} {m.size_gb or 0:6.1f} GB  {', '.join(m.specializations)}\n"
                )
        elif cmd == "/new":
            self.history.clear()
            self.thread += 1
            self.out.write("New conversation.\n")
        else:
            self.out.write(f"Unknown command {cmd}. /help lists them.\n")
        self.out.flush()
        return True

    async def run(self, stdin: TextIO = sys.stdin, stop: asyncio.Event | None = None) -> None:
        """Reads lines until EOF, /quit or `stop`; an answer in progress is finished first."""
        stop = stop or asyncio.Event()
        interactive = stdin.isatty()
        if interactive:
            self.out.write("MetaRouter console. /help for commands.\n")
        lines = _lines(stdin)
        while True:
            if interactive:
                self.out.write("> ")
                self.out.flush()
            line = await _first(lines.get(), stop)
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await self.command(line):
                    break
                continue
            await self.ask(line)


async def _first(get: Awaitable[str | None], stop: asyncio.Event) -> str | None:
    """The next line, or None once `stop` is set."""
    getter = asyncio.ensure_future(get)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for t in (getter, stopper):
        if t not in done:
            t.cancel()
    return getter.result() if getter in done and not stop.is_set() else None


def _lines(stdin: TextIO) -> asyncio.Queue[str | None]:
    """Stdin read by a daemon thread: a blocking readline must not hold up shutdown on SIGTERM,
    and add_reader does not work on regular files (piped input in tests)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in iter(stdin.readline, ""):
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the loop closed first: the process is exiting
            pass

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    return queue
