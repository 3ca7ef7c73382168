"""Right answers on documents no choice was made on: the held-out set of bench/data/heldout.

Method: bench/data/heldout/questions.json holds real documents from Debian packages (licences,
which are contracts, and manuals), split by document into a ``dev`` part, on which every choice
is made, and a ``test`` part, reported and never used for a choice. Each part has answerable
questions (the page that holds the answer and the strings an answer must contain; half in the
document's words, half in a reader's), unanswerable ones (the document does not say) and
two-turn follow-ups whose second question points back at the first. Each document of the part is
read through Comma's real pipeline in a fresh library (its text, full-text index and meaning
index; ``Comma.ingest`` without the deep read when ``deep`` is asked for); then, per
``--conditions``:
- ``pages``: no model answers: where the pipeline's page ranking puts the gold page, whether the
  spot reading's stretches hold an accepted answer string, and how many tokens they take (a
  follow-up's second turn searched as the pipeline searches it, with the turn before);
- ``spot``: before the answering model's deep read (passages found by the indexes and read on
  the spot);
- ``deep``: after its deep read, from its memory and store.
Every question is asked through ``Comma.ask`` (greedy, at most 128 tokens); a follow-up's second
turn in the same session. Judged per row: ``right`` (answerable: an accepted string in the
answer, case-folded, white space folded, and the answer is not a refusal; unanswerable: the
answer says the document does not say), ``evidence`` (the gold page among the answer's pages)
and ``first`` (the gold page first), time to the first token in process (models loaded). Every
row is printed to stderr as it is measured; the summary gives, per condition, the figures per
kind (answerable by style, unanswerable, follow-ups). A yes/no question carries its
``polarity``: an answer that opens with "yes" or "no" is right only if it opens with that one.

    python bench/heldout.py --part dev --conditions pages    # in a minute: the pages found and read
    python bench/heldout.py --part dev [--conditions spot,deep] [--documents A.txt,B.pdf] [--home DIR]
    python bench/heldout.py --part dev --from-log RUN.txt   # the report of a run stopped before its end
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from engine.generate import Sampling  # noqa: E402
from engine.pipeline.asking import find, search_words  # noqa: E402
from engine.pipeline.comma import Comma  # noqa: E402
from engine.recall import spot_reading  # noqa: E402
from storage.library import Library  # noqa: E402

DATA = ROOT / "bench" / "data" / "heldout"
ANSWER = Sampling(max_tokens=128)
CONDITIONS = ("pages", "spot", "deep")

# How an answer says that the document does not hold what was asked, judged on the answer's
# first sentences (where a model says so): a negation whose subject is the text itself, or
# "not mentioned", "no information", "cannot find"; a plain "does not include X" is an answer.
_SOURCE = r"(?:document|text|passages?|licen[cs]e|manual|pages?|sections?|agreement|contract|policy|it)"
_NOT_SAID = re.compile(
    rf"\b{_SOURCE}\s+(?:\w+\s+){{0,2}}?(?:does|do|did)\s*(?:not|n't)\s+(?:\w+\s+)?"
    r"(?:say|state|mention|specify|address|cover|discuss|define"
    r"|(?:contain|include|provide|give)\s+(?:any\s+|the\s+|an?\s+)?(?:answer|information|details?|mention))\b"
    r"|\b(?:not|never)\s+(?:explicitly\s+)?(?:mentioned|stated|specified|addressed|covered|discussed|defined)\b"
    r"|\bno\s+(?:information|mention|indication|details?)\b"
    r"|\b(?:cannot|can't|could\s+not|couldn't|unable\s+to)\s+(?:\w+\s+)?(?:find|answer|determine|tell)\b"
    r"|\bis\s+silent\b"
    r"|\b(?:document\s+does|passages\s+read\s+for\s+this\s+answer\s+do)\s+not\s+contain\b",  # grounding's note
    re.IGNORECASE)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def says_not_in_document(answer: str) -> bool:
    """Whether the answer says the document does not say: in its first 300 characters, where
    a model says so, or in its last paragraph, where Comma notes words the document lacks."""
    return bool(_NOT_SAID.search(answer[:300]) or _NOT_SAID.search(answer.rsplit("\n\n", 1)[-1]))


def opens_with(answer: str) -> str | None:
    """"yes" or "no" when the answer opens with it."""
    first = re.match(r"\W*(\w+)", answer)
    word = first.group(1).casefold() if first else ""
    return word if word in ("yes", "no") else None


def judge(turn: dict, answerable: bool, answer: str, pages: list[int]) -> dict:
    refused = says_not_in_document(answer)
    if not answerable:
        return {"right": refused, "refused": refused}
    text = normalise(answer)
    found = any(normalise(a) in text for a in turn["answers"])
    said = opens_with(answer) if turn.get("polarity") else None
    right = (said == turn["polarity"]) if said else found
    return {"right": right and not refused, "refused": refused, "evidence": turn["page"] in pages,
            "first": bool(pages) and pages[0] == turn["page"]}


def placed(comma: Comma, doc_id: str, turn: dict, searches: list[str]) -> dict:
    """Where the pipeline finds what ``turn`` needs when it searches with ``searches``, no model answering."""
    model = comma.answerer or comma.model  # its tokenizer sizes the spot reading
    found = find(comma.find_pages, doc_id, searches)
    spot = spot_reading.spot_pages(found, lambda page: comma.library.page_text(doc_id, page),
                                   lambda text: len(model.tokenize(text)))
    order = [page for page, _ in found.pages]
    read = normalise(" ".join(spot.values()))
    return {"place": order.index(turn["page"]) + 1 if turn["page"] in order else None,
            "read": list(spot), "evidence": turn["page"] in spot,
            "holds": any(normalise(a) in read for a in turn["answers"]),
            "tokens": sum(len(model.tokenize(text)) for text in spot.values())}


def asked(comma: Comma, doc_id: str, turn: dict, answerable: bool, session: str | None = None) -> dict:
    result = comma.ask(doc_id, turn["question"], session, sampling=ANSWER)
    return {"answer": result.answer, "pages": result.pages, "model": result.model,
            "read_on_the_spot": result.read_on_the_spot, "ttft_s": result.ttft_s, "seconds": result.seconds,
            "session": result.session_id, **judge(turn, answerable, result.answer, result.pages)}


def place_all(comma: Comma, doc_id: str, questions: list[dict], followups: list[dict], rows: list[dict]) -> None:
    for q in (q for q in questions if q["answerable"]):
        row = {"condition": "pages", "id": q["id"], "document": q["document"], "part": q["part"],
               "kind": "answerable", "style": q["style"], "page": q["page"],
               **placed(comma, doc_id, q, [q["question"]])}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    for f in followups:
        first_turn, second_turn = f["turns"]
        searches = search_words(second_turn["question"], [{"role": "user", "content": first_turn["question"]}])
        row = {"condition": "pages", "id": f["id"], "document": f["document"], "part": f["part"],
               "kind": "followup", "style": second_turn["style"], "page": second_turn["page"],
               **placed(comma, doc_id, second_turn, searches)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)


def ask_all(comma: Comma, doc_id: str, questions: list[dict], followups: list[dict], condition: str,
            rows: list[dict]) -> None:
    for q in questions:
        row = {"condition": condition, "id": q["id"], "document": q["document"], "part": q["part"],
               "kind": "answerable" if q["answerable"] else "unanswerable", "style": q["style"],
               "page": q["page"], **asked(comma, doc_id, q, q["answerable"])}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    for f in followups:
        first_turn, second_turn = f["turns"]
        first = asked(comma, doc_id, first_turn, True)
        second = asked(comma, doc_id, second_turn, True, first["session"])
        row = {"condition": condition, "id": f["id"], "document": f["document"], "part": f["part"],
               "kind": "followup", "style": second_turn.get("style", "reader"), "page": second_turn["page"],
               "first_turn": first, **second}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)


def figures(chosen: list[dict]) -> dict:
    if "place" in chosen[0]:
        places = [r["place"] for r in chosen]
        return {"questions": len(chosen),
                **{f"gold_page_top{k}": round(sum(p is not None and p <= k for p in places) / len(chosen), 3)
                   for k in (1, 2, 5)},
                "gold_page_read": round(sum(r["evidence"] for r in chosen) / len(chosen), 3),
                "read_holds_answer": round(sum(r["holds"] for r in chosen) / len(chosen), 3),
                "tokens_read_mean": round(statistics.mean(r["tokens"] for r in chosen))}
    out = {"questions": len(chosen), "right": round(sum(r["right"] for r in chosen) / len(chosen), 3),
           "ttft_median_s": round(statistics.median(r["ttft_s"] for r in chosen), 2)}
    if "evidence" in chosen[0]:
        out["gold_page_among_pages"] = round(sum(r["evidence"] for r in chosen) / len(chosen), 3)
        out["gold_page_first"] = round(sum(r["first"] for r in chosen) / len(chosen), 3)
        out["refused"] = round(sum(r["refused"] for r in chosen) / len(chosen), 3)
    return out


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    for condition in CONDITIONS:
        mine = [r for r in rows if r["condition"] == condition]
        if not mine:
            continue
        groups = {
            "document_words": [r for r in mine if r["kind"] == "answerable" and r["style"] == "document"],
            "reader_words": [r for r in mine if r["kind"] == "answerable" and r["style"] == "reader"],
            "unanswerable": [r for r in mine if r["kind"] == "unanswerable"],
            "followups": [r for r in mine if r["kind"] == "followup"],
        }
        out[condition] = {name: figures(group) for name, group in groups.items() if group}
    return out


def run(args) -> tuple[dict, object]:
    spec = json.loads((DATA / "questions.json").read_text())
    names = args.documents or [n for n, d in spec["documents"].items() if d["part"] == args.part]
    rows: list[dict] = []
    reads: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        comma = Comma(Library(Path(args.home or scratch)))
        for name in names:
            if spec["documents"][name]["part"] != args.part:
                raise SystemExit(f"{name} belongs to the {spec['documents'][name]['part']} part, not {args.part}")
            if "deep" in args.conditions:  # the deep read takes what ingest keeps
                report = comma.ingest(DATA / "docs" / name, notes=False, deep=False)
                doc_id, reads[name] = report["doc_id"], {k: report[k] for k in ("pages", "tokens", "seconds")}
            else:  # no model reads: the text and its two indexes are what a question needs first
                document = comma.read_file(DATA / "docs" / name)
                doc_id = comma.library.add_document(document)
                reads[name] = {"pages": document.pages, "meaning": comma.index_meaning(document)}
            questions = [q for q in spec["questions"] if q["document"] == name]
            followups = [f for f in spec["followups"] if f["document"] == name]
            if "pages" in args.conditions:
                place_all(comma, doc_id, questions, followups, rows)
            if "spot" in args.conditions:
                ask_all(comma, doc_id, questions, followups, "spot", rows)
            if "deep" in args.conditions:
                deep = comma.deep_read(doc_id)
                reads[name]["deep_seconds"] = deep["seconds"]
                ask_all(comma, doc_id, questions, followups, "deep", rows)
        model = comma.answerer or comma.model
    return {"part": args.part, "documents": reads, "rows": rows, "summary": summarize(rows)}, model


def from_log(log: Path, part: str) -> dict:
    """The rows a run printed to stderr, summarised as the whole run would have been."""
    rows = []
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # llama.cpp's own messages
        if isinstance(row, dict) and row.get("condition") in CONDITIONS and row.get("part") == part:
            rows.append(row)
    documents = sorted({r["document"] for r in rows})
    return {"part": part, "from_log": str(log), "documents": documents, "rows": rows, "summary": summarize(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("dev", "test"), required=True)
    parser.add_argument("--conditions", default="spot,deep", type=lambda s: [c for c in s.split(",") if c])
    parser.add_argument("--documents", type=lambda s: [x for x in s.split(",") if x],
                        help="only these documents of the part (default: all of it)")
    parser.add_argument("--home", type=Path, help="keep the library there")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from-log", type=Path, help="summarise the stderr of a run stopped before its end")
    args = parser.parse_args()
    unknown = set(args.conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown condition(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONDITIONS)}")
    out = args.out or ROOT / "bench" / "results" / f"heldout_{args.part}_cpu.json"
    if args.from_log:
        from engine.models.answering import FILE_NAME

        emit("heldout", __doc__.split("Method:", 1)[1], FILE_NAME, from_log(args.from_log, args.part), out)
        return
    result, model = run(args)
    emit("heldout", __doc__.split("Method:", 1)[1], model, result, out)


if __name__ == "__main__":
    main()
