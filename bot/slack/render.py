"""Core results as Slack Block Kit: answers with their collapsed routing block, /route, /models.

Only this module and translate.py know Slack payload shapes. Every block id and action id the app
listens for is named here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.common.render import decision_details, decision_summary
from bot.slack.mrkdwn import escape
from core.types import Decision, Inventory, ModelInfo, ModelStats

Block = dict[str, Any]

ANSWER_BLOCK = "mr_answer"
FOOTER_PREFIX = "mr_decision"  # every block of the routing footer: the part that expands and collapses
EXPAND, COLLAPSE, RERUN, RUN, PULL, REMOVE = (
    "mr_expand",
    "mr_collapse",
    "mr_rerun",
    "mr_run",
    "mr_pull",
    "mr_remove",
)

SECTION_CHARS = 3000
VALUE_CHARS = 2000  # Slack's limit on a button value
MODELS_SHOWN = 44  # 50 blocks per message, less headers and the overflow note

ROUTE_USAGE = "Usage: `/route QUESTION` shows which model would answer, without answering."
MODELS_USAGE = "Usage: `/models`, `/models pull NAME` or `/models remove NAME`."
NOT_ADMIN = "Only MetaRouter admins can pull or remove models."
NOT_HERE = "MetaRouter is not enabled in this channel."
GENERIC_ERROR = "Something went wrong while answering. Please try again."
INTERRUPTED = "The bot restarted before this answer finished. Please ask again."
RESTART_NOTE = ":warning: _Interrupted by a restart: the bot stopped before this answer was finished._"


@dataclass(frozen=True)
class Footer:
    """What the routing footer under an answer is built from, and what its buttons carry."""

    decision: Decision
    question_ts: str | None = None  # the message that asked, for the re-run buttons
    stats: ModelStats | None = None
    rerun: bool = True


def section(text: str, block_id: str | None = None) -> Block:
    block: Block = {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_CHARS] or " "}}
    if block_id:
        block["block_id"] = block_id
    return block


def context(text: str, block_id: str | None = None) -> Block:
    block: Block = {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:SECTION_CHARS]}]}
    if block_id:
        block["block_id"] = block_id
    return block


def button(label: str, action_id: str, value: str, *, style: str | None = None) -> Block:
    b: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": label[:75], "emoji": True},
        "action_id": action_id,
        "value": value,
    }
    if style:
        b["style"] = style
    return b


# --- answers -----------------------------------------------------------------------------------------
def answer_blocks(text: str, footer: list[Block] | None = None) -> list[Block]:
    return [section(text, ANSWER_BLOCK), *(footer or [])]


def decision_footer(f: Footer, *, expanded: bool) -> list[Block]:
    d = f.decision
    blocks = [context(":compass: " + escape(decision_summary(d)), f"{FOOTER_PREFIX}_summary")]
    if expanded:
        lines = [*decision_details(d), satisfaction_line(f.stats)]
        blocks.append(section("\n".join(escape(line) for line in lines), f"{FOOTER_PREFIX}_details"))
    value = pack_footer(f)
    toggle = (
        button("Hide routing details", COLLAPSE, value)
        if expanded
        else button("Routing details", EXPAND, value)
    )
    elements = [toggle]
    if f.rerun and f.question_ts:
        for i, alt in enumerate(d.alternatives[:2]):
            payload = json.dumps({"m": alt, "q": f.question_ts}, separators=(",", ":"))
            elements.append(button(f"Try {alt}", f"{RERUN}_{i}", payload))
    blocks.append({"type": "actions", "block_id": f"{FOOTER_PREFIX}_actions", "elements": elements})
    return blocks


def interrupted_blocks(text: str, model: str, question_ts: str | None) -> list[Block]:
    """A message of an answer a restart cut off: what it showed, the note, and a retry where possible."""
    hint = (
        " Press *Try again*, or mention me again." if question_ts else " Mention me again for a full answer."
    )
    blocks = [section(text, ANSWER_BLOCK), context(RESTART_NOTE + hint, f"{FOOTER_PREFIX}_interrupted")]
    if question_ts:
        payload = json.dumps({"m": model, "q": question_ts}, separators=(",", ":"))
        again = button(f"Try again ({model})", f"{RERUN}_0", payload, style="primary")
        blocks.append({"type": "actions", "block_id": f"{FOOTER_PREFIX}_actions", "elements": [again]})
    return blocks


def replace_footer(blocks: list[Block], footer: list[Block]) -> list[Block]:
    """The message's own blocks with only the routing footer swapped: the answer stays as it is."""
    kept = [b for b in blocks if not str(b.get("block_id", "")).startswith(FOOTER_PREFIX)]
    return kept + footer


def satisfaction_line(stats: ModelStats | None) -> str:
    if stats is None or stats.satisfaction is None:
        return "Satisfaction: no ratings yet"
    n = stats.feedback_count
    return f"Satisfaction: {stats.satisfaction:.0%} positive ({n} rating{'s' if n != 1 else ''})"


def button_value(data: dict[str, Any], shrink: Callable[[dict[str, Any], int], None]) -> str:
    """`data` as a button value within Slack's 2,000 characters; `shrink(data, n)` drops about n
    characters of its free text when it is too long."""
    last = None
    while True:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if len(text) <= VALUE_CHARS:
            return text
        if last is not None and len(text) >= last:
            # nothing left to shrink: a loop here would freeze the whole bot
            raise ValueError("button value cannot be made to fit")
        last = len(text)
        shrink(data, len(text) - VALUE_CHARS)


def _cut(text: str, n: int) -> str:
    return text[: max(0, len(text) - n - 1)] + "…"


def pack_footer(f: Footer) -> str:
    """The footer's data in a button value: expanding the routing details needs no database."""
    packed = {"d": f.decision.with_votes(), "q": f.question_ts, "r": f.rerun}

    def shrink(data: dict[str, Any], n: int) -> None:
        # the reasoning is free text, so it goes first; then the votes, then the specialisations
        d = data["d"]
        if len(d["reasoning"]) > 1:
            d["reasoning"] = _cut(d["reasoning"], n)
        elif d["votes"]:
            d["votes"] = d["votes"][:-1]
        elif d["specializations_needed"]:
            d["specializations_needed"].pop()

    return button_value(packed, shrink)


def unpack_footer(value: str) -> Footer:
    packed = json.loads(value)
    return Footer(Decision.model_validate(packed["d"]), packed.get("q"), None, bool(packed.get("r", True)))


# --- /route ------------------------------------------------------------------------------------------
def route_blocks(question: str, d: Decision, stats: ModelStats | None, thread_ts: str | None) -> list[Block]:
    quoted = escape(question if len(question) <= 500 else question[:500] + "…")
    details = "\n".join(escape(line) for line in [*decision_details(d), satisfaction_line(stats)])
    run = button_value({"q": question, "t": thread_ts}, lambda data, n: data.update(q=_cut(data["q"], n)))
    return [
        section(f"*Routing decision* for:\n>{quoted}"),
        context(":compass: " + escape(decision_summary(d))),
        section(details),
        {"type": "actions", "elements": [button(f"Ask {d.recommended_model}", RUN, run, style="primary")]},
    ]


# --- /models -----------------------------------------------------------------------------------------
def models_blocks(inv: Inventory, *, admin: bool) -> list[Block]:
    local = [m for m in inv.models if m.local]
    remote = [m for m in inv.models if not m.local]
    head = (
        f"*Models*: {len(local)} local, {len(remote)} downloadable · hosts: {', '.join(inv.hosts) or 'none'}"
    )
    if inv.hosts_down:
        head += f"\n:warning: not answering: {', '.join(inv.hosts_down)}"
    blocks: list[Block] = [section(escape(head).replace("&amp;", "&"))]
    shown = 0
    for title, group in (("Local", local), ("Downloadable", remote)):
        if not group:
            continue
        blocks.append(context(f"*{title}*"))
        for m in group:
            if shown == MODELS_SHOWN:
                break
            blocks.append(_model_block(m, admin))
            shown += 1
    if shown < len(inv.models):
        blocks.append(
            context(f"…and {len(inv.models) - shown} more: run `metarouter models` for the full list.")
        )
    return blocks


def _model_block(m: ModelInfo, admin: bool) -> Block:
    where = f"local on {', '.join(m.hosts)}" if m.local else "downloadable"
    size = f"{m.size_gb:.1f} GB" if m.size_gb is not None else "size unknown"
    s = m.stats
    votes = f"{s.feedback_count} vote{'s' if s.feedback_count != 1 else ''}"
    rated = f"{s.satisfaction:.0%} satisfied ({votes})" if s.satisfaction is not None else "no votes"
    used = s.last_used.strftime("%Y-%m-%d %H:%M UTC") if s.last_used else "never used"
    lines = [f"*{escape(m.name)}* · {escape(where)} · {size}"]
    lines.append(" · ".join([escape(", ".join(m.specializations) or "general"), rated, used]))
    block = section("\n".join(lines))
    if admin:
        if m.local:
            block["accessory"] = button("Remove", REMOVE, m.name, style="danger") | {
                "confirm": {
                    "title": {"type": "plain_text", "text": "Remove model?"},
                    "text": {
                        "type": "mrkdwn",
                        "text": f"Delete *{escape(m.name)}* from every Ollama server?",
                    },
                    "confirm": {"type": "plain_text", "text": "Remove"},
                    "deny": {"type": "plain_text", "text": "Cancel"},
                }
            }
        else:
            block["accessory"] = button("Pull", PULL, m.name)
    return block


def warning(text: str) -> str:
    return ":warning: " + text
