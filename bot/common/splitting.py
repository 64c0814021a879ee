"""Fence-safe splitting: cut a long answer into pieces that each fit one platform message.

    pieces = split_text(answer, 2000)                         # Discord
    pieces = split_text(markdown, 3000, measure=lambda s: len(to_mrkdwn(s)))   # Slack, measured rendered

Rules, in order of preference for where a piece ends:
1. a paragraph break (a blank line, or just before a code block or heading) in the second half of the piece;
2. any line break outside a code block in the second half;
3. any line break, also inside a code block;
4. a space, and only for a single line longer than the limit, anywhere.

A code block cut in two is closed at the end of one piece and reopened with the same fence (and
language) at the start of the next, so every piece has balanced fences; a block still open at the end
of the text is closed too. Joined back together the pieces hold the whole text, in order, apart from
those added fences and the blank lines at the cuts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Measure = Callable[[str], int]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s")
MIN_LIMIT = 40  # room for a fence, its language and a little text


@dataclass(frozen=True)
class Cut:
    """The first piece of a text: `piece` is ready to show, `consumed` is how many characters of the
    input it holds, and `opener` is the fence line the next piece must start with ("" outside code)."""

    piece: str
    consumed: int
    opener: str


def split_text(text: str, limit: int, *, measure: Measure = len) -> list[str]:
    """All pieces of `text`, each with `measure(piece) <= limit` and balanced code fences."""
    pieces: list[str] = []
    opener = ""
    while text:
        cut = split_once(text, limit, opener=opener, measure=measure)
        if cut.piece.strip():
            pieces.append(cut.piece)
        text, opener = text[cut.consumed :], cut.opener
    return pieces


def split_once(text: str, limit: int, *, opener: str = "", measure: Measure = len) -> Cut:
    """The first piece of `text`, which continues a code block opened by `opener` when that is set.

    `consumed == len(text)` when everything fits; a streaming sink uses that to know whether the
    live message can still hold the answer so far.
    """
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}")
    head = opener + "\n" if opener else ""
    whole = _close(head + text, _fence_after(text, opener))
    if measure(whole) <= limit:
        return Cut(whole, len(text), "")

    bounds = _boundaries(text, opener)
    # Pieces only grow with the cut position, so the last cut that fits is found by bisection.
    lo, hi = 0, len(bounds)
    while lo < hi:
        mid = (lo + hi) // 2
        if measure(_piece(head, text, bounds[mid])) <= limit:
            lo = mid + 1
        else:
            hi = mid
    fitting = [b for b in bounds[:lo] if not b.empty_block]
    if not fitting:
        # Nothing but (at most) an opening fence line fits before an overlong line: cut that line.
        start = bounds[lo - 1] if lo else None
        if start is not None:
            head, opener = head + text[: start.pos], start.fence
            text = text[start.pos :]
        cut = _hard_cut(text, limit, head, opener, measure)
        return Cut(cut.piece, cut.consumed + (start.pos if start else 0), cut.opener)

    far = fitting[-1].pos / 2  # a cut in the first half would leave a stub of a message
    best = (
        _last(fitting, lambda b: b.paragraph and b.pos >= far)
        or _last(fitting, lambda b: not b.fence and b.pos >= far)
        or fitting[-1]
    )
    rest = best.pos
    if not best.fence:  # blank lines at a cut would only make the next message start low
        while rest < len(text) and text[rest] == "\n":
            rest += 1
    return Cut(_piece(head, text, best), rest, best.fence)


@dataclass(frozen=True)
class _Bound:
    pos: int  # the cut lies just after text[pos - 1] (a newline)
    fence: str  # the open fence line after this point, or ""
    paragraph: bool
    empty_block: bool  # the cut would follow a fence that has just opened


def _boundaries(text: str, opener: str) -> list[_Bound]:
    lines = text.split("\n")
    out: list[_Bound] = []
    fence = opener
    pos = 0
    for i, line in enumerate(lines[:-1]):  # the last line has no newline after it: not a cut
        pos += len(line) + 1
        was_open = bool(fence)
        fence = _step(fence, line)
        nxt = lines[i + 1]
        paragraph = not fence and (
            not line.strip()
            or was_open  # this line closed a code block
            or bool(_FENCE.match(nxt))
            or bool(_HEADING.match(nxt))
        )
        out.append(_Bound(pos, fence, paragraph, bool(fence) and not was_open))
    return out


def _step(fence: str, line: str) -> str:
    """The open fence after `line`, given the one before it."""
    m = _FENCE.match(line)
    if not m:
        return fence
    run, info = m.group(1), m.group(2)
    if not fence:
        if run[0] == "`" and "`" in info:  # CommonMark: that is inline code, not a fence
            return fence
        return line.strip()
    current = _run(fence)
    if run[0] == current[0] and len(run) >= len(current) and not info.strip():
        return ""
    return fence


def _run(fence: str) -> str:
    m = _FENCE.match(fence)
    return m.group(1) if m else "```"


def _fence_after(text: str, opener: str) -> str:
    fence = opener
    for line in text.split("\n"):
        fence = _step(fence, line)
    return fence


def _close(piece: str, fence: str) -> str:
    if not fence:
        return piece
    return piece + ("" if piece.endswith("\n") else "\n") + _run(fence)


def _piece(head: str, text: str, b: _Bound) -> str:
    body = text[: b.pos].rstrip("\n") if not b.fence else text[: b.pos - 1]
    return _close(head + body, b.fence)


def _last(bounds: list[_Bound], ok: Callable[[_Bound], bool]) -> _Bound | None:
    for b in reversed(bounds):
        if ok(b):
            return b
    return None


def _hard_cut(text: str, limit: int, head: str, opener: str, measure: Measure) -> Cut:
    """The first line alone is too long: cut it, at a space when there is one in its second half."""
    line_end = text.find("\n")
    line = text if line_end < 0 else text[:line_end]
    fence = opener  # an overlong line is content, never a fence
    lo, hi = 1, len(line)
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        if measure(_close(head + line[:mid], fence)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    n = lo
    space = line.rfind(" ", 0, n)
    if not fence and space >= n // 2:
        n = space + 1
    if not fence:
        n = _off_fence_run(line, n, lo)
    return Cut(_close(head + line[:n].rstrip(" "), fence), n, fence)


_RUN_AHEAD = re.compile(r" {0,3}(`{3,}|~{3,})")


def _off_fence_run(line: str, n: int, most: int) -> int:
    """A cut that does not leave the next piece starting with three backticks or tildes, which would
    read as a code fence: inside the run instead, when the run fits."""
    m = _RUN_AHEAD.match(line, n)
    if m is None:
        return n
    if m.end() - 2 <= most:
        return m.end() - 2  # the next piece starts with two of them: plain text
    # before it, taking one character along: led by it, the run is text, and is cut in the next piece
    before = len(line[:n].rstrip(" `~")) - 1
    return before if before > 0 else n  # a run longer than a whole message cannot be helped
