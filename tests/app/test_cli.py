"""The command-line contract: JSON shapes, exit status 2 with one `error:` line, nothing saved changes.

The tests that run the real bundled model share one small library (module-scoped) so the
2-core CI reads the sample document once.
"""

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pymupdf
import pytest

from app.cli import run
from engine.memory.file_format import FORMAT_VERSION, read_memory, write_memory

ROOT = Path(__file__).resolve().parents[2]
GPL3 = Path("/usr/share/common-licenses/GPL-3")


def cli(capsys, *argv):
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def library_rows(home):
    import sqlite3

    db = home / "library.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"select * from {t}").fetchall() for t in ("documents", "memories", "messages")}


def make_pdf(path, pages, **save):
    doc = pymupdf.open()
    for text in pages:
        doc.new_page().insert_text((72, 72), text)
    doc.save(path, **save)
    return path


def bad_inputs(tmp):
    folder = tmp / "folder"
    folder.mkdir()
    empty = tmp / "empty.pdf"
    empty.write_bytes(b"")
    unknown = tmp / "notes.xyz"
    unknown.write_text("hello")
    binary = tmp / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    whole = make_pdf(tmp / "whole.pdf", ["Some text on a page."] * 3).read_bytes()
    truncated = tmp / "truncated.pdf"
    truncated.write_bytes(whole[: len(whole) // 2])
    encrypted = make_pdf(tmp / "locked.pdf", ["secret"], encryption=pymupdf.PDF_ENCRYPT_AES_256,
                         owner_pw="o", user_pw="u")
    scanned = tmp / "scanned.pdf"
    doc = pymupdf.open()
    doc.new_page().draw_rect(pymupdf.Rect(50, 50, 200, 200))
    doc.save(scanned)
    return [
        (tmp / "missing.pdf", "no such file"),
        (folder, "folder"),
        (empty, "empty"),
        (unknown, ".xyz"),
        (binary, "binary"),
        (truncated, "truncated.pdf"),
        (encrypted, "password"),
        (scanned, "pictures without words"),
    ]


def test_bad_documents_are_refused_and_change_nothing(tmp_path, home, capsys):
    for path, word in bad_inputs(tmp_path):
        code, out, err = cli(capsys, "ingest", path)
        assert_user_error(code, err, word)
        assert out == ""
        assert library_rows(home).get("documents", []) == []


def test_limits_are_flags_and_a_refusal_changes_nothing(tmp_path, home, capsys):
    doc = tmp_path / "three.pdf"
    pdf = pymupdf.open()
    for n in range(3):
        pdf.new_page().insert_text((72, 72), f"Page {n} of a short report.")
    pdf.save(doc)
    code, out, err = cli(capsys, "ingest", doc, "--max-pages", "2")
    assert_user_error(code, err, "has 3 pages", "up to 2 pages", "--max-pages")
    assert out == "" and library_rows(home).get("documents", []) == []
    code, _, err = cli(capsys, "ingest", doc, "--max-chars", "20")
    assert_user_error(code, err, "more than 20 characters", "--max-chars")
    code, _, err = cli(capsys, "ingest", doc, "--max-pages", "0")
    assert_user_error(code, err, "--max-pages must be at least 1")
    assert library_rows(home).get("documents", []) == []


def test_titles_and_file_names_cannot_drive_the_terminal(tmp_path, home, capsys, monkeypatch):
    from tests.fakes import set_raw_pdf_title, use_fake_model

    use_fake_model(monkeypatch, token_seconds=0)
    path = tmp_path / "two\nlines.pdf"
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 72), "A short note about the lease and its rent.")
    set_raw_pdf_title(pdf, "\x1b]0;PWNED\x07\x1b[2JLease")
    pdf.save(path)
    code, out, err = cli(capsys, "ingest", path, "--fast-only", "--no-notes")
    assert code == 0 and "\x1b" not in out + err and "\x07" not in out + err
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "\x1b" not in out and "two?lines.pdf" in out
    assert len(out.strip().splitlines()) == 2  # the document, its memory: a newline did not split it
    code, _, err = cli(capsys, "ingest", tmp_path / "gone\nfile.pdf")
    assert_user_error(code, err, "gone?file.pdf")


def test_a_missing_memory_file_is_named_and_listed(tmp_path, home, capsys, monkeypatch):
    from tests.fakes import use_fake_model

    use_fake_model(monkeypatch, token_seconds=0)
    doc = tmp_path / "note.txt"
    doc.write_text("A short note. The rent is due on the first day of each month.")
    code, out, _ = cli(capsys, "ingest", doc, "--fast-only", "--no-notes", "--json")
    report = json.loads(out)
    Path(report["memory_path"]).unlink()
    code, _, err = cli(capsys, "ask", report["doc_id"], "When is the rent due?")
    assert_user_error(code, err, "is missing", report["memory_path"], f"comma ingest {doc}")
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "MISSING" in out and f"read it again: comma ingest {doc}" in out
    code, out, _ = cli(capsys, "list", "--json")
    assert json.loads(out)[0]["memories"][0]["missing"] is True
    code, out, _ = cli(capsys, "ingest", doc, "--fast-only", "--no-notes", "--json")
    assert code == 0 and not json.loads(out)["reused"] and Path(report["memory_path"]).is_file()


def test_a_damaged_library_is_an_error_line_in_the_cli_and_the_window(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "library.db").write_bytes(b"\x00garbage" * 500)
    monkeypatch.setenv("COMMA_HOME", str(home))
    code, _, err = cli(capsys, "list")
    assert_user_error(code, err, "is damaged", "move it aside")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    code, _, err = cli(capsys, "--screenshot", tmp_path / "shot.png")
    assert_user_error(code, err, "is damaged")
    assert (home / "library.db").read_bytes() == b"\x00garbage" * 500


def test_a_symbolic_link_loop_is_one_error_line(tmp_path, home, capsys, monkeypatch):
    from tests.fakes import use_fake_model

    use_fake_model(monkeypatch, token_seconds=0)
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    (tmp_path / "a.txt").symlink_to(tmp_path / "b.txt")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    for path in (loop, tmp_path / "a.txt", tmp_path / "a.txt" / "inside.txt"):
        code, out, err = cli(capsys, "ingest", path)
        assert_user_error(code, err, "Cannot open", "symbolic links lead round in a loop")
        assert out == "" and library_rows(home).get("documents", []) == []


@pytest.mark.parametrize("failure", [PermissionError(errno.EACCES, "Permission denied"), RuntimeError("no home folder"),
                                     OSError(errno.EIO, "Input/output error")])
def test_an_unforeseen_os_or_runtime_error_is_one_line_naming_its_type(tmp_path, home, capsys, monkeypatch, failure):
    from tests.fakes import use_fake_model

    use_fake_model(monkeypatch, token_seconds=0)

    def fails(*args, **kwargs):
        raise failure

    monkeypatch.setattr("engine.pipeline.comma.read_document", fails)
    doc = tmp_path / "a.txt"
    doc.write_text("A short note.")
    code, _, err = cli(capsys, "ingest", doc)
    assert_user_error(code, err, type(failure).__name__, str(failure))


def test_text_that_is_not_utf8_is_named_and_refused(tmp_path, home, capsys, monkeypatch):
    """On Linux a file name or an argument is bytes; those that are not UTF-8 reach Python as
    lone surrogates."""
    import os

    from tests.fakes import use_fake_model

    use_fake_model(monkeypatch, token_seconds=0)
    name = os.fsdecode(b"caf\xe9.txt")
    (tmp_path / name).write_text("A short note about the café.")
    code, out, err = cli(capsys, "ingest", tmp_path / name)
    assert_user_error(code, err, "caf?.txt", "not valid UTF-8", "shown with ? for the undecodable bytes")
    assert out == "" and library_rows(home).get("documents", []) == []
    code, _, err = cli(capsys, "ingest", tmp_path / os.fsdecode(b"gone\xff.txt"))
    assert_user_error(code, err, "gone?.txt", "no such file")
    doc = tmp_path / "note.txt"
    doc.write_text("A short note about the harbour and its boats. " * 20)
    code, out, _ = cli(capsys, "ingest", doc, "--fast-only", "--no-notes", "--json")
    doc_id = json.loads(out)["doc_id"]
    messages = library_rows(home)["messages"]
    code, out, err = cli(capsys, "ask", doc_id, "Where do the boats \udce9 moor?")
    assert_user_error(code, err, "the question is not valid UTF-8 text")
    code, _, err = cli(capsys, "ask", doc_id, "Where?", "--session", "\udcff")
    assert_user_error(code, err, "the session id is not valid UTF-8 text")
    code, _, err = cli(capsys, "ingest", doc, "--model", tmp_path / os.fsdecode(b"m\xe9.gguf"))
    assert_user_error(code, err, "--model", "m?.gguf", "not valid UTF-8")
    assert out == "" and library_rows(home)["messages"] == messages


def test_unknown_doc_id(home, capsys):
    code, _, err = cli(capsys, "ask", "0123abcd", "why?")
    assert_user_error(code, err, "0123abcd", "not in the library")


def test_model_that_is_not_gguf(tmp_path, home, capsys):
    doc = tmp_path / "a.txt"
    doc.write_text("A short text. It has sentences.")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely not a model")
    code, _, err = cli(capsys, "ingest", doc, "--model", fake)
    assert_user_error(code, err, "not a GGUF")


def test_impossible_cache_size(tmp_path, home, capsys):
    doc = tmp_path / "a.txt"
    doc.write_text("A short text.")
    code, _, err = cli(capsys, "ingest", doc, "--cache", "5")
    assert_user_error(code, err, "a + s + w < c")


# --- with the real bundled model -------------------------------------------------------------

@pytest.fixture(scope="module")
def read_library(tmp_path_factory):
    """A library holding GPL-3's first part, read with a small cache so eviction happens."""
    if not GPL3.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    tmp = tmp_path_factory.mktemp("lib")
    doc = tmp / "gpl3-start.txt"
    doc.write_text(GPL3.read_text()[:9000])
    home = tmp / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("COMMA_HOME", str(home))
    code = run(["ingest", str(doc), "--cache", "320", "--json"])
    assert code == 0
    yield {"home": home, "doc": doc}
    mp.undo()


@pytest.fixture
def lib(read_library, monkeypatch):
    monkeypatch.setenv("COMMA_HOME", str(read_library["home"]))
    return read_library


def ingest_json(capsys, *argv):
    code, out, err = cli(capsys, "ingest", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.model
def test_ingest_reports_and_reuses_the_saved_memory(lib, capsys):
    report = ingest_json(capsys, lib["doc"], "--cache", "320")
    assert set(report) >= {"doc_id", "title", "pages", "tokens", "kept_tokens", "memory_path", "memory_bytes",
                           "seconds"}
    assert report["reused"] is True
    assert report["tokens"] > 1500 and 0 < report["kept_tokens"] <= 320
    assert Path(report["memory_path"]).stat().st_size == report["memory_bytes"]

    code, out, _ = cli(capsys, "list", "--json")
    docs = json.loads(out)
    assert [d["id"] for d in docs] == [report["doc_id"]]
    assert docs[0]["memories"][0]["kept_tokens"] == report["kept_tokens"]


@pytest.mark.model
def test_ask_follow_up_and_summary_leave_the_memory_untouched(lib, capsys):
    report = ingest_json(capsys, lib["doc"], "--cache", "320")
    before = sha(report["memory_path"])
    store_before = sha(report["recall_path"])
    code, out, err = cli(capsys, "ask", report["doc_id"], "What does this license let me do?", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert set(first) == {"answer", "session_id", "pages", "ttft_s", "seconds", "sources", "recall", "recall_reason",
                          "model", "model_name", "model_reason", "read_on_the_spot", "sections", "not_saved",
                          "unsupported"}
    # The tests run the small model alone (COMMA_ANSWERING=off): it answers, and that is no failure.
    assert first["model"] == "reading" and first["model_reason"] is None and first["read_on_the_spot"] == []
    assert first["answer"] and first["pages"] and 0 < first["ttft_s"] <= first["seconds"]
    assert first["recall"] is True and first["recall_reason"] is None
    assert len(first["sections"]) == len(first["pages"])  # a licence in plain text has no sections
    assert first["sources"] and first["pages"][0] == first["sources"][0]["page"]

    code, out, err = cli(capsys, "ask", report["doc_id"], "Can I sell copies?", "--session", first["session_id"],
                         "--json")
    assert code == 0, err
    assert json.loads(out)["session_id"] == first["session_id"]
    assert len(library_rows(lib["home"])["messages"]) >= 4

    code, out, err = cli(capsys, "summarize", report["doc_id"], "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["summary"]) > 40 and summary["pages"][0] == 1
    assert sha(report["memory_path"]) == before and sha(report["recall_path"]) == store_before


@pytest.mark.model
def test_fresh_process_answers_from_disk(lib):
    report = json.loads(subprocess.run(
        [sys.executable, "main.py", "ingest", str(lib["doc"]), "--cache", "320", "--json"],
        capture_output=True, text=True, cwd=ROOT, check=True, env={**__import__("os").environ}).stdout)
    assert report["reused"] is True
    done = subprocess.run([sys.executable, "main.py", "ask", report["doc_id"], "What is this text?", "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"]


@pytest.mark.model
@pytest.mark.parametrize("damage, words", [
    ("truncate", ["truncated"]),
    ("flip", ["altered"]),
    ("other_model", ["another model"]),
    ("other_version", ["format version 99"]),
])
def test_damaged_memory_is_refused_and_kept(lib, capsys, damage, words):
    def spoil(path: Path) -> None:
        original = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(original[: len(original) // 2])
        elif damage == "flip":
            data = bytearray(original)
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        elif damage == "other_model":
            f = read_memory(path)
            write_memory(path, {**f.header, "model_fingerprint": "0" * 64, "model_name": "Other"}, f.sections)
        else:
            data = bytearray(original)
            data[8:12] = (99).to_bytes(4, "little")
            path.write_bytes(bytes(data))

    assert_refused_and_kept(lib, capsys, spoil, words)
    assert FORMAT_VERSION != 99


def assert_refused_and_kept(lib, capsys, spoil, words) -> None:
    """Spoil the document's memory; asking is one error line with ``words``, and the spoilt file
    stays as it was (the original is put back after)."""
    report = ingest_json(capsys, lib["doc"], "--cache", "320")
    path = Path(report["memory_path"])
    original = path.read_bytes()
    try:
        spoil(path)
        spoilt = path.read_bytes()
        code, _, err = cli(capsys, "ask", report["doc_id"], "Anything?")
        assert_user_error(code, err, *words)
        assert path.read_bytes() == spoilt, "a refused memory is left as it was"
    finally:
        path.write_bytes(original)


def _craft(path: Path, how: str) -> None:
    """Rewrite a real memory with a valid checksum around what its writer would never produce."""
    f = read_memory(path)
    header, sections = dict(f.header), dict(f.sections)
    header.pop("sections")
    n = header["kept_tokens"]
    if how.startswith("positions"):
        state = bytearray(sections["state"])
        # llama.cpp's sequence state: magic, sequence id, n_stream, cell count, then (pos, n_seq_id,
        # seq_id) per cell.
        cells = np.frombuffer(state, dtype="<i4", count=3 * n, offset=16).reshape(n, 3).copy()
        cells[:, 0] = {"positions_all_last": n - 1, "positions_from_minus_5": np.arange(n) - 5}[how]
        state[16:16 + cells.nbytes] = cells.tobytes()
        sections["state"] = bytes(state)
    elif how == "claims_50000_tokens":
        extra = 50_000 - n
        sections["token_ids"] += b"\0" * 4 * extra
        sections["offsets"] += np.arange(10**6, 10**6 + extra, dtype="<i8").tobytes()
        sections["separators"] += b"\0" * extra
        # The policy is altered too, so that only the state can tell the claim is false.
        header.update(kept_tokens=50_000, document_tokens=2 * 10**6, policy={**header["policy"], "capacity": 60_000})
    elif how == "no_token_ids":
        del sections["token_ids"]
    elif how == "no_page_token_starts":
        del header["page_token_starts"]
    elif how == "chunks_in_a_gguf_memory":
        header.update(chunks=[70, 10**12], parallel_chunk_tokens=70)
    elif how == "reversed_offsets":
        sections["offsets"] = np.frombuffer(sections["offsets"], dtype="<i8")[::-1].tobytes()
    elif how == "other_document":
        header["document_sha256"] = "0" * 64
    write_memory(path, header, sections)


@pytest.mark.model
@pytest.mark.parametrize("how, words", [
    ("positions_all_last", ["positions 0.."]),
    ("positions_from_minus_5", ["positions 0.."]),
    ("claims_50000_tokens", ["does not hold its 50,000 tokens"]),
    ("no_token_ids", ["no 'token_ids' section"]),
    ("no_page_token_starts", ["lacks 'page_token_starts'"]),
    ("chunks_in_a_gguf_memory", ["only the torch backend"]),
    ("reversed_offsets", ["not strictly increasing"]),
    ("other_document", ["another document"]),
])
def test_a_crafted_memory_with_a_valid_checksum_is_refused_and_kept(lib, capsys, how, words):
    assert_refused_and_kept(lib, capsys, lambda path: _craft(path, how), words)


@pytest.mark.model
def test_full_disk_keeps_the_previous_memory(lib, capsys, monkeypatch):
    report = ingest_json(capsys, lib["doc"], "--cache", "320")
    before_bytes = Path(report["memory_path"]).read_bytes()
    before_rows = library_rows(lib["home"])

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.memory.file_format.os.fsync", no_space)
    code, _, err = cli(capsys, "ingest", lib["doc"], "--cache", "320", "--force", "--no-notes")
    assert_user_error(code, err, "disk space", "unchanged")
    assert Path(report["memory_path"]).read_bytes() == before_bytes
    assert library_rows(lib["home"]) == before_rows
    assert not [p for p in Path(report["memory_path"]).parent.iterdir() if p.name.endswith(".tmp")]


def test_model_whose_cache_cannot_be_evicted_is_one_error_line(tmp_path, home, capsys):
    from tests.tiny_gguf import write_gguf

    model = write_gguf(tmp_path / "g.gguf", "gemma3", metadata={"{arch}.attention.sliding_window": 512})
    doc = tmp_path / "a.txt"
    doc.write_text("Some text to read.")
    code, _, err = cli(capsys, "ingest", doc, "--model", model)
    assert_user_error(code, err, "cannot be partially removed")


@pytest.mark.model
def test_cancelled_reading_saves_nothing(tmp_path):
    from engine.errors import Cancelled
    from engine.pipeline.comma import Comma
    from storage.library import Library

    doc = tmp_path / "a.txt"
    doc.write_text(GPL3.read_text()[:4000] if GPL3.exists() else "Words. " * 800)
    library = Library(tmp_path / "home")
    seen = []
    with pytest.raises(Cancelled):
        Comma(library).ingest(doc, progress=lambda done, total: seen.append(done),
                              cancelled=lambda: len(seen) >= 1)
    assert seen and library.documents() == []
    assert list(library.memories_folder.iterdir()) == []


@pytest.mark.model
def test_first_start_says_it_prepares_faster_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMMA_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("COMMA_HOME", str(tmp_path / "home"))
    doc = tmp_path / "a.txt"
    doc.write_text("A short text about nothing much. " * 20)
    code, out, err = cli(capsys, "ingest", doc, "--no-notes", "--json")
    assert code == 0, err
    assert "note: preparing a faster copy" in err and "Q4_1" in err and "F16" in err
    code, out, err = cli(capsys, "ingest", doc, "--no-notes", "--json")
    assert code == 0 and "note:" not in err


@pytest.mark.model
def test_memory_of_the_original_weights_asks_for_a_new_reading(tmp_path, capsys, monkeypatch):
    from engine.backends.gguf import fast_weights

    monkeypatch.setenv("COMMA_HOME", str(tmp_path / "home"))
    doc = tmp_path / "a.txt"
    doc.write_text("A short text about nothing much. " * 20)
    with monkeypatch.context() as m:  # as Comma read before it made faster copies
        m.setattr(fast_weights, "fast_model_path", lambda source, *a, **k: (source, None))
        report = ingest_json(capsys, doc, "--no-notes")
    saved = sha(report["memory_path"])
    rows = library_rows(tmp_path / "home")
    code, _, err = cli(capsys, "ask", report["doc_id"], "What is it about?")
    assert_user_error(code, err, "original", "faster F16 copy", "comma ingest")
    assert sha(report["memory_path"]) == saved and library_rows(tmp_path / "home") == rows
    again = ingest_json(capsys, doc, "--no-notes")
    assert again["reused"] is False
    code, out, err = cli(capsys, "ask", report["doc_id"], "What is it about?", "--json")
    assert code == 0, err


@pytest.mark.parametrize("flag, value, words", [
    ("--temperature", "3", "temperature must be between 0 and 2"),
    ("--top-p", "0", "top-p must be above 0"),
    ("--max-tokens", "0", "answer length must be between 1"),
])
def test_generation_flags_out_of_range_are_one_error_line(home, capsys, flag, value, words):
    code, _, err = cli(capsys, "ask", "abc", "Anything?", flag, value)
    assert_user_error(code, err, words)


def test_download_puts_a_model_in_the_data_folder_and_a_failure_is_one_line(home, hub, capsys):
    from storage.library import models_folder
    from tests.hub_server import FILE, MODEL, REPO

    code, out, err = cli(capsys, "download", REPO, FILE, "--endpoint", hub.endpoint, "--json")
    assert code == 0, err
    path = Path(json.loads(out)["path"])
    assert path.read_bytes() == MODEL and path.is_relative_to(models_folder(home))
    assert [r[1] for r in hub.requests if "agent" in r[1]] == [], "no telemetry request"
    code, _, err = cli(capsys, "download", REPO, "missing.gguf", "--endpoint", hub.endpoint)
    assert_user_error(code, err, "has no file missing.gguf")
    code, _, err = cli(capsys, "download", "not a repo", FILE)
    assert_user_error(code, err, "is not a Hugging Face repository id")


@pytest.mark.model
def test_screenshots_of_a_reading_an_answer_and_a_summary(tmp_path):
    """In fresh processes, as a person runs them: the window's event loop runs and quits there."""
    import os

    doc = tmp_path / "gpl3-start.txt"
    if not GPL3.exists():
        pytest.skip("needs /usr/share/common-licenses/GPL-3")
    doc.write_text(GPL3.read_text()[:4000])
    env = {**os.environ, "COMMA_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen"}
    for i, extra in enumerate([["--while-reading"], ["--ask", "Who publishes this licence?"], ["--summarize"], []]):
        shot = tmp_path / f"shot{i}.png"
        done = subprocess.run([sys.executable, "main.py", "--open", str(doc), "--screenshot", str(shot), *extra],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert done.returncode == 0 and shot.stat().st_size > 10_000, (extra, done.stderr[-2000:])
