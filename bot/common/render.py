"""Platform-neutral text for a routing decision: the one-line summary and the expanded details."""

from __future__ import annotations

from core.types import Decision

FALLBACK_TEXT = {
    "no_api_key": "meta-router off (no API key)",
    "timeout": "meta-router timed out",
    "rate_limited": "meta-router rate-limited",
    "budget": "monthly routing budget spent",
    "api_error": "meta-router unavailable",
    "invalid_response": "meta-router answer unusable",
    "unknown_model": "meta-router chose an unknown model",
    "low_confidence": "meta-router unsure",
    "local_confident": "local router confident",
    "privacy": "local-only channel",
}


def decision_summary(d: Decision) -> str:
    """model · query type · confidence · source · decision time [· why the local router decided]"""
    parts = [d.recommended_model, d.query_type, f"{d.confidence:.2f}", d.source, _ms(d.decision_ms)]
    if d.fallback_reason:
        parts.append(FALLBACK_TEXT.get(d.fallback_reason, d.fallback_reason))
    return " · ".join(parts)


def decision_details(d: Decision) -> list[str]:
    lines = [
        f"Model: {d.recommended_model} ({d.complexity} {d.query_type} question, "
        f"confidence {d.confidence:.2f})",
        f"Why: {d.reasoning}",
    ]
    if d.specializations_needed:
        lines.append("Needs: " + ", ".join(d.specializations_needed))
    if d.alternatives:
        lines.append("Alternatives: " + ", ".join(d.alternatives))
    lines.append(
        f"Decided by: {d.source}"
        + (f" ({FALLBACK_TEXT.get(d.fallback_reason, d.fallback_reason)})" if d.fallback_reason else "")
        + f" in {_ms(d.decision_ms)}, cost ${d.cost_usd:.6f}"
    )
    lines += vote_lines(d)
    if d.download_if_needed:
        lines.append("Download: needed if the model is not local yet")
    sent = disclosure_line(d)
    if sent:
        lines.append(sent)
    return lines


# Why one member's vote did not count, in the words of its line under "Votes".
VOTE_FAILURE_TEXT = {
    "timeout": "no answer in time",
    "rate_limited": "rate-limited",
    "api_error": "unavailable",
    "invalid_response": "answer unusable",
    "no_api_key": "no API key",
}


def vote_lines(d: Decision) -> list[str]:
    """Who voted for what in an ensemble decision: one line per member, in configured order."""
    if not d.votes:
        return []
    counted = sum(1 for v in d.votes if v.failure is None)
    lines = [f"Votes ({counted} of {len(d.votes)} counted):"]
    for v in d.votes:
        weight = f", weight {v.weight:g}" if v.weight != 1 else ""
        took = f"{_ms(v.latency_ms)}" + (f", ${v.cost_usd:.6f}" if v.cost_usd else "")
        if v.failure is None:
            said = f"{v.recommended_model} (confidence {v.confidence:.2f}{weight})"
        elif v.failure == "unknown_model":
            said = f"{v.recommended_model}, unknown here: not counted"
        else:
            said = VOTE_FAILURE_TEXT.get(v.failure, v.failure)
        lines.append(f"• {v.member}: {said}, {took}")
    return lines


def disclosure_line(d: Decision) -> str | None:
    """What left the machine for this decision; None when unknown (a stored or cached decision)."""
    if d.fallback_reason == "privacy":
        return "Sent to the meta-router: nothing (local-only channel)"
    s = d.disclosure
    if s is None:
        return None
    question = "the start of the question" if s.query_truncated else "the question"
    if s.query_redactions:
        question += f" ({_items(s.query_redactions)} redacted)"
    parts = [question]
    if s.earlier_messages:
        earlier = f"{s.earlier_messages} earlier message{'s' if s.earlier_messages != 1 else ''}"
        if s.earlier_redactions:
            earlier += f" ({_items(s.earlier_redactions)} redacted)"
        parts.append(earlier)
    if s.past_questions:
        # other people's questions, redacted and clipped, with the model that answered them
        parts.append(f"{s.past_questions} similar past question{'s' if s.past_questions != 1 else ''}")
    sent = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    # an ensemble sent it to each member: say so, the members are listed under "Votes"
    to = f"{len(d.votes)} meta-routers" if len(d.votes) > 1 else "the meta-router"
    return f"Sent to {to}: {sent}"


def _items(n: int) -> str:
    return f"{n} item{'s' if n != 1 else ''}"


def _ms(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"
