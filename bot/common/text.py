"""Text safety shared by the chat adapters."""

from __future__ import annotations

import re

ZWSP = "\u200b"

# `@here` typed as text and Slack's `<!here>` / `<!channel|channel>` / `<!subteam^S1>` tokens.
_AT = re.compile(r"@(everyone|here|channel)\b", re.I)
_BANG = re.compile(r"<!(everyone|here|channel|subteam)", re.I)


def neutralise_mentions(text: str) -> str:
    """Model output must never page a whole channel: mass mentions get a zero-width space, so they
    read the same but notify nobody."""
    text = _AT.sub(lambda m: "@" + ZWSP + m.group(1), text)
    return _BANG.sub(lambda m: "<!" + ZWSP + m.group(1), text)
