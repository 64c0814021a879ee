"""Loopback OpenAI chat-completions double (see PROTOCOLS.md section 6).

A real aiohttp server on 127.0.0.1 that the unmodified `openai.AsyncOpenAI` talks to. Each request
takes the next scripted `Reply` (or the double's `responder` when the queue is empty), and every
request is recorded with its headers and body so a test can read the prompt that was sent.

    async def test_x(openai_double):
        openai_double.push(Reply.rate_limited("0.2"), Reply.decision(confidence=0.9))
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=openai_double.base_url)

Like the real API in strict mode, the double rejects (HTTP 400) a `json_schema` response format that
strict mode does not accept, and it holds scripted answers to the request's schema: a test that
scripts an answer the real API could never send must say so with `raw=True` (the behaviour of a
non-strict OpenAI-compatible server). Either mistake is reported in `problems`, and the fixture
fails the test on it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from aiohttp import web

DEFAULT_USAGE = {"prompt_tokens": 900, "completion_tokens": 80}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when the body was not JSON

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def prompt(self) -> str:
        """Every message's text, joined: what the router model would read."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)

    @property
    def schema(self) -> dict[str, Any] | None:
        rf = self.body.get("response_format") if isinstance(self.body, dict) else None
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            return rf.get("json_schema", {}).get("schema")
        return None

    def model_enum(self) -> list[str]:
        schema = self.schema or {}
        return list(schema.get("properties", {}).get("recommended_model", {}).get("enum", []))


@dataclass
class Reply:
    """One scripted answer. Build it with the class methods; they name the cases a router must survive."""

    status: int = 200
    content: str | None = None
    answer: dict[str, Any] | None = None  # fields over a valid decision derived from the request
    finish_reason: str = "stop"
    refusal: str | None = None
    usage: dict[str, int] | None = field(default_factory=lambda: dict(DEFAULT_USAGE))
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    delay_s: float = 0.0
    model: str = "gpt-4o-mini-2024-07-18"
    raw: bool = False  # send content unchecked, as a non-strict compatible server might
    page: str | None = None  # an HTML page instead of any API answer (a proxy or captive portal)

    @classmethod
    def decision(cls, **fields: Any) -> Reply:
        """A valid structured decision; unspecified fields come from the request (first model in its enum).
        `usage=None` leaves usage out; `delay_s` delays the answer."""
        reply_keys = {"usage", "delay_s", "model", "raw", "headers"}
        kwargs = {k: fields.pop(k) for k in list(fields) if k in reply_keys}
        return cls(answer=fields, **kwargs)

    @classmethod
    def unknown_model(cls, name: str = "ghost-model:13b", alternatives: list[str] | None = None) -> Reply:
        return cls(answer={"recommended_model": name, "alternatives": alternatives or []}, raw=True)

    @classmethod
    def malformed(cls) -> Reply:
        return cls(content='{"recommended_model": "llama3.2:3b", "confidence": 0.9,', raw=True)

    @classmethod
    def schema_violation(cls, **fields: Any) -> Reply:
        return cls(answer=fields or {"query_type": "poetry", "mood": "whimsical"}, raw=True)

    @classmethod
    def truncated(cls) -> Reply:
        return cls(content='{"query_type": "coding", "complexity": "moder', finish_reason="length")

    @classmethod
    def refused(cls) -> Reply:
        return cls(content=None, refusal="I'm sorry, I can't help with that.")

    @classmethod
    def html_page(cls, status: int = 200) -> Reply:
        """What a proxy in front of the API sends when the API is not what answers."""
        return cls(status=status, page="<html><body><h1>Bad Gateway</h1>nginx</body></html>")

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls.http_error(
            429, "Rate limit reached for gpt-4o-mini", "rate_limit_exceeded", headers=headers
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        return cls.http_error(status, "The server had an error while processing your request.", None)

    @classmethod
    def http_error(
        cls, status: int, message: str, code: str | None, *, headers: dict[str, str] | None = None
    ) -> Reply:
        kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        error = {"message": message, "type": kind, "param": None, "code": code}
        return cls(status=status, error=error, headers=headers or {})


def _valid_decision(req: RecordedRequest) -> dict[str, Any]:
    names = req.model_enum() or ["llama3.2:3b"]
    return {
        "query_type": "general",
        "complexity": "simple",
        "specializations_needed": [],
        "reasoning": "A general question; a small local model answers it well.",
        "recommended_model": names[0],
        "confidence": 0.9,
        "alternatives": names[1:2],
        "download_if_needed": False,
    }


def strict_schema_problems(schema: Any, where: str = "$") -> list[str]:
    """What the real API rejects in strict mode: open objects and optional properties."""
    if not isinstance(schema, dict):
        return []
    problems = []
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties must be false")
        if sorted(schema.get("required", [])) != sorted(props):
            problems.append(f"{where}: every property must be required")
        for name, sub in props.items():
            problems += strict_schema_problems(sub, f"{where}.{name}")
    if "items" in schema:
        problems += strict_schema_problems(schema["items"], f"{where}[]")
    return problems


@dataclass
class OpenAIDouble:
    responder: Callable[[RecordedRequest], Reply] = field(default=lambda req: Reply.decision())
    require_structured: bool = True  # a request without a strict json_schema is a problem
    requests: list[RecordedRequest] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    _queue: deque[Reply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order; then `responder` answers."""
        self._queue.extend(replies)

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def start(self) -> OpenAIDouble:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._closing = asyncio.Event()
        return self

    async def stop(self) -> None:
        self._closing.set()  # releases delayed answers, so shutdown does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = RecordedRequest(request.method, request.path, dict(request.headers), body)
        self.requests.append(rec)

        problem = self._check_request(rec)
        if problem:
            self.problems.append(problem)
            return _error(400, problem, "invalid_request_error", None)

        reply = self._queue.popleft() if self._queue else self.responder(rec)
        if reply.delay_s:
            try:
                await asyncio.wait_for(self._closing.wait(), reply.delay_s)
            except TimeoutError:
                pass
        if reply.page is not None:
            return web.Response(text=reply.page, status=reply.status, content_type="text/html")
        if reply.status != 200:
            return _error(reply.status, **_unpack(reply.error), headers=reply.headers)

        content = reply.content
        if reply.answer is not None:
            content = json.dumps({**_valid_decision(rec), **reply.answer})
        if not reply.raw and reply.finish_reason == "stop" and content is not None and rec.schema:
            try:
                jsonschema.validate(json.loads(content), rec.schema)
            except (ValueError, jsonschema.ValidationError) as exc:
                self.problems.append(f"scripted content breaks the request's schema (use raw=True): {exc}")
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                    "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                }
            ],
        }
        if reply.usage is not None:
            u = reply.usage
            completion["usage"] = {
                **u,
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            }
        return web.json_response(completion, headers=reply.headers)

    def _check_request(self, rec: RecordedRequest) -> str | None:
        body = rec.body
        if not isinstance(body, dict) or "model" not in body or not body.get("messages"):
            return "request needs a JSON body with model and messages"
        rf = body.get("response_format")
        if rf is None:
            return "request carries no response_format" if self.require_structured else None
        js = rf.get("json_schema") if isinstance(rf, dict) else None
        if (
            rf.get("type") != "json_schema"
            or not isinstance(js, dict)
            or not isinstance(js.get("schema"), dict)
        ):
            return "response_format must be json_schema with a schema"
        if js.get("strict") is not True:
            return "json_schema.strict must be true"
        try:
            jsonschema.Draft202012Validator.check_schema(js["schema"])
        except jsonschema.SchemaError as exc:
            return f"invalid JSON schema: {exc.message}"
        problems = strict_schema_problems(js["schema"])
        return "; ".join(problems) or None


def _unpack(error: dict[str, Any] | None) -> dict[str, Any]:
    error = error or {"message": "error", "type": "server_error", "code": None}
    return {"message": error["message"], "kind": error["type"], "code": error.get("code")}


def _error(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers or {})


@pytest.fixture
async def openai_double() -> AsyncIterator[OpenAIDouble]:
    double = await OpenAIDouble().start()
    try:
        yield double
    finally:
        await double.stop()
    assert not double.problems, double.problems
