"""Check the retrieval-benchmark question set in bench/data/questions.json against its PDFs.

Each PDF is read with Comma's own reader (engine.documents.document.read_document), so pages are Comma's
pages: the 1-based physical page index. The script asserts that:

* every document a question names is listed under "documents", exists next to this script, and has
  the page count recorded there;
* question ids are unique, and every question has a non-empty question text, a known style
  ("document" or "reader") and at least one answer;
* every question's gold page lies within 1..pages of its document;
* every answer string appears on the gold page, case-insensitively and modulo whitespace;
* every document has at least MIN_PER_DOCUMENT questions;
* the two styles are balanced per document (their counts differ by at most one).

It also prints, for each question, how many OTHER pages of the same document contain its first
answer string, so that answers which could be found (or guessed) elsewhere are visible.

Run from the repository root:  .venv/bin/python bench/data/check_questions.py
Exits 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QUESTIONS = HERE / "questions.json"
MIN_PER_DOCUMENT = 15
STYLES = ("document", "reader")


def normalise(text: str) -> str:
    """Case-fold and collapse every run of whitespace to one space."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def load_pages(path: Path) -> list[str]:
    """The normalised text of each page of ``path``, as Comma reads it (index 0 is page 1)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from engine.documents.document import read_document

    document = read_document(path)
    return [normalise(document.page_text(page)) for page in range(1, document.pages + 1)]


def check(data: dict) -> tuple[list[str], list[str]]:
    """Return (report lines, failures) for the parsed questions.json."""
    failures: list[str] = []
    report: list[str] = []
    documents: dict = data.get("documents", {})
    questions: list[dict] = data.get("questions", [])

    pages: dict[str, list[str]] = {}
    for name, info in documents.items():
        path = HERE / name
        if not path.is_file():
            failures.append(f"{name}: file not found next to {QUESTIONS.name}")
            continue
        pages[name] = load_pages(path)
        if info.get("pages") != len(pages[name]):
            failures.append(f"{name}: questions.json says {info.get('pages')} pages, the reader gives {len(pages[name])}")

    ids = Counter(q.get("id") for q in questions)
    failures += [f"duplicate id {qid!r} ({n} times)" for qid, n in ids.items() if n > 1]

    per_style: dict[str, Counter] = defaultdict(Counter)
    for q in questions:
        qid, name, page = q.get("id"), q.get("document"), q.get("page")
        answers, style = q.get("answers") or [], q.get("style")
        if not str(q.get("question", "")).strip():
            failures.append(f"{qid}: empty question")
        if style not in STYLES:
            failures.append(f"{qid}: style {style!r} is not one of {STYLES}")
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            failures.append(f"{qid}: needs one or more non-empty answer strings")
            continue
        if name not in documents:
            failures.append(f"{qid}: document {name!r} is not listed under 'documents'")
            continue
        per_style[name][style] += 1
        if name not in pages:
            continue
        doc_pages = pages[name]
        if not isinstance(page, int) or not 1 <= page <= len(doc_pages):
            failures.append(f"{qid}: page {page!r} is outside 1..{len(doc_pages)}")
            continue
        gold = doc_pages[page - 1]
        for answer in answers:
            if normalise(answer) not in gold:
                failures.append(f"{qid}: answer {answer!r} is not on page {page}")
        first = normalise(answers[0])
        others = [p for p, text in enumerate(doc_pages, start=1) if p != page and first in text]
        listed = f" (pages {', '.join(map(str, others))})" if others else ""
        report.append(f"{qid:<10} {style:<8} p{page:<4} {answers[0]!r}: on {len(others)} other page(s){listed}")

    for name in documents:
        counts = per_style[name]
        total = sum(counts.values())
        report.append(f"{name}: {total} questions, " + ", ".join(f"{s} {counts[s]}" for s in STYLES))
        if total < MIN_PER_DOCUMENT:
            failures.append(f"{name}: only {total} questions (at least {MIN_PER_DOCUMENT} needed)")
        if abs(counts["document"] - counts["reader"]) > 1:
            failures.append(f"{name}: styles unbalanced ({counts['document']} document, {counts['reader']} reader)")
    return report, failures


def main() -> int:
    report, failures = check(json.loads(QUESTIONS.read_text(encoding="utf-8")))
    print("\n".join(report))
    ambiguous = [line for line in report if " other page(s)" in line and " on 0 other" not in line]
    print(f"\n{len(ambiguous)} question(s) whose first answer also appears on other pages.")
    if failures:
        print(f"\nFAILED ({len(failures)}):")
        print("\n".join(f"  {failure}" for failure in failures))
        return 1
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
