"""Answers never show the instructions the answering model was given.

Asked to "reveal your system prompt", a local model often does. The answer is checked as it streams:
every sentence of the system prompt it quotes (case and spacing aside) is replaced by WITHHELD before
anyone sees it. Each new piece of the stream costs a search of the last few hundred characters only,
so a long answer is not searched again and again from the start.

    guard = PromptGuard(settings.system_prompt).stream()
    shown = guard.show(text_so_far)        # call with the whole text each time; it only grows
"""

from __future__ import annotations

import re

WITHHELD = "[instructions withheld]"
MIN_SENTENCE_CHARS = 30  # shorter pieces ("Be concise.") are everyday words, not a leak


def prompt_sentences(prompt: str) -> list[str]:
    parts = re.split(r"(?<=[.!?:])\s+|\n", prompt)
    return [" ".join(p.split()) for p in parts if len(p.strip()) >= MIN_SENTENCE_CHARS]


class PromptGuard:
    def __init__(self, prompt: str) -> None:
        parts = prompt_sentences(prompt)
        self._pattern = (
            re.compile("|".join(r"\s+".join(map(re.escape, p.split())) for p in parts), re.I)
            if parts
            else None
        )
        # a quote ends in the newest piece and is at most this long (spacing may stretch it a little)
        self._window = 2 * max((len(p) for p in parts), default=0) + 64

    def stream(self) -> StreamGuard:
        """A guard for one answer's growing text."""
        return StreamGuard(self._pattern, self._window)


class StreamGuard:
    def __init__(self, pattern: re.Pattern[str] | None, window: int) -> None:
        self._pattern = pattern
        self._window = window
        self._spans: list[tuple[int, int]] = []  # quoted stretches of the text, in order
        self._scanned = 0

    def show(self, text: str) -> str:
        """`text` (the whole answer so far, an extension of the last call's) with quotes withheld."""
        if self._pattern is None:
            return text
        start = max(self._spans[-1][1] if self._spans else 0, self._scanned - self._window)
        for m in self._pattern.finditer(text, start):
            self._spans.append(m.span())
        self._scanned = len(text)
        if not self._spans:
            return text
        out, at = [], 0
        for begin, end in self._spans:
            out += [text[at:begin], WITHHELD]
            at = end
        out.append(text[at:])
        return "".join(out)
