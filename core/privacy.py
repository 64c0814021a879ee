"""What may leave the machine: redaction of secrets and personal data before the meta-router, and
which channels send it nothing at all.

The redactor is deliberately eager: a false positive costs the router a word of context, a false
negative leaks a credential to a third party. Every replacement is a typed placeholder ("[EMAIL]",
"[SECRET:github]") so the router still sees that something was there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from core.config import Settings

# Redaction runs on a bounded prefix: a 100 kB paste must not cost 100 kB of regex work per pattern.
MAX_SCAN_CHARS = 20_000

_Sub = Callable[[re.Match[str]], str | None]  # the replacement, or None to leave the match alone


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _placeholder(match: str) -> bool:
    return match.startswith("[") and match.endswith("]")


# Values of `password=`-style assignments that are code, not a secret: a coding question must keep them.
_NOT_SECRET = re.compile(
    r"(?i)^(?:str|string|int|bool|none|null|nil|true|false|undefined|optional\[?.*|required|"
    r"os\.|process\.|self\.|this\.|config\.|settings\.|env\.|getenv|environ|\$|<|\{|%|\*{3,}|x{3,}|\.{3})"
)


def _card(m: re.Match[str]) -> str | None:
    # The digit run may carry a neighbouring number ("4111 1111 1111 1111 000"): look for the card
    # among its groups, longest first.
    parts = re.split(r"([ -])", m.group(0))  # groups at even indexes, separators between
    groups = parts[::2]
    for size in range(len(groups), 0, -1):
        for start in range(len(groups) - size + 1):
            digits = "".join(groups[start : start + size])
            if 13 <= len(digits) <= 19 and _luhn(digits):
                return "".join(parts[: 2 * start]) + "[CARD]" + "".join(parts[2 * (start + size) - 1 :])
    return None


def _phone(m: re.Match[str]) -> str | None:
    text = m.group(0)
    digits = re.sub(r"\D", "", text)
    if not 9 <= len(digits) <= 15:
        return None
    # a bare digit run is an id or a number, not a phone number: ask for a phone's shape
    if not (text.startswith("+") or "(" in text or re.search(r"\d[ -]\d", text)):
        return None
    if sum(len(g) == 1 for g in re.findall(r"\d+", text)) > 1:
        return None  # "1 2 3 4 5 6 7 8 9" is a list of numbers
    return "[PHONE]"


def _assignment(m: re.Match[str]) -> str | None:
    value = m.group("val")
    if _placeholder(value) or _NOT_SECRET.match(value):
        return None
    if m.group("sep").strip() == "is" and value.isalpha():
        return None  # "the password is wrong": prose, not a password
    kind = "password" if re.search(r"(?i)pass|pwd", m.group("key")) else "secret"
    return m.group("key") + m.group("sep") + f"[SECRET:{kind}]"


def _url_password(m: re.Match[str]) -> str | None:
    if _placeholder(m.group("pw")):
        return None
    return f"{m.group('pre')}[SECRET:password]@"


def _fixed(label: str) -> _Sub:
    return lambda m: label


# Order matters: specific provider formats before the generic assignment, cards before phones.
_RULES: list[tuple[str, re.Pattern[str], _Sub]] = [
    (
        "private_key",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
            r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.S,
        ),
        _fixed("[SECRET:private_key]"),
    ),
    (
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
        _fixed("[SECRET:jwt]"),
    ),
    (
        "url_password",
        # the password runs to the last "@" before the host: passwords contain "@" too
        re.compile(r"(?P<pre>(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@\[\]]*:)(?P<pw>[^\s/]+)@"),
        _url_password,
    ),
    ("anthropic", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}"), _fixed("[SECRET:anthropic]")),
    (
        "openai",
        re.compile(r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}"),
        _fixed("[SECRET:openai]"),
    ),
    ("aws", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"), _fixed("[SECRET:aws]")),
    (
        "github",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"),
        _fixed("[SECRET:github]"),
    ),
    (
        "slack",
        re.compile(
            r"\b(?:xox[abposre]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,})"
            r"|https://hooks\.slack\.com/services/[A-Za-z0-9/]+"
        ),
        _fixed("[SECRET:slack]"),
    ),
    ("stripe", re.compile(r"\b(?:[spr]k_(?:live|test)|whsec)_[A-Za-z0-9]{16,}"), _fixed("[SECRET:stripe]")),
    ("google", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), _fixed("[SECRET:google]")),
    ("twilio", re.compile(r"\b(?:SK|AC)[0-9a-fA-F]{32}\b"), _fixed("[SECRET:twilio]")),
    (
        # "api key 9f86d0…", "auth 4f2a…": a long token of letters and digits right after a key word
        "keyword",
        re.compile(r"(?i)\b(?P<k>key|token|secret|auth)\s+(?=[\w+/=-]*\d)(?=[\w+/=-]*[a-z])[\w+/=-]{20,}"),
        lambda m: f"{m.group('k')} [SECRET:token]",
    ),
    (
        "bearer",
        re.compile(r"(?i)\b(?P<b>bearer|basic|token)\s+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)"),
        lambda m: f"{m.group('b')} [SECRET:token]",
    ),
    (
        "assignment",
        re.compile(
            r"(?i)(?<![\w.\[-])(?P<key>[\w.-]*(?:passw(?:or)?d|passwd|(?<![a-z])pass(?![a-z])|(?<![a-z])pw(?![a-z])|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
            r"|auth[_-]?key|private[_-]?key|credentials?)[\w.-]*)"
            r"(?P<sep>[\"']?\s*(?:=|:=|:|=>)\s*[\"']?|\s+is\s+)"
            r"(?P<val>[^\s\"'`,;(){}\[\]<>]{4,})(?![\w(\[])"
        ),
        _assignment,
    ),
    (
        "email",
        # the lookbehind starts a match only where a local part starts: linear, not quadratic, on long runs
        re.compile(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
        ),
        _fixed("[EMAIL]"),
    ),
    (
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
        lambda m: "[IBAN]" if _iban_ok(m.group(0)) else None,
    ),
    ("card", re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,30}(?![\w-])"), _card),
    (
        "phone",
        re.compile(
            r"(?<![\w+.-])(?:\+\d{1,3}[ -]?)?(?:\(\d{1,4}\)[ -]?)?\d{1,8}(?:[ -]\d{1,8}){1,5}(?![\w.-])"
        ),
        _phone,
    ),
]


@dataclass(frozen=True)
class Redacted:
    text: str
    kinds: tuple[str, ...]  # one entry per replacement, e.g. ("email", "github")

    @property
    def count(self) -> int:
        return len(self.kinds)


class Redactor:
    """Replaces secrets and personal data by typed placeholders. Never raises; idempotent."""

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        rules = list(_RULES)
        for name, pattern in (extra or {}).items():
            label = f"[{name.upper()}]"
            rules.insert(0, (name, re.compile(pattern), _fixed(label)))
        self._rules = rules

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        return cls(settings.redact_patterns)

    def redact(self, text: str, *, limit: int = MAX_SCAN_CHARS) -> Redacted:
        text = text[:limit]
        kinds: list[str] = []
        for kind, pattern, sub in self._rules:

            def replace(m: re.Match[str], kind: str = kind, sub: _Sub = sub) -> str:
                new = sub(m)
                if new is None or new == m.group(0):
                    return m.group(0)
                kinds.append(kind)
                return new

            text = pattern.sub(replace, text)
        return Redacted(text, tuple(kinds))


def local_only_for(settings: Settings, *places: str | None) -> bool:
    """True when any of the places (channel, parent channel, workspace or guild) is marked local-only."""
    marked = set(settings.local_only_channels) | set(settings.local_only_workspaces)
    return any(p is not None and p in marked for p in places)
