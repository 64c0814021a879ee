"""Privacy before the meta-router: what the OpenAI double receives, what the user is told, what the
database keeps. Plus property-based tests of the redactor and the router's answer parser."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import App, build_app
from bot.common.render import decision_details, disclosure_line
from core.privacy import Redactor, local_only_for
from core.routing.meta import MetaCallFailure, MetaRouter
from core.types import Decision, Disclosure, Turn
from tests.core.test_service import RecordingReply, message
from tests.doubles.openai import Reply as OpenAIReply

# Realistic-looking secrets of each kind (fake: none of them is live), with the placeholder they get.
SECRETS = [
    ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f", "[SECRET:openai]"),
    ("sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe-AbCdEf", "[SECRET:anthropic]"),
    ("AKIAIOSFODNN7EXAMPLE", "[SECRET:aws]"),
    ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "[SECRET:github]"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCD", "[SECRET:github]"),
    ("xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "[SECRET:slack]"),
    ("xapp-1-A0123456789-1234567890123-abcdef0123456789", "[SECRET:slack]"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "[SECRET:stripe]"),
    ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "[SECRET:google]"),
    (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "[SECRET:jwt]",
    ),
    ("alice.martin@example.com", "[EMAIL]"),
    ("4111 1111 1111 1111", "[CARD]"),
    ("5500-0000-0000-0004", "[CARD]"),
    ("+44 20 7946 0958", "[PHONE]"),
    ("(415) 555-0132", "[PHONE]"),
    ("DE89 3704 0044 0532 0130 00", "[IBAN]"),
]
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\nq0cJ1x2\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(("secret", "placeholder"), SECRETS, ids=[p for _, p in SECRETS])
def test_each_kind_of_secret_becomes_its_placeholder(secret: str, placeholder: str) -> None:
    out = Redactor().redact(f"hey, here it is: {secret} — does that work?")
    assert out.text == f"hey, here it is: {placeholder} — does that work?"
    assert out.count == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "db url postgres://app:s3cr3t-Pw@db.internal:5432/app",
            "postgres://app:[SECRET:password]@db.internal",
        ),
        ('config: {"password": "hunter2!x"}', '"password": "[SECRET:password]"'),
        ("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "KEY=[SECRET:secret]"),
        ("curl -H 'Authorization: Bearer abcdef0123456789abcdef'", "Bearer [SECRET:token]"),
        (f"my key:\n{PRIVATE_KEY}\nthanks", "my key:\n[SECRET:private_key]\nthanks"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "[SECRET:private_key]"),
    ],
)
def test_passwords_assignments_and_key_blocks_are_redacted(text: str, expected: str) -> None:
    assert expected in Redactor().redact(text).text


@pytest.mark.parametrize(
    "text",
    [
        "def login(user: str, password: str) -> bool:",
        "password = os.environ['DB_PASSWORD']",
        "upgrade from 1.2.3 to 2.0.1 on 192.168.1.10 before 2024-01-15",
        "the invoice total is 1234567890123 cents",  # not Luhn-valid: not a card
        "how do I compute 3.14159 * 2 ** 32 in numpy?",
        "use the token bucket algorithm for rate limits",
        "port 5432, pid 48213, commit 8965e0c",
    ],
)
def test_ordinary_chat_and_code_pass_unchanged(text: str) -> None:
    assert Redactor().redact(text).text == text


def test_configured_patterns_get_their_own_placeholder(make_settings) -> None:
    s = make_settings(redact_patterns={"ticket": r"TCK-\d{6}"})
    assert Redactor.from_settings(s).redact("see TCK-123456 please").text == "see [TICKET] please"


def test_local_only_places_come_from_settings(make_settings) -> None:
    s = make_settings(local_only_channels="C1, C2", local_only_workspaces=["T9"])
    assert local_only_for(s, "C2", None) and local_only_for(s, "Cx", "T9")
    assert not local_only_for(s, "Cx", "T1", None)


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILLER = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200)


@PROPS
@given(st.text(max_size=2000))
def test_redactor_never_raises_and_is_idempotent(text: str) -> None:
    r = Redactor()
    once = r.redact(text)
    twice = r.redact(once.text)
    assert twice.text == once.text and twice.count == 0


@PROPS
@given(FILLER, st.sampled_from(SECRETS), FILLER)
def test_a_planted_secret_never_survives(before: str, secret: tuple[str, str], after: str) -> None:
    value, _ = secret
    # a space either side: glued to random letters the value would be another token altogether
    out = Redactor().redact(f"{before} {value} {after}").text
    assert value not in out


def _completion(content: object, finish_reason: str = "stop") -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": content},
                }
            ],
        }
    )


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=20), kids, max_size=8),
    max_leaves=20,
)
VALID = {
    "query_type": "coding",
    "complexity": "simple",
    "specializations_needed": [],
    "reasoning": "r",
    "recommended_model": "m:1b",
    "confidence": 0.9,
    "alternatives": [],
    "download_if_needed": False,
}


@PROPS
@given(
    st.one_of(
        st.text(max_size=300),
        JSONISH.map(json.dumps),
        st.dictionaries(st.sampled_from(list(VALID)), JSONISH).map(lambda d: json.dumps({**VALID, **d})),
    )
)
def test_router_answer_parser_fails_only_with_its_failure_type(content: str) -> None:
    router = MetaRouter.__new__(MetaRouter)  # the parser needs no client
    try:
        d = router._parse(_completion(content), 0.001)
    except MetaCallFailure as exc:
        assert exc.reason == "invalid_response" and exc.cost_usd == 0.001
    else:
        assert isinstance(d, Decision) and 0 <= d.confidence <= 1


def test_decision_json_keeps_exactly_the_contract_keys() -> None:
    d = Decision(
        recommended_model="m:1b",
        confidence=0.5,
        reasoning="r",
        query_type="general",
        complexity="simple",
        source="openai",
        disclosure=Disclosure(query_redactions=2, earlier_messages=3, past_questions=2),
    )
    assert "disclosure" not in json.loads(d.model_dump_json())
    assert Decision.model_validate_json(d.model_dump_json()) == d


@pytest.mark.parametrize(
    ("sent", "line"),
    [
        (Disclosure(past_questions=1), "the question and 1 similar past question"),
        (
            Disclosure(query_redactions=1, earlier_messages=2, past_questions=3),
            "the question (1 item redacted), 2 earlier messages and 3 similar past questions",
        ),
        (Disclosure(earlier_messages=1), "the question and 1 earlier message"),
    ],
)
def test_the_details_say_when_similar_past_questions_were_sent(sent: Disclosure, line: str) -> None:
    d = Decision(
        recommended_model="m:1b",
        confidence=0.5,
        reasoning="r",
        query_type="general",
        complexity="simple",
        source="openai",
        disclosure=sent,
    )
    assert disclosure_line(d) == f"Sent to the meta-router: {line}"


# --- through the service, as a user sees it -------------------------------------------------------


@pytest.fixture
async def app(core_app):
    return await core_app(local_only_channels=["CPRIV"], local_only_workspaces=["TPRIV"])


async def test_the_router_receives_redacted_text_and_a_bounded_thread(app: App, openai_double) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="qwen2.5-coder:7b"))
    history = tuple(
        Turn(role="user" if i % 2 == 0 else "assistant", content=f"message {i} " + "x" * 500)
        for i in range(10)
    ) + (Turn(role="user", content="mail the report to carol@example.org", author="Carol"),)
    question = (
        "why does `git push` fail with token ghp_16C7e42F292c6912E7710c838347Ae178B4a for bob@example.com?"
    )
    answer = await app.service.handle(message(question, history=history), RecordingReply())

    assert openai_double.calls == 1
    prompt = openai_double.requests[0].prompt
    assert "ghp_16C7e42F292c6912E7710c838347Ae178B4a" not in prompt and "example.com" not in prompt
    assert "carol@example.org" not in prompt
    assert "token [SECRET:github] for [EMAIL]?" in prompt
    assert "mail the report to [EMAIL]" in prompt
    # only the last four earlier messages, each clipped
    assert "message 6 " not in prompt and "message 7 " in prompt
    assert max(len(line) for line in prompt.splitlines() if line.startswith("[")) < 260
    assert answer is not None and answer.decision is not None
    assert (
        "Sent to the meta-router: the question (2 items redacted) and 4 earlier messages (1 item redacted)"
        in decision_details(answer.decision)
    )


async def test_a_long_question_sends_only_its_start(app: App, openai_double) -> None:
    openai_double.push(OpenAIReply.decision(recommended_model="llama3.2:3b"))
    answer = await app.service.handle(message("explain this log " + "line " * 5000), RecordingReply())
    assert len(openai_double.requests[0].prompt) < 6000
    assert answer is not None and answer.decision is not None
    assert "Sent to the meta-router: the start of the question" in decision_details(answer.decision)


@pytest.mark.parametrize("where", [{"channel_id": "CPRIV"}, {"workspace_id": "TPRIV"}])
async def test_local_only_channels_and_workspaces_send_nothing(app: App, openai_double, where) -> None:
    question = message("what is 2+2? my card is 4111 1111 1111 1111", **where)
    answer = await app.service.handle(question, RecordingReply())
    assert openai_double.calls == 0
    assert answer is not None and answer.decision is not None and answer.error is None
    assert answer.decision.fallback_reason == "privacy"
    assert "Sent to the meta-router: nothing (local-only channel)" in decision_details(answer.decision)


async def test_route_in_a_local_only_channel_sends_nothing(app: App, openai_double) -> None:
    from core.types import RouteRequest

    d = await app.service.route(RouteRequest(query="hello", channel_id="CPRIV"))
    assert openai_double.calls == 0 and d.fallback_reason == "privacy"


async def test_without_question_text_the_database_keeps_no_text(
    make_settings, db_url, ollama_double, openai_double
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "The answer mentions ANSWER-MARKER-4242 once."
    settings = make_settings(
        database_url=db_url,
        ollama_host=ollama_double.url,
        openai_api_key="sk-test-key-123456",
        openai_base_url=openai_double.base_url,
        meta_router_enabled=True,
        use_local_for_simple_queries=False,
        store_question_text=False,
    )
    reasoning = "The user asks what QUESTION-MARKER-7781 means: general."
    openai_double.push(OpenAIReply.decision(recommended_model="llama3.2:3b", reasoning=reasoning))
    app = await build_app(settings)
    try:
        history = (Turn(role="user", content="earlier THREAD-MARKER-5151 message", author="Ann"),)
        answer = await app.service.handle(
            message("what does QUESTION-MARKER-7781 mean?", history=history), RecordingReply()
        )
        assert answer is not None and answer.error is None and answer.answer_id is not None
    finally:
        await app.close()

    engine = create_async_engine(settings.db_url)
    try:
        async with engine.connect() as conn:
            meta = MetaData()
            await conn.run_sync(meta.reflect)
            dump = []
            for table in meta.sorted_tables:
                dump += [repr(tuple(row)) for row in (await conn.execute(select(table))).all()]
    finally:
        await engine.dispose()
    everything = "\n".join(dump)
    assert "llama3.2:3b" in everything  # the request and its answer were recorded
    for marker in ("QUESTION-MARKER-7781", "THREAD-MARKER-5151", "ANSWER-MARKER-4242"):
        assert marker.lower() not in everything.lower()


def test_redaction_is_fast_enough_to_run_on_every_question() -> None:
    # not a timing test: a guard that a pathological input cannot make a regex backtrack forever
    rnd = random.Random(6)
    text = "".join(rnd.choice("a1-@.:/ =_") for _ in range(20_000))
    Redactor().redact(text)
