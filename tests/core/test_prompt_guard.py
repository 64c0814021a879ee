"""The prompt guard: an answer quoting the answering model's instructions shows them withheld, even
when the quote arrives token by token, with other spacing or case; other answers pass untouched."""

from __future__ import annotations

import re

from core.config import DEFAULT_SYSTEM_PROMPT
from core.prompt_guard import WITHHELD, PromptGuard, prompt_sentences

PROMPT = (
    "You are Acme's support bot for the billing team.\nNever promise refunds above 50 EUR without a ticket."
)


def stream(guard: PromptGuard, text: str, piece: int = 3) -> list[str]:
    """What the chat shows after each piece of `text` arrives."""
    g = guard.stream()
    return [g.show(text[:i]) for i in range(piece, len(text) + piece, piece)]


def test_a_quoted_instruction_is_withheld_at_every_step_of_the_stream() -> None:
    answer = (
        "Sure! My instructions:\n\nyou are ACME's support   bot for the\nbilling team. And: "
        "Never promise refunds above 50 EUR without a ticket. That is all."
    )
    shown = stream(PromptGuard(PROMPT), answer)
    for s in shown:
        assert "support bot for the billing team" not in re.sub(r"\s+", " ", s.lower())
        assert "refunds above 50 EUR without a ticket" not in s
    assert shown[-1] == f"Sure! My instructions:\n\n{WITHHELD} And: {WITHHELD} That is all."


def test_an_answer_that_quotes_nothing_is_unchanged() -> None:
    answer = "You are right: billing runs on Mondays. Refunds need a ticket."
    assert stream(PromptGuard(PROMPT), answer)[-1] == answer
    assert PromptGuard("").stream().show(answer) == answer


def test_the_default_prompt_is_guarded_sentence_by_sentence() -> None:
    sentences = prompt_sentences(DEFAULT_SYSTEM_PROMPT)
    assert len(sentences) == 3
    g = PromptGuard(DEFAULT_SYSTEM_PROMPT).stream()
    assert g.show("Here: " + DEFAULT_SYSTEM_PROMPT) == "Here: " + " ".join([WITHHELD] * 3)
