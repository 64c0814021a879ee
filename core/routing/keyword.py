"""The naive keyword router of the design sketch: count trigger words per query type, most hits wins.

Kept only as the baseline the benchmarks compare the local router against (bench/router_quality.py);
the product never routes with it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from core.routing.local import Classification, complexity_for, specialisations_for
from core.routing.selection import select_model
from core.types import QUERY_TYPES, Decision, Inventory, QueryType, RouteRequest, Turn

# "|" separates the trigger phrases; a phrase matches as whole words, case-insensitively
KEYWORDS: dict[QueryType, str] = {
    "coding": "code|function|python|javascript|java|sql|bug|debug|error|compile|script|program|api|class|"
    "regex|bash|html|css|algorithm|implement",
    "math": "calculate|solve|equation|integral|derivative|probability|sum|percent|math|number|algebra|"
    "geometry|how many|how much|average|prove",
    "creative": "story|poem|write|song|lyrics|creative|imagine|character|joke|slogan|haiku|fiction|novel|"
    "act as",
    "reasoning": "why|logic|puzzle|riddle|deduce|reason|if|therefore|true|false|conclude|argument|"
    "which of the following",
    "general": "",
}
_PATTERNS = {
    t: [re.compile(r"\b" + re.escape(w) + r"\b", re.I) for w in words.split("|") if w]
    for t, words in KEYWORDS.items()
}


class KeywordRouter:
    def classify(self, query: str, history: Sequence[Turn] = ()) -> Classification:
        hits = {t: sum(1 for p in _PATTERNS[t] if p.search(query)) for t in QUERY_TYPES}
        total = sum(hits.values())
        if total == 0:
            probs = {t: 1.0 if t == "general" else 0.0 for t in QUERY_TYPES}
        else:
            probs = {t: hits[t] / total for t in QUERY_TYPES}
        query_type: QueryType = max(QUERY_TYPES, key=lambda t: (probs[t], t == "general"))
        pieces = len(query.split()) * 4 // 3  # words to word pieces, roughly: no tokenizer here
        return Classification(
            query_type=query_type,
            probs=probs,
            confidence=probs[query_type],
            complexity=complexity_for(query_type, query, pieces),
            specializations=specialisations_for(query_type, query),
        )

    async def decide(self, req: RouteRequest, inv: Inventory) -> Decision:
        started = time.perf_counter()
        c = self.classify(req.query, req.history)
        sel = select_model(c.query_type, c.complexity, inv, specializations=c.specializations)
        return Decision(
            recommended_model=sel.model,
            confidence=c.confidence,
            reasoning=f"Keywords suggest a {c.query_type} question. {sel.reasoning}",
            query_type=c.query_type,
            complexity=c.complexity,
            specializations_needed=list(c.specializations),
            alternatives=sel.alternatives,
            download_if_needed=sel.download_needed,
            source="local",
            decision_ms=round((time.perf_counter() - started) * 1000.0, 2),
        )
