"""Loopback Ollama double (see PROTOCOLS.md section 5).

A real aiohttp server on 127.0.0.1 that the unmodified `ollama` client talks to. It keeps the state a
test cares about (models present, loaded, pullable), records every request, and can be told to fail
the ways a real server does: an HTTP error on a route, an `{"error": ...}` line mid-stream, a stall,
a connection cut mid-stream (`drop_after_tokens`), or no server at all (`await double.stop()`).

    async def test_x(ollama_double):
        ollama_double.add_model("llama3.2:3b", size_gb=2.0)
        ollama_double.reply = "Hi there"
        client = ollama.AsyncClient(host=ollama_double.url, timeout=5)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from core.types import normalise_model_name

Reply = str | Callable[[list[dict[str, Any]]], str]


@dataclass
class FakeModel:
    name: str
    size: int  # bytes
    parameter_size: str = "7B"
    family: str = "llama"
    context_length: int = 8192

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": "2026-11-01T10:00:00.000000Z",
            "size": self.size,
            "digest": self.digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": self.family,
                "families": [self.family],
                "parameter_size": self.parameter_size,
                "quantization_level": "Q4_K_M",
            },
        }


@dataclass
class Recorded:
    method: str
    path: str
    body: Any  # parsed JSON, or None


@dataclass
class _Failure:
    status: int
    error: str
    times: int | None  # None: every time


@dataclass
class OllamaDouble:
    reply: Reply = "Hello from the Ollama double."
    token_delay: float = 0.0  # seconds between streamed chat chunks
    pull_delay: float = 0.0  # seconds between pull progress lines
    # mid-stream faults on /api/chat, counted in tokens already sent
    error_after_tokens: int | None = None
    stream_error: str = "llama runner process has terminated: exit status 2"
    stall_after_tokens: int | None = None
    drop_after_tokens: int | None = None  # the connection is cut, as when the host goes down
    version: str = "0.6.8"

    models: dict[str, FakeModel] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    registry: dict[str, int] = field(default_factory=dict)  # pullable name -> size in bytes
    requests: list[Recorded] = field(default_factory=list)
    max_concurrent_chats: int = 0

    _failures: dict[str, _Failure] = field(default_factory=dict)
    _in_flight: int = 0
    _runner: web.AppRunner | None = None
    _port: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> OllamaDouble:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_delete("/api/delete", self._delete)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._stopping = asyncio.Event()
        return self

    async def stop(self) -> None:
        """Close the port: the client then gets connection refused. Releases any stalled stream."""
        if self._runner is None:
            return
        self._stopping.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- state and fault injection ----------------------------------------------------------------
    def add_model(
        self,
        name: str,
        *,
        size_gb: float = 4.0,
        parameter_size: str = "7B",
        family: str = "llama",
        context_length: int = 8192,
        loaded: bool = False,
    ) -> FakeModel:
        name = normalise_model_name(name)
        model = FakeModel(name, int(size_gb * 1e9), parameter_size, family, context_length)
        self.models[name] = model
        if loaded:
            self.loaded.add(name)
        return model

    def add_pullable(self, name: str, size_gb: float) -> None:
        self.registry[normalise_model_name(name)] = int(size_gb * 1e9)

    def fail(
        self, path: str, status: int = 500, error: str = "internal error", times: int | None = None
    ) -> None:
        """Answer `path` with HTTP `status` and `{"error": error}`, `times` times (None: always)."""
        self._failures[path] = _Failure(status, error, times)

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # --- plumbing -------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body: Any = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return web.json_response({"error": "invalid JSON body"}, status=400)
        self.requests.append(Recorded(request.method, request.path, body))
        failure = self._failures.get(request.path)
        if failure is not None and failure.times != 0:
            if failure.times is not None:
                failure.times -= 1
            return web.json_response({"error": failure.error}, status=failure.status)
        return await handler(request)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        return json.loads(raw) if raw else {}

    async def _ndjson(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, obj: dict[str, Any]) -> bool:
        """False once the client has gone away (it closes the connection when it gives up)."""
        try:
            await resp.write(json.dumps(obj).encode() + b"\n")
        except ConnectionError:
            return False
        return True

    # --- endpoints ------------------------------------------------------------------------------
    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [m.tag_entry() for m in self.models.values()]})

    async def _ps(self, request: web.Request) -> web.Response:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        running = []
        for name in sorted(self.loaded):
            if name in self.models:
                m = self.models[name]
                entry = m.tag_entry() | {
                    "expires_at": expires,
                    "size_vram": m.size,
                    "context_length": m.context_length,
                }
                running.append(entry)
        return web.json_response({"models": running})

    def _missing(self, name: str) -> web.Response:
        return web.json_response({"error": f'model "{name}" not found, try pulling it first'}, status=404)

    async def _show(self, request: web.Request) -> web.Response:
        name = normalise_model_name((await self._body(request)).get("model", ""))
        m = self.models.get(name)
        if m is None:
            return self._missing(name)
        return web.json_response(
            {
                "modelfile": f"FROM {m.name}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": m.tag_entry()["details"],
                "model_info": {
                    "general.architecture": m.family,
                    f"{m.family}.context_length": m.context_length,
                },
                "capabilities": ["completion"],
                "modified_at": "2026-11-01T10:00:00.000000Z",
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        name = normalise_model_name((await self._body(request)).get("model", ""))
        if self.models.pop(name, None) is None:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        self.loaded.discard(name)
        return web.Response(status=200)

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = normalise_model_name(body.get("model", ""))
        size = self.registry.get(name)
        if not body.get("stream", True):
            if size is None:
                return web.json_response({"error": "pull model manifest: file does not exist"}, status=500)
            self.add_model(name, size_gb=size / 1e9)
            return web.json_response({"status": "success"})

        resp = await self._ndjson(request)
        if not await self._send(resp, {"status": "pulling manifest"}):
            return resp
        if size is None:
            await self._send(resp, {"error": "pull model manifest: file does not exist"})
            return resp
        digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        status = f"pulling {digest[7:19]}"
        steps = 4
        await asyncio.sleep(self.pull_delay)
        if not await self._send(resp, {"status": status, "digest": digest, "total": size}):
            return resp
        for i in range(1, steps + 1):
            await asyncio.sleep(self.pull_delay)
            line = {"status": status, "digest": digest, "total": size, "completed": size * i // steps}
            if not await self._send(resp, line):
                return resp
        for final in ("verifying sha256 digest", "writing manifest", "success"):
            await asyncio.sleep(self.pull_delay)
            if final == "success":
                self.add_model(name, size_gb=size / 1e9)
            if not await self._send(resp, {"status": final}):
                return resp
        return resp

    def _reply_text(self, messages: list[dict[str, Any]]) -> str:
        return self.reply(messages) if callable(self.reply) else self.reply

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        name = normalise_model_name(body.get("model", ""))
        if name not in self.models:
            return self._missing(name)
        self._in_flight += 1
        self.max_concurrent_chats = max(self.max_concurrent_chats, self._in_flight)
        try:
            return await self._answer(request, name, body)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.Request, name: str, body: dict[str, Any]) -> web.StreamResponse:
        started = time.monotonic_ns()
        messages = body.get("messages") or []
        load_ns = 0 if name in self.loaded else 1_500_000
        self.loaded.add(name)
        text = self._reply_text(messages)
        tokens = re.findall(r"\S+\s*|\s+", text)
        prompt_tokens = sum(len(m.get("content") or "") for m in messages) // 4 + 1
        created = datetime.now(UTC).isoformat().replace("+00:00", "Z")

        def final() -> dict[str, Any]:
            total = max(time.monotonic_ns() - started, 1)
            return {
                "model": name,
                "created_at": created,
                "message": {"role": "assistant", "content": "" if body.get("stream", True) else text},
                "done": True,
                "done_reason": "stop",
                "total_duration": total + load_ns,
                "load_duration": load_ns,
                "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": 1_000_000,
                "eval_count": len(tokens),
                "eval_duration": total,
            }

        if not body.get("stream", True):
            await asyncio.sleep(self.token_delay * len(tokens))
            return web.json_response(final())

        resp = await self._ndjson(request)
        for i, piece in enumerate(tokens):
            if self.error_after_tokens is not None and i == self.error_after_tokens:
                await self._send(resp, {"error": self.stream_error})
                return resp
            if self.drop_after_tokens is not None and i == self.drop_after_tokens:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if self.stall_after_tokens is not None and i == self.stall_after_tokens:
                await self._stopping.wait()  # hold the connection open, sending nothing
                return resp
            await asyncio.sleep(self.token_delay)
            chunk = {
                "model": name,
                "created_at": created,
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            if not await self._send(resp, chunk):
                return resp
        await self._send(resp, final())
        return resp


@pytest.fixture
async def ollama_factory() -> AsyncIterator[Callable[..., Awaitable[OllamaDouble]]]:
    """Start as many doubles as a test needs: `a = await ollama_factory(reply="...")`."""
    started: list[OllamaDouble] = []

    async def make(**kwargs: Any) -> OllamaDouble:
        double = await OllamaDouble(**kwargs).start()
        started.append(double)
        return double

    yield make
    for double in started:
        await double.stop()


@pytest.fixture
async def ollama_double(ollama_factory: Callable[..., Awaitable[OllamaDouble]]) -> OllamaDouble:
    return await ollama_factory()
