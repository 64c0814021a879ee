"""Fence-safe splitting: every piece fits, fences balance, nothing is lost or reordered."""

from __future__ import annotations

import re

import pytest

from bot.common.splitting import split_once, split_text

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.M)


def fences(piece: str) -> list[str]:
    return [m.group(0).strip() for m in FENCE.finditer(piece)]


def balanced(piece: str) -> bool:
    return len(fences(piece)) % 2 == 0


def words(text: str) -> list[str]:
    """The text's content without fences: what a reader must find, in order, across the pieces."""
    return [w for line in text.split("\n") if not FENCE.match(line) for w in line.split()]


def paragraphs(n: int, size: int = 300) -> str:
    return "\n\n".join(f"Paragraph {i}: " + " ".join(f"w{i}x{j}" for j in range(size // 7)) for i in range(n))


def test_short_text_is_one_piece_unchanged() -> None:
    assert split_text("Hello **world**\n\n- a\n- b", 2000) == ["Hello **world**\n\n- a\n- b"]


@pytest.mark.parametrize("limit", [200, 2000, 3000])
def test_every_piece_fits_and_the_whole_text_survives_in_order(limit: int) -> None:
    text = paragraphs(40)
    pieces = split_text(text, limit)
    assert len(pieces) > 1
    assert all(len(p) <= limit for p in pieces)
    assert words("\n".join(pieces)) == words(text)


def test_cuts_fall_on_paragraph_breaks() -> None:
    text = paragraphs(12, size=300)
    for piece in split_text(text, 1000):
        assert piece.startswith("Paragraph ")  # no piece starts mid-paragraph
        assert not piece.endswith("\n")


def test_code_block_cut_in_two_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"    total += values[{i}]  # step {i}" for i in range(120))
    body = f"def f(values):\n    total = 0\n{code}\n    return total"
    text = f"Here is the loop:\n\n```python\n{body}\n```\n\nDone."
    pieces = split_text(text, 1500)
    assert len(pieces) >= 3
    for piece in pieces:
        assert len(piece) <= 1500
        assert balanced(piece), piece
    # every continuation of the block opens with the same language
    continued = [p for p in pieces[1:] if p.startswith("```")]
    assert continued and all(p.startswith("```python\n") for p in continued)
    assert pieces[0].rstrip().endswith("```")
    assert words("\n".join(pieces)) == words(text)
    assert pieces[-1].endswith("Done.")


def test_prefers_to_cut_before_a_code_block_rather_than_inside_it() -> None:
    prose = "Intro " * 100  # ~600 chars
    block = "```js\n" + "\n".join(f"console.log({i});" for i in range(40)) + "\n```"  # ~700 chars
    pieces = split_text(prose.strip() + "\n\n" + block, 1000)
    assert pieces == [prose.strip(), block]


def test_unclosed_fence_at_the_end_is_closed() -> None:
    pieces = split_text("Look:\n```bash\nls -la", 2000)
    assert pieces == ["Look:\n```bash\nls -la\n```"]


def test_tilde_fences_and_longer_backtick_runs_are_respected() -> None:
    inner = "\n".join(["````md", "```python", "x = 1", "```", *[f"line {i}" for i in range(200)], "````"])
    pieces = split_text(inner, 600)
    assert all(len(p) <= 600 and balanced(p) for p in pieces)
    # the inner ``` lines are content of the 4-backtick block: each continuation reopens with ````md
    assert all(p.startswith("````md") for p in pieces)


def test_a_single_overlong_line_is_cut_at_spaces() -> None:
    line = " ".join(f"word{i}" for i in range(1000))
    pieces = split_text(line, 500)
    assert all(len(p) <= 500 for p in pieces)
    assert " ".join(pieces).split() == line.split()  # no word broken


def test_an_overlong_line_inside_code_keeps_fences_balanced() -> None:
    text = "```\n" + "x" * 5000 + "\n```"
    pieces = split_text(text, 1000)
    assert all(len(p) <= 1000 and balanced(p) for p in pieces)
    assert "".join(p.removeprefix("```\n").removesuffix("\n```") for p in pieces) == "x" * 5000


def test_measure_counts_the_rendered_length() -> None:
    # rendering doubles every character: the pieces must fit after rendering
    pieces = split_text(paragraphs(10), 1000, measure=lambda s: 2 * len(s))
    assert all(2 * len(p) <= 1000 for p in pieces)


def test_split_once_reports_fit_and_the_opener_to_carry() -> None:
    text = "```go\n" + "\n".join(f"fmt.Println({i})" for i in range(100)) + "\n```"
    cut = split_once(text, 400)
    assert cut.consumed < len(text) and cut.opener == "```go"
    rest = split_once(text[cut.consumed :], 4000, opener=cut.opener)
    assert rest.consumed == len(text) - cut.consumed and rest.piece.startswith("```go\n")
    assert split_once("short", 400).consumed == len("short")
