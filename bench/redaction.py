"""Precision and recall of the redactor (core/privacy.py) on a labelled set of chat lines.

    python bench/redaction.py [--data bench/data/redaction_set.jsonl] [--show-misses]

A labelled span counts as caught when none of its characters survive redaction. A redaction is a
true positive when it removes characters of some labelled span, and a false positive otherwise.
Which original characters survived is read off a character alignment of input and output, so the
redactor needs no span bookkeeping of its own. Prints a Markdown table: one row per kind and a total.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from difflib import SequenceMatcher
from pathlib import Path

from core.privacy import Redactor

DATA = Path(__file__).parent / "data" / "redaction_set.jsonl"
PLACEHOLDER = re.compile(r"\[[A-Z_]+(?::[a-z_]+)?\]")


def removed_ranges(before: str, after: str) -> list[tuple[int, int]]:
    """Runs of `before` that did not survive into `after`. Placeholders are dropped first, so a key's
    "github" is not matched with "[SECRET:github]"; matches under 3 characters are coincidence."""
    after = PLACEHOLDER.sub("", after)
    kept = [False] * len(before)
    for block in SequenceMatcher(None, before, after, autojunk=False).get_matching_blocks():
        if block.size >= 3:
            kept[block.a : block.a + block.size] = [True] * block.size
    ranges: list[tuple[int, int]] = []
    start = None
    for i, k in enumerate([*kept, True]):
        if not k and start is None:
            start = i
        elif k and start is not None:
            ranges.append((start, i))
            start = None
    return ranges


def evaluate(rows: list[dict], redactor: Redactor, show_misses: bool = False) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"spans": 0, "caught": 0, "fp": 0})
    for row in rows:
        text = row["text"]
        removed = removed_ranges(text, redactor.redact(text).text)
        gone = set()
        for a, b in removed:
            gone.update(range(a, b))
        for span in row["spans"]:
            c = counts[span["kind"]]
            c["spans"] += 1
            if all(i in gone for i in range(span["start"], span["end"])):
                c["caught"] += 1
            elif show_misses:
                missed = text[span["start"] : span["end"]]
                print(f"missed {span['kind']}: {missed!r} in {text!r}", file=sys.stderr)
        for a, b in removed:
            hit = any(a < s["end"] and s["start"] < b for s in row["spans"])
            if not hit:
                counts["(none)"]["fp"] += 1
                if show_misses:
                    print(f"false positive: {text[a:b]!r} in {text!r}", file=sys.stderr)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    started = time.perf_counter()
    counts = evaluate(rows, Redactor(), args.show_misses)
    ms_per_line = (time.perf_counter() - started) * 1000 / len(rows)

    fp = counts.pop("(none)", {"fp": 0})["fp"]
    print(f"`python bench/redaction.py` — {len(rows)} lines, {ms_per_line:.2f} ms a line (with alignment)\n")
    print("| kind | labelled spans | caught | recall |")
    print("|---|---:|---:|---:|")
    total_spans = total_caught = 0
    for kind in sorted(counts):
        c = counts[kind]
        total_spans += c["spans"]
        total_caught += c["caught"]
        print(f"| {kind} | {c['spans']} | {c['caught']} | {c['caught'] / c['spans']:.3f} |")
    recall = total_caught / total_spans if total_spans else 1.0
    precision = total_caught / (total_caught + fp) if total_caught + fp else 1.0
    print(f"| **all** | {total_spans} | {total_caught} | {recall:.3f} |")
    print(f"\nFalse positives (redactions covering no labelled span): {fp}")
    print(f"Precision {precision:.3f}, recall {recall:.3f}")


if __name__ == "__main__":
    main()
