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
        self._sentences = [p.lower() for p in parts]
        self._initials = {p[0] for p in self._sentences}
        # a quote ends in the newest piece and is at most this long (spacing may stretch it a little)
        self._window = 2 * max((len(p) for p in parts), default=0) + 64

    def stream(self) -> StreamGuard:
        """A guard for one answer's growing text."""
        return StreamGuard(self)


class StreamGuard:
    def __init__(self, guard: PromptGuard) -> None:
        self._guard = guard
        self._spans: list[tuple[int, int]] = []  # quoted stretches of the text, in order
        self._scanned = 0
        self._clear = 0  # no quote can start before this: the text there was shown, or withheld

    def show(self, text: str, *, final: bool = False) -> str:
        """`text` (the whole answer so far, an extension of the last call's) with quotes withheld.
        Until `final`, a tail that may be the start of a quote is held back, so not even the first
        word of a sentence of the prompt is shown while it streams."""
        g = self._guard
        if g._pattern is None:
            return text
        start = max(self._spans[-1][1] if self._spans else 0, self._scanned - g._window)
        for m in g._pattern.finditer(text, start):
            self._spans.append(m.span())
        self._scanned = len(text)
        shown = text if final else text[: self._held_from(text)]
        out, at = [], 0
        for begin, end in self._spans:
            out += [shown[at:begin], WITHHELD]
            at = end
        out.append(shown[at:])
        return "".join(out)

    def _held_from(self, text: str) -> int:
        """Where the text stops being safe to show: the first position from which it reads as the
        start of a sentence of the prompt. A position ruled out once stays ruled out as the text
        grows, so each character is looked at about once over the whole answer. What was shown is
        never taken back (streaming edits only grow)."""
        g = self._guard
        first = max(self._clear, self._spans[-1][1] if self._spans else 0)
        low = text[first:].lower()
        i = 0
        while i < len(low):
            if low[i] in g._initials:
                so_far = " ".join(low[i : i + g._window].split())
                if any(s.startswith(so_far) for s in g._sentences):
                    break
            i += 1
        self._clear = first + i
        return self._clear
