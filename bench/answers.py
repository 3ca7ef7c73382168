"""Right answers: the small model with recall against the answering model, before and after its
deep read, and the answering model given the page that holds the answer (its ceiling).

Method (Comma's real ingest, deep-read and ask paths; greedy answers of at most 96 tokens;
bench/data/questions.json: two manuals from Debian packages, each question with the page that
holds its answer and the strings an answer must contain, half in the manual's words and half in
a reader's; see bench/data/SOURCES.md). Each document is read once by the small model (notes
off, recall store on). Rows per question:
- ``small``: the small model answers from its memory and recall store (``--answering off``);
- ``spot``: the answering model, before its deep read: it reads the question's best pages on
  the spot (engine/recall/spot_reading.py) and answers from them;
- ``deep``: the answering model after its deep read of the document (``--deep`` names which
  documents get one: about 30 minutes per 70K tokens on 2 cores), from its memory and store;
- ``gold``: the answering model given the gold page alone, read with full attention.
Per row: ``right`` (an accepted string in the answer, case-folded), ``evidence`` (the gold page
among the answer's pages), time to first token and total seconds, in process (the models
loaded). Every row is printed to stderr as it is measured. A run beside other work gives
right accuracy figures and noisy times; the README says which.

    python bench/answers.py [--deep R-intro.pdf] [--documents R-intro.pdf,reportlab-userguide.pdf] [--home DIR]
    python bench/answers.py --from-log RUN1.txt [RUN2.txt]  # the report of runs stopped early or of other --rows
    python bench/answers.py speed [--runs 5]          # with the CPU to yourself
    python bench/answers.py weights                   # the answering model's weight types on this CPU
    python bench/answers.py deep-rate [--document reportlab-userguide.pdf] [--pages 30]  # CPU to yourself

speed: R-intro.pdf (74K tokens) read by the small model, then, before the deep read, ``--runs``
fresh processes of ``comma ask --json`` (first token with the page read on the spot); the deep
read timed (tokens/s of the whole read) against llama.cpp's own prefill rate of the same weights
in SepLLM's steady state (324 cached, 476 more, no logits, median of 5; engine/backends/gguf/probe.py)
measured right after it in the same process (and with 128-token chunks, as the window's
background read goes); then ``--runs`` fresh processes of ``comma ask
--json`` (first token after the deep read), ``--runs`` follow-ups on one live conversation, and
the answering model's store in MB per 100 pages.
deep-rate: the first ``--pages`` pages of ``--document`` read by the small model, then the deep
read timed (tokens/s of the whole read, Comma's real path) between two measurements of llama.cpp's
own prefill of the same weights at SepLLM's steady state (median of 5 each), in one process, and
once more with 128-token chunks (the window's); the fraction is against the mean of the two.
weights: the answering model as shipped (Q4_K_M) and copies made here with llama.cpp's quantizer
(F16: an exact upcast; Q8_0), prefill and decode tokens/s (engine/backends/gguf/probe.py), flash
attention on (and off for Q4_K_M), one model at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import emit  # noqa: E402
from engine.answering.conversation import Conversation  # noqa: E402
from engine.generate import Sampling  # noqa: E402
from engine.pipeline.comma import Comma  # noqa: E402
from engine.policy import Full  # noqa: E402
from engine.reading.reader import read  # noqa: E402
from engine.recall import spot_reading  # noqa: E402
from storage.library import Library  # noqa: E402

DATA = ROOT / "bench" / "data"
ANSWER = Sampling(max_tokens=96)
ROWS = ("small", "spot", "deep", "gold")


def judge(question: dict, answer: str, pages: list[int]) -> dict:
    text = answer.lower()
    return {"right": any(a.lower() in text for a in question["answers"]), "evidence": question["page"] in pages}


def asked(comma: Comma, doc_id: str, question: dict) -> dict:
    result = comma.ask(doc_id, question["question"], sampling=ANSWER)
    return {"answer": result.answer, "pages": result.pages, "model": result.model, "ttft_s": result.ttft_s,
            "seconds": result.seconds, **judge(question, result.answer, result.pages)}


def gold(comma: Comma, doc: dict, question: dict) -> dict:
    """The answering model's ceiling: the gold page alone, read in full, then the question."""
    model = comma.answerer
    started = time.perf_counter()
    page = question["page"]
    document = spot_reading.pages_document(Path(doc["path"]), doc["title"],
                                           {page: comma.library.page_text(doc["id"], page)}, doc["pages"])
    memory = read(model, document, Full(), notes=False).memory
    with Conversation(model, memory) as conversation:
        pieces = conversation.ask(question["question"], [], ANSWER)
        first = next(pieces, "")
        ttft = time.perf_counter() - started
        answer = (first + "".join(pieces)).strip()
        pages = conversation.answer_pages()
    return {"answer": answer, "pages": pages, "ttft_s": round(ttft, 3),
            "seconds": round(time.perf_counter() - started, 3), **judge(question, answer, pages)}


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    for method in ROWS:
        for style in ("document", "reader", "all"):
            chosen = [r[method] for r in rows if method in r and style in ("all", r["style"])]
            if chosen:
                out.setdefault(method, {})[style] = {
                    "questions": len(chosen),
                    "accuracy": round(sum(c["right"] for c in chosen) / len(chosen), 3),
                    "evidence_recall": round(sum(c["evidence"] for c in chosen) / len(chosen), 3),
                    "ttft_median_s": round(statistics.median(c["ttft_s"] for c in chosen), 2)}
    return out


def run(args) -> tuple[dict, object]:
    spec = json.loads((DATA / "questions.json").read_text())
    rows: list[dict] = []
    reads: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        library = Library(Path(args.home or scratch))
        small = Comma(library, answering="off")
        answering = Comma(library)
        answering.models.use(reading=small.model)  # one copy of the reading model for both
        for name in args.documents:
            report = small.ingest(DATA / name, notes=False, deep=False)
            reads[name] = {"fast": {k: report[k] for k in ("tokens", "pages", "seconds", "recall_bytes")}}
            doc = library.document(report["doc_id"])
            questions = [q for q in spec["questions"] if q["document"] == name]
            mine = []
            for q in questions:
                row = {"id": q["id"], "document": name, "style": q["style"], "page": q["page"]}
                if "small" in args.rows:
                    row["small"] = asked(small, doc["id"], q)
                if "spot" in args.rows:
                    row["spot"] = asked(answering, doc["id"], q)
                if "gold" in args.rows:
                    row["gold"] = gold(answering, doc, q)
                print(json.dumps(row), file=sys.stderr, flush=True)
                mine.append(row)
            if name in args.deep:
                started = time.perf_counter()
                deep = answering.deep_read(doc["id"])
                reads[name]["deep"] = {**{k: deep[k] for k in ("tokens", "pages", "recall_bytes", "memory_bytes")},
                                       "seconds": round(time.perf_counter() - started, 1),
                                       "tokens_per_s": round(deep["tokens"] / (time.perf_counter() - started), 1)}
                print(json.dumps(reads[name]), file=sys.stderr, flush=True)
                for row, q in zip(mine, questions, strict=True):
                    row["deep"] = asked(answering, doc["id"], q)
                    print(json.dumps({"id": q["id"], "deep": row["deep"]}), file=sys.stderr, flush=True)
            rows += mine
        model = answering.answerer
    return {"reads": reads, "questions": rows, "summary": summarize(rows)}, model


QUESTIONS = ("How do I get help on a function?", "And how do I quit R?", "What does the function c() do?",
             "How are comments written?", "What is a data frame?", "How do I read a table from a file?")


def fresh_asks(home: str, doc_id: str, runs: int) -> list[dict]:
    import os
    import subprocess

    env = {**os.environ, "COMMA_HOME": home, "COMMA_ANSWERING": "auto"}
    out = []
    for question in QUESTIONS[:runs]:
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), "ask", doc_id, question, "--json"],
                              env=env, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout)
        out.append({k: result[k] for k in ("ttft_s", "seconds", "model", "read_on_the_spot", "pages")})
    return out


def speed(args) -> tuple[dict, object]:
    from engine.backends.gguf.probe import STEADY_CACHED, STEADY_CHUNK, prefill_rate

    pdf = DATA / "R-intro.pdf"
    with tempfile.TemporaryDirectory() as fresh:
        before_home = Comma(Library(Path(fresh)), answering="auto")
        fast = before_home.ingest(pdf, notes=False, deep=False)
        before = fresh_asks(fresh, fast["doc_id"], args.runs)
    with tempfile.TemporaryDirectory() as scratch:
        home = str(args.home or scratch)
        comma = Comma(Library(Path(home)), answering="auto")
        comma.ingest(pdf, notes=False, deep=False)
        started = time.perf_counter()
        deep = comma.deep_read(fast["doc_id"])
        model = comma.answerer
        record = comma.library.find_memory(fast["doc_id"], model.fingerprint, model.backend)
        # With --home the deep read was done by an earlier run (its own time is in the library).
        seconds = record["seconds"] if deep["reused"] else time.perf_counter() - started
        tokens = model.tokenize(comma.library.page_text(fast["doc_id"], 20) * 4)
        ceiling = prefill_rate(model, tokens, STEADY_CACHED, STEADY_CHUNK, runs=5)
        # The window's background read goes in 128-token chunks (app/workers.py DEEP_CHUNK).
        window_chunks = prefill_rate(model, tokens, STEADY_CACHED, 128, runs=5)
        rate = deep["tokens"] / seconds
        after = fresh_asks(home, fast["doc_id"], args.runs)
        follow = []
        with comma.conversation(fast["doc_id"]) as conversation:
            first = conversation.ask(QUESTIONS[0], sampling=ANSWER)
            for question in QUESTIONS[1:args.runs + 1]:
                follow.append(conversation.ask(question, first.session_id, sampling=ANSWER).ttft_s)
        return {
            "document": {"file": pdf.name, "pages": fast["pages"], "tokens": fast["tokens"]},
            "before_deep_read": {"runs": before, "ttft_median_s": statistics.median(r["ttft_s"] for r in before)},
            "deep_read": {"seconds": round(seconds, 1), "tokens_per_s": round(rate, 1),
                          "read_in_an_earlier_run": deep["reused"],
                          "llama_cpp_prefill_tokens_per_s": round(ceiling, 1),
                          "fraction_of_ceiling": round(rate / ceiling, 3),
                          "llama_cpp_prefill_128_token_chunks_tokens_per_s": round(window_chunks, 1),
                          "store_bytes": deep["recall_bytes"], "memory_bytes": deep["memory_bytes"],
                          "store_mb_per_100_pages": round(deep["recall_bytes"] / fast["pages"] * 100 / 1e6, 1)},
            "after_deep_read": {"runs": after, "ttft_median_s": statistics.median(r["ttft_s"] for r in after)},
            "follow_up_ttft_s": {"runs": follow, "median": statistics.median(follow)},
        }, model


def deep_rate(args) -> tuple[dict, object]:
    import pymupdf

    from engine.backends.gguf.probe import STEADY_CACHED, STEADY_CHUNK, prefill_rate

    with tempfile.TemporaryDirectory() as scratch:
        part = Path(scratch) / f"first-{args.pages}-pages-{args.document}"
        with pymupdf.open(DATA / args.document) as whole:
            whole.select(list(range(min(args.pages, whole.page_count))))
            whole.save(part)
        comma = Comma(Library(Path(scratch) / "library"), answering="auto")
        fast = comma.ingest(part, notes=False, deep=False)
        model = comma.answerer
        tokens = model.tokenize(comma.library.page_text(fast["doc_id"], min(20, fast["pages"])) * 4)
        before = prefill_rate(model, tokens, STEADY_CACHED, STEADY_CHUNK, runs=5)
        started = time.perf_counter()
        deep = comma.deep_read(fast["doc_id"])
        seconds = time.perf_counter() - started
        after = prefill_rate(model, tokens, STEADY_CACHED, STEADY_CHUNK, runs=5)
        window_chunks = prefill_rate(model, tokens, STEADY_CACHED, 128, runs=5)
        rate = deep["tokens"] / seconds
        ceiling = (before + after) / 2
        return {"document": {"file": args.document, "pages": fast["pages"], "tokens": deep["tokens"]},
                "deep_read": {"seconds": round(seconds, 1), "tokens_per_s": round(rate, 1)},
                "llama_cpp_prefill_tokens_per_s": {"before": round(before, 1), "after": round(after, 1),
                                                   "128_token_chunks": round(window_chunks, 1)},
                "fraction_of_ceiling": round(rate / ceiling, 3), "target": ">= 0.9"}, model


def weights(args) -> tuple[dict, object]:
    import ctypes

    from engine.backends.gguf.model import GGUFModel, llama
    from engine.backends.gguf.probe import _PROBE_TEXT, decode_rate, prefill_rate
    from engine.models import answering as answering_model

    figures: dict = {}
    with tempfile.TemporaryDirectory() as home:
        source = answering_model.assemble(Path(home))
        files = {"Q4_K_M": source}
        for name, ftype in (("F16", llama.LLAMA_FTYPE_MOSTLY_F16), ("Q8_0", llama.LLAMA_FTYPE_MOSTLY_Q8_0)):
            target = Path(home) / f"answering.{name}.gguf"
            params = llama.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize = ftype, True
            started = time.perf_counter()
            if llama.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
                raise SystemExit(f"llama.cpp could not make the {name} copy")
            figures.setdefault("copies_s", {})[name] = round(time.perf_counter() - started, 1)
            files[name] = target
        for name, path in files.items():
            model = GGUFModel(path)
            tokens = model.tokenize(_PROBE_TEXT * 40)
            row = {"bytes": path.stat().st_size,
                   "prefill_tokens_per_s": round(prefill_rate(model, tokens, runs=5), 1),
                   "decode_tokens_per_s": round(decode_rate(model, tokens, runs=3), 1)}
            if name == "Q4_K_M":
                row["prefill_flash_off_tokens_per_s"] = round(prefill_rate(model, tokens, runs=5, flash_attn=False), 1)
            figures[name] = row
            print(json.dumps({name: row}), file=sys.stderr, flush=True)
            model.close()
        last = GGUFModel(source)
    return figures, last


def from_logs(logs: list[Path]) -> dict:
    """The rows runs printed to stderr, summarised as one run would have: a run stopped before
    its end, or runs that measured different rows (``--rows``) of the same questions, where a
    later log's measurement of a row replaces an earlier one's."""
    rows: dict[str, dict] = {}
    reads: dict = {}
    document = None
    for log in logs:
        for line in log.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # progress and llama.cpp's own messages
            if not isinstance(item, dict):
                continue
            if "page" in item and "id" in item:
                rows.setdefault(item["id"], {}).update(item)
                document = item["document"]
            elif "deep" in item and item.get("id") in rows:
                rows[item["id"]]["deep"] = item["deep"]
            elif "fast" in item and document is not None:
                reads.setdefault(document, {}).update(item)
    done = list(rows.values())
    return {"from_logs": [str(p) for p in logs], "reads": reads, "questions": done, "summary": summarize(done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("questions", "speed", "weights", "deep-rate"), default="questions")
    parser.add_argument("--document", default="reportlab-userguide.pdf", help="deep-rate: which manual")
    parser.add_argument("--pages", type=int, default=30, help="deep-rate: how many of its first pages")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--home", type=Path,
                        help="questions: keep the library there (its deep reads serve a later speed run); "
                             "speed: a library where R-intro.pdf was deep read already")
    parser.add_argument("--documents", default="R-intro.pdf,reportlab-userguide.pdf", type=lambda s: s.split(","))
    parser.add_argument("--deep", default="R-intro.pdf", type=lambda s: [x for x in s.split(",") if x])
    parser.add_argument("--rows", default="small,spot,gold", type=lambda s: s.split(","),
                        help="which of small, spot, gold to measure for every question (deep: see --deep)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "answers_cpu.json")
    parser.add_argument("--from-log", type=Path, nargs="+",
                        help="summarise the stderr of runs (stopped before the end, or of different --rows)")
    args = parser.parse_args()
    if args.from_log:
        from engine.models.answering import FILE_NAME

        emit("answers", __doc__.split("Method", 1)[1], type("Model", (), {"name": FILE_NAME})(),
             from_logs(args.from_log), args.out)
        return
    if args.what != "questions":
        out = args.out if args.out != parser.get_default("out") else \
            ROOT / "bench" / "results" / f"answers_{args.what.replace('-', '_')}_cpu.json"
        figures, model = {"speed": speed, "weights": weights, "deep-rate": deep_rate}[args.what](args)
        emit(f"answers_{args.what.replace('-', '_')}", __doc__.split("Method", 1)[1], model, figures, out)
        return
    figures, model = run(args)
    emit("answers", __doc__.split("Method", 1)[1], model, figures, args.out)


if __name__ == "__main__":
    main()
