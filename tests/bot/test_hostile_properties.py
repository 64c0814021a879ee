"""Property-based tests of the text an adapter shows: the fence-safe splitter and Slack's mrkdwn.

Whatever a model writes (deeply nested markdown, stray fences, NUL, emoji, 10 kB lines), the pieces
fit, fences balance, nothing is lost, and the converter never raises.

The second half feeds the hostile inputs of issue 6 (tests/faults/hostile.py: empty, whitespace,
emoji, 100,000 characters, binary and invalid Unicode, nested markdown, router-aimed injection) to the
splitter, the converter, the redactor, the meta-router's answer parser and the prompt guard, as seeds
and mixed into generated text. Example counts stay modest: CI runs these on every push.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from bot.common.render import decision_details
from bot.common.splitting import MIN_LIMIT, split_text
from bot.discord.render import MESSAGE_LIMIT
from bot.slack.mrkdwn import escape, to_mrkdwn
from bot.slack.render import Footer, pack_footer, unpack_footer
from bot.slack.reply import render_text
from core.config import DEFAULT_SYSTEM_PROMPT
from core.errors import MetaRouterFailure
from core.privacy import Redactor
from core.prompt_guard import PromptGuard
from core.routing.meta import SYSTEM_PROMPT, MetaRouter
from core.types import QUERY_TYPES, Decision
from tests.faults.hostile import HOSTILE, leaked

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.M)

# Lines that stress markdown handling, mixed with arbitrary text.
MARKDOWN_LINES = st.one_of(
    st.sampled_from(
        [
            "```",
            "```python",
            "~~~",
            "````",
            "# heading",
            "> > > > quoted deeply",
            "- - - - - nested bullets",
            "| a | b |",
            "***bold italic***",
            "**bold _italic ~~struck `code` ~~ _ **",
            "[link](https://example.com)",
            "<!channel> @here",
            "",
            "    indented code",
            "\x00",
            "😀" * 30,
        ]
    ),
    st.text(max_size=120),
    st.text(alphabet="`*_~>#-|[]() \n", max_size=80),
)
MARKDOWN = st.lists(MARKDOWN_LINES, max_size=40).map("\n".join)
LIMITS = st.integers(min_value=MIN_LIMIT, max_value=400)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def content(text: str) -> str:
    """What a reader must find across the pieces: every non-fence character, whitespace aside."""
    kept = [line for line in text.split("\n") if not FENCE.match(line)]
    return re.sub(r"\s+", "", "".join(kept))


def balanced(piece: str) -> bool:
    """CommonMark's rule: a fence closes only with the same character, at least as long, and no info."""
    open_run = ""
    for line in piece.split("\n"):
        m = FENCE.match(line)
        if not m:
            continue
        run, info = m.group(1), m.group(2)
        if not open_run:
            if not (run[0] == "`" and "`" in info):
                open_run = run
        elif run[0] == open_run[0] and len(run) >= len(open_run) and not info.strip():
            open_run = ""
    return not open_run


@FAST
@given(MARKDOWN, LIMITS)
def test_split_pieces_fit_balance_and_keep_everything(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(len(p) <= limit for p in pieces)
    assert all(balanced(p) for p in pieces), pieces
    assert content("\n".join(pieces)) == content(text)


@FAST
@given(st.text(min_size=1, max_size=5000), LIMITS)
def test_split_of_one_long_unbroken_line_loses_nothing(word: str, limit: int) -> None:
    pieces = split_text(word, limit)
    assert all(len(p) <= limit for p in pieces)
    assert content("\n".join(pieces)) == content(word)


@FAST
@given(MARKDOWN)
def test_mrkdwn_never_raises_and_never_pages_the_channel(markdown: str) -> None:
    out = to_mrkdwn(markdown)
    assert isinstance(out, str)
    assert "<!channel" not in out and "<!here" not in out  # escaped to &lt;!channel&gt;


CODE_LINE = st.text(alphabet=st.characters(blacklist_characters="\n`~\x00"), max_size=60)


@FAST
@given(st.lists(CODE_LINE, min_size=1, max_size=15), MARKDOWN)
def test_mrkdwn_keeps_code_blocks_intact(code: list[str], around: str) -> None:
    body = "\n".join(code)
    markdown = f"Here:\n```python\n{body}\n```\n{around}"
    out = to_mrkdwn(markdown)
    assert f"```\n{escape(body)}\n```" in out


# --- the hostile inputs of issue 6 -------------------------------------------------------------------
HOSTILE_TEXTS = [h.text for h in HOSTILE]
HUGE = next(h.text for h in HOSTILE if h.id == "100k")
INVALID_UNICODE = st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape"))
ANY_CHARACTER = st.text(st.characters(exclude_categories=()), max_size=200)  # lone surrogates too
HOSTILE_TEXT = st.one_of(
    st.sampled_from(HOSTILE_TEXTS).map(lambda t: t[:3000]),  # the 100k one has its own @example
    INVALID_UNICODE,
    ANY_CHARACTER,
    MARKDOWN,
    st.lists(st.sampled_from(HOSTILE_TEXTS[:3] + ["🎉", "\x00", "\udc80", "```", "> > >"]), max_size=30).map(
        "".join
    ),
)
LONG_RUN = re.compile(rf"`{{{MIN_LIMIT - 1},}}|~{{{MIN_LIMIT - 1},}}")  # longer than a piece: see the xfail
MODEST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MODEST
@given(HOSTILE_TEXT.filter(lambda t: not LONG_RUN.search(t)), LIMITS)
@example(HUGE, MESSAGE_LIMIT)
@example(HOSTILE_TEXTS[5], 400)  # nested markdown
def test_hostile_text_splits_into_pieces_that_fit_balance_and_keep_everything(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(len(p) <= limit for p in pieces)
    assert all(balanced(p) for p in pieces)
    assert content("\n".join(pieces)) == content(text)


@pytest.mark.parametrize("run", ["```", "~~~~", "`" * 12])
def test_a_hard_cut_never_starts_a_piece_with_a_fence(run: str) -> None:
    line = "x" * 37 + run + "y" * 60  # one unbroken line: cut where it must, not where a fence would start
    pieces = split_text(line, MIN_LIMIT)
    assert all(balanced(p) for p in pieces), pieces
    assert content("".join(pieces)) == content(line)


@pytest.mark.xfail(strict=True, reason="known: a hard cut inside a backtick run starts a piece with a fence")
def test_a_backtick_run_longer_than_a_message_is_not_left_as_a_fence() -> None:
    # one unbroken line holding 150 backticks, cut at 40 characters: a piece that is nothing but
    # backticks reads as an unclosed code block. Shorter runs are cut around (found by this suite);
    # a run longer than a piece cannot be, short of changing the text.
    pieces = split_text(HOSTILE_TEXTS[5], MIN_LIMIT)
    assert all(balanced(p) for p in pieces)


@MODEST
@given(HOSTILE_TEXT)
@example(HUGE)
def test_hostile_text_renders_for_slack_without_paging_anyone(text: str) -> None:
    out = render_text(text + " <!channel> @here <!everyone>")
    assert isinstance(out, str)
    assert "<!channel" not in out and "<!here" not in out and "<!everyone" not in out
    assert re.search(r"(?<!\u200b)@here", out) is None


SECRET = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"


@MODEST
@given(HOSTILE_TEXT, HOSTILE_TEXT)
@example(HUGE[:5000], HUGE[:5000])
def test_a_secret_amid_hostile_text_never_reaches_the_router_and_redaction_is_stable(
    before: str, after: str
) -> None:
    r = Redactor()
    once = r.redact(f"{before} {SECRET} {after}")
    assert SECRET not in once.text
    assert r.redact(once.text).text == once.text  # idempotent, whatever the bytes around it


def _completion(content: str | None, finish_reason: str = "stop") -> ChatCompletion:
    message = {"role": "assistant", "content": content}
    return ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        }
    )


def _answer(**fields: object) -> str:
    base = {
        "query_type": "general",
        "complexity": "simple",
        "specializations_needed": [],
        "reasoning": "A general question.",
        "recommended_model": "llama3.2:3b",
        "confidence": 0.9,
        "alternatives": [],
        "download_if_needed": False,
    }
    return json.dumps(base | fields)


@MODEST
@given(
    st.one_of(
        HOSTILE_TEXT,  # as the whole answer
        st.builds(lambda t: _answer(reasoning=t), HOSTILE_TEXT),
        st.builds(lambda t: _answer(recommended_model=t, alternatives=[t, t]), HOSTILE_TEXT),
        st.builds(lambda t: _answer(query_type=t), HOSTILE_TEXT),
        st.builds(lambda t: _answer(specializations_needed=[t]), HOSTILE_TEXT),
        st.builds(lambda t: _answer(reasoning=t + " " + SYSTEM_PROMPT), HOSTILE_TEXT),
    )
)
@example(_answer(reasoning=HUGE))
@example(_answer(reasoning="Sure, here it is: " + SYSTEM_PROMPT))
def test_the_router_answer_parser_survives_hostile_answers_and_never_shows_its_instructions(
    content: str,
) -> None:
    router = MetaRouter.__new__(MetaRouter)  # the parser needs no client
    try:
        d = router._parse(_completion(content), 0.0)
    except MetaRouterFailure as exc:
        assert exc.reason == "invalid_response"
        return
    assert d.query_type in QUERY_TYPES and 0 <= d.confidence <= 1
    assert leaked("\n".join(decision_details(d))) == []


GUARD = PromptGuard(DEFAULT_SYSTEM_PROMPT)


@MODEST
@given(HOSTILE_TEXT, HOSTILE_TEXT, st.integers(min_value=1, max_value=40))
@example(HUGE[:20000], "", 997)
def test_a_model_reciting_its_instructions_amid_hostile_text_never_shows_them(
    before: str, after: str, piece: int
) -> None:
    recited = f"{before}\n{DEFAULT_SYSTEM_PROMPT}\n{after}"
    guard = GUARD.stream()
    shown = [guard.show(recited[:i]) for i in range(piece, len(recited), piece)]
    shown.append(guard.show(recited, final=True))
    assert leaked(shown[-1]) == []
    assert all(leaked(s) == [] for s in shown[:-1])  # not even while it streams
    assert not any("metarouter, a helpful" in " ".join(s.lower().split()) for s in shown)  # nor half of one
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:], strict=False))  # what was shown stays
    assert GUARD.stream().show(before, final=True) == before or leaked(before)  # innocent text stays


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_TEXT, st.lists(HOSTILE_TEXT, max_size=60))
@example("because " * 20_000, ["x" * 5000] * 50)
def test_the_slack_routing_footer_fits_a_button_whatever_the_decision_says(
    reasoning: str, specializations: list[str]
) -> None:
    d = Decision(
        recommended_model="llama3.2:3b",
        confidence=0.5,
        reasoning=reasoning,
        query_type="general",
        complexity="simple",
        specializations_needed=specializations,
        source="openai",
    )
    value = pack_footer(Footer(d, "1700000000.000100"))
    assert len(value) <= 2000
    back = unpack_footer(value).decision
    assert back.recommended_model == d.recommended_model and back.source == "openai"
