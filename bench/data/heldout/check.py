"""Check the held-out question set (questions.json) against its documents (docs/).

Every document is read with Comma's own reader (engine.documents.document.read_document), so a
page is Comma's page: a PDF's physical page, or one of the ~3,000-character pages that Comma cuts
from a .txt file at paragraph breaks. The script asserts that:

* every document listed exists in docs/ with the recorded SHA-256 and Comma page count, and every
  question and follow-up names a listed document;
* ids are unique (questions and follow-ups together), and every entry has a known style;
* the styles are balanced: "reader" and "document" differ by at most 10% of the count, overall and
  in each part, for the answerable questions, for all single questions and for the follow-up turns;
* every answerable question has a gold page inside the document, at least one answer, and every one
  of its answers on that page (case-folded, whitespace collapsed) and none of them inside the
  question itself; pages in "also_on" are valid;
* a "polarity", where there is one, is "yes" or "no" and belongs to an answerable question or turn;
* every unanswerable question has "page": null, no answers, a "why" note, and none of its
  "absent_terms" anywhere in the document;
* every follow-up has exactly two turns, each with a question, a style, a gold page and answers
  that are all on that page;
* the counts meet the minimums: >= 150 answerable, >= 30 unanswerable, >= 30 follow-ups, >= 6
  documents, >= 3 legal texts;
* the split is by document: each document is in exactly one part ("dev" or "test"), the "split"
  table agrees, every question and follow-up carries its document's part, each part has a legal
  text and a manual, and the test part holds 40-60% of the answerable questions;
* reader-style questions share fewer words with their gold page than document-style ones (mean
  share of the question's content words found on the page, per part).

It prints a summary table per part and document. Exit status 0 when every check passes, 1 otherwise.

Run from the repository root:  .venv/bin/python bench/data/heldout/check.py [--verbose]
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DOCS = HERE / "docs"
QUESTIONS = HERE / "questions.json"

STYLES = ("reader", "document")
PARTS = ("dev", "test")
MIN_ANSWERABLE, MIN_UNANSWERABLE, MIN_FOLLOWUPS, MIN_DOCUMENTS, MIN_LEGAL = 150, 30, 30, 6, 3
BALANCE = 0.10  # |reader - document| <= BALANCE * (reader + document)
TEST_SHARE = (0.40, 0.60)  # share of the answerable questions in the test part

STOPWORDS = set(
    """
a an the and or but if of to in on at by for with from as is are was were be been being do does did
doing have has had i me my we our you your he she it its they them their this that these those what
which who whom whose when where why how can could may might must shall should will would not no any
all some such than then there here into out up down over under about after before so too very just
also only own same other both each few more most s t don't isn't it's i'm what's i've can't doesn't
""".split()
)


def normalise(text: str) -> str:
    """Case-fold and collapse every run of whitespace to one space."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9][a-z0-9'.+-]*[a-z0-9]|[a-z0-9]", text.casefold())} - STOPWORDS


def read_pages(path: Path) -> tuple[list[str], str]:
    """The normalised text of each Comma page of ``path`` (index 0 is page 1), and Comma's SHA-256."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from engine.documents.document import read_document

    document = read_document(path)
    return [normalise(document.page_text(p)) for p in range(1, document.pages + 1)], document.sha256


class Checker:
    def __init__(self, data: dict, verbose: bool = False) -> None:
        self.data = data
        self.verbose = verbose
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.pages: dict[str, list[str]] = {}

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def known_document(self, entry: dict, documents: dict) -> bool:
        """Whether a question's or follow-up's document is listed, and in the part it claims."""
        eid, name = entry.get("id"), entry.get("document")
        if name not in documents:
            self.fail(f"{eid}: document {name!r} is not listed under 'documents'")
            return False
        if entry.get("part") != documents[name].get("part"):
            self.fail(f"{eid}: part {entry.get('part')!r} but {name} is in {documents[name].get('part')!r}")
        return True

    # -- documents -------------------------------------------------------------------------------
    def check_documents(self) -> None:
        documents: dict = self.data.get("documents", {})
        for name, info in documents.items():
            path = DOCS / name
            if not path.is_file():
                self.fail(f"{name}: not found in {DOCS.relative_to(REPO)}")
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != info.get("sha256"):
                self.fail(f"{name}: SHA-256 is {digest}, questions.json records {info.get('sha256')}")
            pages, comma_sha = read_pages(path)
            if comma_sha != digest:
                self.fail(f"{name}: Comma's SHA-256 {comma_sha} differs from the file's {digest}")
            self.pages[name] = pages
            if info.get("pages") != len(pages):
                self.fail(f"{name}: questions.json says {info.get('pages')} pages, Comma reads {len(pages)}")
            if info.get("part") not in PARTS:
                self.fail(f"{name}: part {info.get('part')!r} is not one of {PARTS}")
            if not info.get("source") or not info.get("kind"):
                self.fail(f"{name}: needs a source and a kind")
        extra = sorted(p.name for p in DOCS.iterdir() if p.name not in documents) if DOCS.is_dir() else []
        if extra:
            self.notes.append(f"files in docs/ not listed in questions.json: {', '.join(extra)}")

    # -- one gold page with its answers ----------------------------------------------------------------
    def check_gold(self, label: str, name: str, page, answers, also_on=None, question: str = "") -> None:
        pages = self.pages.get(name)
        if pages is None:
            return
        if not isinstance(page, int) or not 1 <= page <= len(pages):
            self.fail(f"{label}: page {page!r} is outside 1..{len(pages)}")
            return
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            self.fail(f"{label}: needs one or more non-empty answer strings")
            return
        for answer in answers:
            if normalise(answer) not in pages[page - 1]:
                self.fail(f"{label}: answer {answer!r} is not on page {page}")
            if normalise(answer) in normalise(question):
                self.fail(f"{label}: answer {answer!r} is already in the question (any reply echoing it would count)")
        for other in also_on or []:
            if not isinstance(other, int) or not 1 <= other <= len(pages) or other == page:
                self.fail(f"{label}: also_on page {other!r} is not another page of the document")
        if self.verbose:
            first = normalise(answers[0])
            elsewhere = [p for p, text in enumerate(pages, 1) if p != page and first in text]
            self.notes.append(
                f"{label:<8} p{page:<4} {answers[0]!r} also on {len(elsewhere)} other page(s)"
                + (f" {elsewhere[:8]}" if elsewhere else "")
            )

    def overlap(self, name: str, page: int, question: str) -> float | None:
        pages = self.pages.get(name)
        if pages is None or not isinstance(page, int) or not 1 <= page <= len(pages):
            return None
        asked = words(question)
        if not asked:
            return None
        return len(asked & words(pages[page - 1])) / len(asked)

    # -- questions, follow-ups -------------------------------------------------------------------------
    def check_entries(self) -> None:
        documents: dict = self.data.get("documents", {})
        questions: list[dict] = self.data.get("questions", [])
        followups: list[dict] = self.data.get("followups", [])

        ids = Counter(e.get("id") for e in questions + followups)
        self.failures += [f"duplicate id {qid!r} ({n} times)" for qid, n in ids.items() if n > 1]

        self.overlaps: dict[tuple[str, str], list[float]] = defaultdict(list)
        for q in questions:
            qid, name = q.get("id"), q.get("document")
            if not self.known_document(q, documents):
                continue
            if q.get("style") not in STYLES:
                self.fail(f"{qid}: style {q.get('style')!r} is not one of {STYLES}")
            if not str(q.get("question", "")).strip():
                self.fail(f"{qid}: empty question")
            self.check_polarity(qid, q)
            if q.get("answerable") is True:
                self.check_gold(qid, name, q.get("page"), q.get("answers"), q.get("also_on"), q.get("question", ""))
                share = self.overlap(name, q.get("page"), q.get("question", ""))
                if share is not None:
                    self.overlaps[(q.get("part"), q.get("style"))].append(share)
            elif q.get("answerable") is False:
                if q.get("page") is not None:
                    self.fail(f"{qid}: unanswerable but page is {q.get('page')!r} (should be null)")
                if q.get("answers"):
                    self.fail(f"{qid}: unanswerable but has answers {q.get('answers')!r}")
                if not str(q.get("why", "")).strip():
                    self.fail(f"{qid}: unanswerable needs a 'why' note")
                whole = " ".join(self.pages.get(name, []))
                for term in q.get("absent_terms") or []:
                    if normalise(term) in whole:
                        self.fail(f"{qid}: absent term {term!r} does occur in {name}")
            else:
                self.fail(f"{qid}: 'answerable' must be true or false")

        for f in followups:
            fid, name = f.get("id"), f.get("document")
            if not self.known_document(f, documents):
                continue
            turns = f.get("turns") or []
            if len(turns) != 2:
                self.fail(f"{fid}: has {len(turns)} turns, needs exactly 2")
            for i, t in enumerate(turns, 1):
                label = f"{fid}/{i}"
                if not str(t.get("question", "")).strip():
                    self.fail(f"{label}: empty question")
                if t.get("style") not in STYLES:
                    self.fail(f"{label}: style {t.get('style')!r} is not one of {STYLES}")
                self.check_gold(label, name, t.get("page"), t.get("answers"), t.get("also_on"), t.get("question", ""))
                self.check_polarity(label, t)

    def check_polarity(self, label: str, entry: dict) -> None:
        if "polarity" not in entry:
            return
        if entry["polarity"] not in ("yes", "no"):
            self.fail(f"{label}: polarity {entry['polarity']!r} is not 'yes' or 'no'")
        if entry.get("answerable") is False:
            self.fail(f"{label}: an unanswerable question has no polarity")

    # -- counts, balance, split ------------------------------------------------------------------------
    def balanced(self, label: str, styles: Counter) -> None:
        r, d = styles["reader"], styles["document"]
        if r + d and abs(r - d) > BALANCE * (r + d):
            self.fail(f"{label}: styles unbalanced ({r} reader, {d} document)")

    def check_counts_and_split(self) -> None:
        documents: dict = self.data.get("documents", {})
        questions: list[dict] = self.data.get("questions", [])
        followups: list[dict] = self.data.get("followups", [])
        answerable = [q for q in questions if q.get("answerable") is True]
        unanswerable = [q for q in questions if q.get("answerable") is False]

        for label, n, least in (
            ("answerable questions", len(answerable), MIN_ANSWERABLE),
            ("unanswerable questions", len(unanswerable), MIN_UNANSWERABLE),
            ("follow-ups", len(followups), MIN_FOLLOWUPS),
            ("documents", len(documents), MIN_DOCUMENTS),
            ("legal texts", sum(bool(i.get("legal")) for i in documents.values()), MIN_LEGAL),
        ):
            if n < least:
                self.fail(f"only {n} {label} (at least {least} needed)")

        for scope in (None,) + PARTS:
            inside = (lambda e: True) if scope is None else (lambda e, s=scope: e.get("part") == s)
            where = "overall" if scope is None else f"part {scope}"
            self.balanced(f"{where}, answerable", Counter(q.get("style") for q in answerable if inside(q)))
            self.balanced(f"{where}, all single questions", Counter(q.get("style") for q in questions if inside(q)))
            self.balanced(
                f"{where}, follow-up turns", Counter(t.get("style") for f in followups if inside(f) for t in f.get("turns", []))
            )

        split = self.data.get("split", {})
        for part in PARTS:
            listed = sorted(split.get(part, []))
            actual = sorted(n for n, i in documents.items() if i.get("part") == part)
            if listed != actual:
                self.fail(f"split[{part!r}] lists {listed}, the documents marked {part!r} are {actual}")
            kinds = [documents[n] for n in actual]
            if not any(i.get("legal") for i in kinds):
                self.fail(f"part {part}: has no legal text")
            if not any(i.get("kind") == "manual" for i in kinds):
                self.fail(f"part {part}: has no manual")
        both = set(split.get("dev", [])) & set(split.get("test", []))
        if both:
            self.fail(f"documents in both parts: {sorted(both)}")
        if answerable:
            share = sum(q.get("part") == "test" for q in answerable) / len(answerable)
            if not TEST_SHARE[0] <= share <= TEST_SHARE[1]:
                want = f"{TEST_SHARE[0]:.0%}-{TEST_SHARE[1]:.0%}"
                self.fail(f"test part holds {share:.0%} of the answerable questions (want {want})")

        for part in PARTS:
            reader, document = self.overlaps.get((part, "reader"), []), self.overlaps.get((part, "document"), [])
            if reader and document and sum(reader) / len(reader) >= sum(document) / len(document):
                self.fail(
                    f"part {part}: reader-style questions share as many words with their gold page as "
                    f"document-style ones ({sum(reader) / len(reader):.2f} vs {sum(document) / len(document):.2f})"
                )

    # -- report ---------------------------------------------------------------------------------------
    def report(self) -> str:
        documents: dict = self.data.get("documents", {})
        questions: list[dict] = self.data.get("questions", [])
        followups: list[dict] = self.data.get("followups", [])
        header = (
            f"{'document':<26} {'kind':<13} {'pages':>5} {'answerable':>10} {'reader':>6} {'doc':>5} "
            f"{'unans.':>6} {'follow-ups':>10} {'turns r/d':>9}"
        )
        lines = []
        for part in PARTS:
            names = [n for n, i in documents.items() if i.get("part") == part]
            lines += ["", f"== part {part} ==", header, "-" * len(header)]
            totals = Counter()
            for name in names:
                info = documents[name]
                ans = [q for q in questions if q.get("document") == name and q.get("answerable") is True]
                una = [q for q in questions if q.get("document") == name and q.get("answerable") is False]
                fol = [f for f in followups if f.get("document") == name]
                turns = Counter(t.get("style") for f in fol for t in f.get("turns", []))
                row = Counter(
                    answerable=len(ans),
                    reader=sum(q.get("style") == "reader" for q in ans),
                    document=sum(q.get("style") == "document" for q in ans),
                    unanswerable=len(una),
                    followups=len(fol),
                    turns_r=turns["reader"],
                    turns_d=turns["document"],
                )
                totals += row
                kind = info.get("kind", "?") + (" (legal)" if info.get("legal") and info.get("kind") != "licence" else "")
                lines.append(
                    f"{name:<26} {kind:<13} {info.get('pages', 0):>5} {row['answerable']:>10} "
                    f"{row['reader']:>6} {row['document']:>5} {row['unanswerable']:>6} "
                    f"{row['followups']:>10} {row['turns_r']:>4}/{row['turns_d']:<4}"
                )
            lines.append(
                f"{'total':<26} {'':<13} {'':>5} {totals['answerable']:>10} {totals['reader']:>6} "
                f"{totals['document']:>5} {totals['unanswerable']:>6} {totals['followups']:>10} "
                f"{totals['turns_r']:>4}/{totals['turns_d']:<4}"
            )
            una_styles = Counter(q.get("style") for q in questions if q.get("part") == part and q.get("answerable") is False)
            lines.append(f"unanswerable styles: reader {una_styles['reader']}, document {una_styles['document']}")
            shares = {s: self.overlaps.get((part, s), []) for s in STYLES}
            lines.append(
                "mean share of a question's content words found on its gold page: "
                + ", ".join(f"{s} {sum(v) / len(v):.2f}" for s, v in shares.items() if v)
            )
        by_kind = Counter()
        for q in questions:
            if q.get("answerable") is True:
                by_kind[(documents.get(q.get("document"), {}).get("kind"), q.get("style"))] += 1
        lines += [
            "",
            "answerable questions by kind: "
            + ", ".join(
                f"{kind} {by_kind[(kind, 'reader')]} reader / {by_kind[(kind, 'document')]} document"
                for kind in sorted({k for k, _ in by_kind})
            ),
        ]
        answerable = sum(q.get("answerable") is True for q in questions)
        lines.append(
            f"all: {len(documents)} documents ({sum(bool(i.get('legal')) for i in documents.values())} legal), "
            f"{answerable} answerable, {len(questions) - answerable} unanswerable, {len(followups)} follow-ups"
        )
        return "\n".join(lines)


def main() -> int:
    verbose = "--verbose" in sys.argv[1:]
    checker = Checker(json.loads(QUESTIONS.read_text(encoding="utf-8")), verbose)
    checker.check_documents()
    checker.check_entries()
    checker.check_counts_and_split()
    print(checker.report())
    if checker.notes:
        print("\n" + "\n".join(checker.notes))
    if checker.failures:
        print(f"\nFAILED ({len(checker.failures)}):")
        print("\n".join(f"  {failure}" for failure in checker.failures))
        return 1
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
