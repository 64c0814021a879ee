"""Property-based tests of the text an adapter shows: the fence-safe splitter and Slack's mrkdwn.

Whatever a model writes (deeply nested markdown, stray fences, NUL, emoji, 10 kB lines), the pieces
fit, fences balance, nothing is lost, and the converter never raises.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.common.splitting import MIN_LIMIT, split_text
from bot.slack.mrkdwn import escape, to_mrkdwn

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
