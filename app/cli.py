"""The command line: its subcommands (``build_parser``) are a contract scripts rely on.

A user error exits with status 2 and one line on stderr starting ``error:``; ``--json`` prints
one JSON object (or list) on stdout; long work draws a progress bar on stderr when it is a
terminal and ``--json`` is not given.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from contextlib import contextmanager

from engine.documents.limits import Limits
from engine.errors import CommaError
from engine.generate import MAX_TEMPERATURE, Sampling
from engine.pipeline.options import (
    ANSWERING,
    ANSWERING_RANKING,
    BACKENDS,
    DEFAULT_RANKING,
    RANKINGS,
    RERANK_POOL,
    default_answering,
)
from engine.policy import DEFAULT_CAPACITY, POLICIES


def _write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comma", description="Read a long document once; ask it anything.")
    parser.add_argument("--open", metavar="FILE", help="open the window and read FILE")
    parser.add_argument("--screenshot", metavar="OUT.png",
                        help="with no command: open the window offscreen (reading --open FILE if given), "
                             "save a picture of it to OUT.png once the reading ends, and exit")
    parser.add_argument("--ask", metavar="QUESTION", help="with --screenshot: ask this after the reading, "
                                                          "and take the picture once it is answered")
    parser.add_argument("--summarize", action="store_true",
                        help="with --screenshot: summarise the document after the reading, then take the picture")
    parser.add_argument("--while-reading", action="store_true",
                        help="with --screenshot: take the picture a third of the way through the reading")
    sub = parser.add_subparsers(dest="command")

    def common(p, model=True):
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        if model:
            p.add_argument("--model", metavar="PATH",
                           help="a GGUF file, or for --backend torch also a Hugging Face model folder "
                                "(default: the bundled SmolLM2)")
            p.add_argument("--backend", choices=list(BACKENDS), default="auto",
                           help="gguf: llama.cpp on the CPU; torch: transformers with Comma's kernels "
                                "(CUDA, or the CPU); auto: torch when CUDA is present, else gguf")
            p.add_argument("--answering", choices=list(ANSWERING), default=default_answering(),
                           help="auto: the answering model (Qwen2.5-Coder-1.5B) reads and answers beside the "
                                "bundled small model when it is installed; off: the reading model answers")

    p = sub.add_parser("ingest", help="read a document into a memory on disk")
    p.add_argument("path")
    p.add_argument("--policy", choices=list(POLICIES), default="sepllm")
    p.add_argument("--cache", type=int, metavar="C", help=f"KV cache capacity in tokens (default {DEFAULT_CAPACITY})")
    p.add_argument("--force", action="store_true", help="read again even if a memory exists")
    p.add_argument("--no-notes", action="store_true", help="skip the section notes used for summaries")
    p.add_argument("--no-recall", action="store_true",
                   help="keep only the small memory, not the KV of every passage (less disk; answers then "
                        "know the gist and the last pages, not every page)")
    p.add_argument("--fast-only", action="store_true",
                   help="stop after the fast read with the small model; the answering model then reads the "
                        "pages each question needs on the spot (slower answers) until it reads the document")
    defaults = Limits()
    p.add_argument("--max-pages", type=int, metavar="N", default=defaults.pages,
                   help=f"refuse documents of more pages (default {defaults.pages:,})")
    p.add_argument("--max-chars", type=int, metavar="N", default=defaults.chars,
                   help=f"refuse documents of more characters of text (default {defaults.chars:,})")
    p.add_argument("--max-expanded-mb", type=int, metavar="MB", default=defaults.expanded_bytes // 1_000_000,
                   help="refuse Word files whose parts expand past this many MB "
                        f"(default {defaults.expanded_bytes // 1_000_000})")
    p.add_argument("--parallel", type=int, metavar="TOKENS",
                   help="read independent chunks of TOKENS tokens side by side, one memory each "
                        "(torch backend)")
    common(p)

    p = sub.add_parser("ask", help="ask a question about a document that was read")
    p.add_argument("doc_id")
    p.add_argument("question")
    p.add_argument("--session", metavar="ID", help="continue this conversation")
    p.add_argument("--ranking", choices=list(RANKINGS),
                   help="how the passages for the question are chosen among the candidate pages (by words and "
                        "meaning): words (their order), likelihood (the model ranks them all; slower) or rerank (the "
                        f"model ranks the first {RERANK_POOL}); default: {DEFAULT_RANKING} when the reading model "
                        f"answers, {ANSWERING_RANKING} when the answering model does")
    default = Sampling()
    p.add_argument("--temperature", type=float, default=default.temperature, metavar="T",
                   help=f"0 (the default) answers greedily, the same answer every time; up to {MAX_TEMPERATURE:g} "
                        "samples more freely")
    p.add_argument("--top-p", type=float, default=default.top_p, metavar="P",
                   help="with a temperature: sample only among the most likely tokens that make up P of the "
                        "probability (default 1: all)")
    p.add_argument("--seed", type=int, metavar="N", help="with a temperature: the same seed gives the same answer")
    p.add_argument("--max-tokens", type=int, default=default.max_tokens, metavar="N",
                   help=f"the longest answer, in tokens (default {default.max_tokens})")
    common(p)

    p = sub.add_parser("summarize", help="summarise a whole document from its reading notes")
    p.add_argument("doc_id")
    p.add_argument("--force", action="store_true", help="write the summary again")
    common(p)

    p = sub.add_parser("list", help="documents in the library and their memories")
    common(p, model=False)

    p = sub.add_parser("models", help="the models to choose from (--model PATH): the bundled one and the models folder's")
    common(p, model=False)

    p = sub.add_parser("download", help="download a GGUF model from Hugging Face into the data folder's models")
    p.add_argument("repo_id", help="the repository, owner/name (e.g. bartowski/Qwen2.5-7B-Instruct-GGUF)")
    p.add_argument("filename", help="the .gguf file in it (e.g. Qwen2.5-7B-Instruct-Q4_K_M.gguf)")
    p.add_argument("--revision", help="a branch, tag or commit (default: main)")
    p.add_argument("--token", help="an access token, for a gated or private repository (or set HF_TOKEN)")
    p.add_argument("--endpoint", metavar="URL", help="a mirror of the hub (default: HF_ENDPOINT, else huggingface.co)")
    common(p, model=False)
    return parser


@contextmanager
def progress_bar(enabled: bool, unit: str, desc: str):
    """A tqdm bar on stderr (tokens, tokens/s, ETA), drawn from the first report on (work that
    never starts, such as OCR of a PDF without scanned pages, draws none), or a no-op when
    output is for a program."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=unit, unit_scale=True, desc=desc, file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def preparing_bar(enabled: bool):
    """A bytes bar for the one-off preparation of faster model weights, opened on first report."""
    if not enabled:
        return None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="faster weights", file=sys.stderr,
                       dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _show_bars(args) -> bool:
    return not args.json and sys.stderr.isatty()


def main() -> None:
    sys.exit(run())


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_text(args)
        return _dispatch(args)
    except UnicodeError as exc:  # text not valid UTF-8 that _check_text could not name
        return _error(f"some text is not valid UTF-8 ({type(exc).__name__}: {exc})")
    except (CommaError, ValueError) as exc:
        return _error(str(exc))
    # What the operating system refuses on the way (a file or folder that cannot be reached), or a
    # failure that no check foresaw: one line still, its type naming it so that a bug stays visible.
    except (OSError, RuntimeError) as exc:
        return _error(f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-done was saved", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    print(f"error: {_printable(message)}", file=sys.stderr)  # one line, whatever a file name holds
    return 2


# What an argument is, as an error names it; the document's own file name is read_document's to judge.
_TEXT_ARGUMENTS = {"question": "the question", "ask": "the question given to --ask", "doc_id": "the document id",
                   "session": "the session id", "repo_id": "the repository name",
                   "filename": "the file name in the repository"}
_FILE_ARGUMENTS = ("model", "open", "screenshot")


def _check_text(args) -> None:
    """Refuse an argument that is not valid UTF-8 text, naming it. On Linux arguments are bytes;
    Python keeps the bytes that are not UTF-8 as lone surrogates, which no library row, model
    prompt or JSON output can take."""
    for name, value in vars(args).items():
        if name == "path" or not isinstance(value, str) or not _UNDECODABLE.search(value):
            continue
        if name in _FILE_ARGUMENTS:
            raise CommaError(f"the file name given to --{name}, {_printable(value)} (shown with ? for the undecodable "
                             "bytes), is not valid UTF-8 text; rename the file")
        what = _TEXT_ARGUMENTS.get(name, f"the --{name.replace('_', '-')} argument")
        raise CommaError(f"{what} is not valid UTF-8 text (the terminal or script that passed it uses another "
                         "encoding)")


def _dispatch(args) -> int:
    if args.command is None:
        from app.window import open_window

        return open_window(args.open, args.screenshot, args.ask, args.summarize, args.while_reading)

    from engine.pipeline.asking import citation
    from engine.pipeline.comma import Comma

    comma = Comma(model_path=getattr(args, "model", None), backend=getattr(args, "backend", "auto"),
                  answering=getattr(args, "answering", "auto"), limits=_limits(args),
                  notice=lambda text: print(f"note: {text}", file=sys.stderr),
                  preparing=preparing_bar(_show_bars(args)))
    if args.command == "ingest":
        with progress_bar(_show_bars(args), "page", "OCR") as ocr_bar:
            document = comma.read_file(args.path, progress=ocr_bar)
        with progress_bar(_show_bars(args), "tok", "fast read") as bar, \
                progress_bar(_show_bars(args), "passage", "meaning index") as meaning_bar, \
                progress_bar(_show_bars(args), "tok", "deep read") as deep_bar:
            report = comma.ingest(document, args.policy, args.cache, args.force, notes=not args.no_notes,
                                  progress=bar, parallel=args.parallel, recall=not args.no_recall,
                                  deep=not args.fast_only, deep_progress=deep_bar, meaning_progress=meaning_bar)
        _print(args, report, _format_ingest)
        if "skipped" in report.get("meaning", {}):
            print(f"note: {report['meaning']['skipped']}", file=sys.stderr)
        if not args.fast_only and "deep" not in report and comma.answerer_reason:
            print(f"note: no deep read: {comma.answerer_reason}", file=sys.stderr)
    elif args.command == "ask":
        stream = None if args.json else _write_now
        status = None if args.json else (lambda text: print(f"note: {text}", file=sys.stderr))
        sampling = Sampling(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        result = comma.ask(args.doc_id, args.question, args.session, on_text=stream, ranking=args.ranking,
                           on_status=status, sampling=sampling)
        if args.json:
            print(json.dumps(result.__dict__, ensure_ascii=False))
        else:
            session = f" · session {result.session_id}" if result.session_id else ""
            print(f"\n[pages {', '.join(map(str, result.pages))}{session}]")
            for source in result.sources:
                print(f"  {citation(source['page'], source.get('section'))}: {source['text']}")
        if result.recall_reason:
            print(f"note: answered from the memory alone: {result.recall_reason}", file=sys.stderr)
        if result.model_reason:
            print(f"note: answered by the small model {result.model_name}: {result.model_reason}", file=sys.stderr)
        if result.not_saved:
            print(f"note: {result.not_saved}", file=sys.stderr)
    elif args.command == "summarize":
        with progress_bar(_show_bars(args), "part", "summarising") as bar:
            report = comma.summarize(args.doc_id, args.force, progress=bar)
        _print(args, report, lambda r: f"{r['summary']}\n[pages {r['pages'][0]}–{r['pages'][-1]}]"
               if r["pages"] else r["summary"])
        if report.get("not_saved"):
            print(f"note: {report['not_saved']}", file=sys.stderr)
    elif args.command == "list":
        docs = comma.list()
        _print(args, docs, _format_list)
    elif args.command == "models":
        from engine.pipeline.catalog import model_choices

        choices = model_choices(comma.library.models_folder)
        _print(args, [c.as_json() for c in choices], lambda _: _format_models(choices, comma.library.models_folder))
    elif args.command == "download":
        from engine.pipeline.catalog import download_model

        try:
            with progress_bar(_show_bars(args), "B", "download") as bar:
                path = download_model(args.repo_id, args.filename, comma.library.models_folder,
                                      revision=args.revision, progress=bar, token=args.token,
                                      endpoint=args.endpoint)
        except KeyboardInterrupt:
            print("error: interrupted; what arrived is kept: the same command resumes the download", file=sys.stderr)
            return 130
        _print(args, {"path": str(path), "bytes": path.stat().st_size},
               lambda r: f"{_printable(r['path'])} ({r['bytes'] / 1e6:,.0f} MB)\n"
                         f"read with it: comma ingest FILE --model {_printable(r['path'])}")
    return 0


def _limits(args) -> Limits:
    if args.command != "ingest":
        return Limits()
    values = {"pages": args.max_pages, "chars": args.max_chars, "expanded_bytes": args.max_expanded_mb * 1_000_000}
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"--max-{name.replace('_bytes', '-mb').replace('_', '-')} must be at least 1")
    return Limits(**values)


def _printable(text: str) -> str:
    """A title or file name as one harmless line: control characters (terminal escapes, line
    breaks) and bytes that were not UTF-8 (kept by Python as lone surrogates) become '?'."""
    return _UNDECODABLE.sub("?", _CONTROLS.sub("?", str(text)))


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_UNDECODABLE = re.compile("[\ud800-\udfff]")


def _format_ingest(report: dict) -> str:
    lines = []
    for label, r in (("fast read", report), ("deep read", report.get("deep"))):
        if r is not None:
            lines.append(
                f"{r['doc_id']}  {_printable(r['title'])}  {r['pages']} pages, {r['tokens']} tokens -> "
                f"{r['kept_tokens']} kept, {r['memory_bytes'] / 1e6:.1f} MB"
                + (f" + recall store {r['recall_bytes'] / 1e6:.0f} MB" if r["recall_bytes"] else "")
                + f"{' (already read)' if r['reused'] else ''} in {r['seconds']:.1f} s"
                + (f"  [{label}: {r['model']}]" if "deep" in report else ""))
    meaning = report.get("meaning", {})
    if "passages" in meaning:
        lines.append(f"meaning index: {meaning['passages']} passages"
                     + (" (already made)" if meaning["reused"] else f" in {meaning['seconds']:.1f} s"))
    return "\n".join(lines)


def _format_models(choices, folder) -> str:
    lines = [f"Models folder: {_printable(folder)} (comma download REPO FILE puts a model there)"]
    for c in choices:
        lines.append(f"{'  ' if c.usable else '✗ '}{_printable(c.summary())}")
        lines.append(f"    {_printable(c.path)}")
        if c.problem:
            lines.append(f"    cannot be used: {_printable(c.problem)}")
    return "\n".join(lines)


def _format_list(docs: list[dict]) -> str:
    if not docs:
        return "The library is empty: comma ingest PATH reads a document."
    lines = []
    for d in docs:
        lines.append(f"{d['id']}  {_printable(d['title'])}  ({d['pages']} pages)  {_printable(d['path'])}")
        for m in d["memories"]:
            store = f" + recall {m['recall_bytes'] / 1e6:.0f} MB" if m.get("recall_bytes") else ""
            size = "  MISSING" if m.get("missing") else f"{m['bytes'] / 1e6:6.1f} MB{store}"
            lines.append(f"    {m['policy_key']:<24} {m['kept_tokens']:>6} of {m['document_tokens']} tokens  "
                         f"{size}  {_printable(m['model_name'])}  {_printable(m['path'])}")
            if m.get("missing"):
                lines.append(f"      the memory file is gone; read it again: comma ingest {_printable(d['path'])}")
    return "\n".join(lines)


def _print(args, value, human) -> None:
    print(json.dumps(value, ensure_ascii=False) if args.json else human(value))
