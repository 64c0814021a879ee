"""Markdown, as models write it, to Slack mrkdwn.

Slack is not Markdown: `*x*` is bold, `_x_` italic, `~x~` struck, links are `<url|text>`, there are
no headings or list syntax, and `&`, `<`, `>` must be escaped (an unescaped `<!channel>` would page
everyone). Code (fenced and inline) keeps its content; fences lose their language tag, which Slack
would print as the first line of the block. Tables go into a code block so their columns stay aligned.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^ {0,3}>\s?(.*)$")
_RULE = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE = re.compile(r"^\s*\|.*\|\s*$")

_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_BOLD_ITALIC = re.compile(r"\*\*\*(?!\s)(.+?)(?<!\s)\*\*\*")
_BOLD = re.compile(r"(\*\*|__)(?!\s)(.+?)(?<!\s)\1")
_ITALIC_STAR = re.compile(r"(?<![*\w])\*(?![\s*])(.+?)(?<![\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?!\s)(.+?)(?<!\s)~~")

# Marks Slack bold while italics are converted, so `*bold*` is not read back as Markdown italics.
_B = "\x00"
_BULLETS = ("•", "◦", "▪")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    out: list[str] = []
    fence = ""  # the run of the open code fence
    table: list[str] = []
    for line in markdown.split("\n"):
        if fence:
            m = _FENCE.match(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
                out.append("```")
                fence = ""
            else:
                out.append(escape(line))
            continue
        if _TABLE.match(line):
            table.append(escape(line.strip()))
            continue
        if table:
            out += ["```", *table, "```"]
            table = []
        m = _FENCE.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = m.group(1)
            out.append("```")
            continue
        out.append(_block_line(line))
    if table:
        out += ["```", *table, "```"]
    if fence:
        out.append("```")
    return "\n".join(out)


def _block_line(line: str) -> str:
    if m := _HEADING.match(line):
        title = _inline(m.group(1)).replace("*", "")
        return f"*{title}*" if title else ""
    if _RULE.match(line):
        return "──────────"
    if m := _QUOTE.match(line):
        return ">" + (" " + _inline(m.group(1)) if m.group(1) else "")  # Slack reads a bare `>` as a quote
    if m := _BULLET.match(line):
        level = len(m.group(1).expandtabs(4)) // 2
        bullet = _BULLETS[min(level, len(_BULLETS) - 1)]
        return "    " * level + f"{bullet} " + _inline(m.group(2))
    return _inline(line)


def _inline(text: str) -> str:
    """Inline markup outside code spans; code spans are escaped and kept as they are."""
    parts: list[str] = []
    last = 0
    for m in _INLINE_CODE.finditer(text):
        parts.append(_markup(text[last : m.start()]))
        parts.append("`" + escape(m.group(2)) + "`")
        last = m.end()
    parts.append(_markup(text[last:]))
    return "".join(parts)


def _markup(text: str) -> str:
    links: list[str] = []

    def keep(url: str, label: str) -> str:
        # A link is made of escaped parts; set aside so emphasis inside a URL is left alone.
        links.append(f"<{escape(url)}|{_emphasis(escape(label)).replace('|', '¦')}>")
        return f"\x01{len(links) - 1}\x01"

    text = _IMAGE.sub(lambda m: keep(m.group(2), m.group(1) or m.group(2)), text)
    text = _LINK.sub(lambda m: keep(m.group(2), m.group(1)), text)
    text = _emphasis(escape(text))
    return re.sub("\x01(\\d+)\x01", lambda m: links[int(m.group(1))], text)


def _emphasis(text: str) -> str:
    text = _BOLD_ITALIC.sub(lambda m: f"{_B}_{m.group(1)}_{_B}", text)
    text = _BOLD.sub(lambda m: f"{_B}{m.group(2)}{_B}", text)
    text = _ITALIC_STAR.sub(lambda m: f"_{m.group(1)}_", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    return text.replace(_B, "*")
