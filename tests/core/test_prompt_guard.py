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
    """What the chat shows after each piece of `text` arrives, the last one final."""
    g = guard.stream()
    ends = list(range(piece, len(text), piece))
    return [g.show(text[:i]) for i in ends] + [g.show(text, final=True)]


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


def test_not_even_the_start_of_an_instruction_shows_while_it_streams() -> None:
    g = PromptGuard(DEFAULT_SYSTEM_PROMPT).stream()
    answer = "Sure. You are MetaRouter, a helpful assistant in a team chat. Done."
    shown = [g.show(answer[:i]) for i in range(1, len(answer))] + [g.show(answer, final=True)]
    assert not any("sure. you" in s.lower() for s in shown)  # not even the first word shows early
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:], strict=False))  # edits only grow
    assert shown[-1] == f"Sure. {WITHHELD} Done."


def test_a_start_that_turns_out_innocent_is_shown_once_it_does() -> None:
    g = PromptGuard(DEFAULT_SYSTEM_PROMPT).stream()
    answer = "You are right, that sorts in place. You are welcome"
    shown = [g.show(answer[:i]) for i in range(1, len(answer) + 1)]
    assert shown[answer.index(",") + 1].startswith("You are right,")  # held only while it was unclear
    assert g.show(answer, final=True) == answer  # the end of an answer is never held back
