"""A fake backend built on the engine contract (engine.protocols): byte tokens, a cache that only
records what it holds, and logits that spell a fixed answer. Reading, asking, notes and
summaries run through the real engine code on it in milliseconds, so the window's tests that do
not judge the model's words need no model at all."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np

from engine.errors import MemoryFileError
from engine.protocols import Available, Capabilities, Logits
from engine.vocabulary import PieceVocabulary

SPECIAL = ["<|im_start|>", "<|im_end|>"]
START, END = 256, 257
ANSWER = "The fake model answers from the last pages."


class FakeCache:
    def __init__(self, model: FakeModel, n_ctx: int):
        self.model, self.n_ctx = model, n_ctx
        self.tokens: list[int] = []
        self.offsets = np.zeros(0, dtype=np.int64)
        self.separators = np.zeros(0, dtype=bool)
        self._step = 0

    @property
    def length(self) -> int:
        return len(self.tokens)

    def _logits(self) -> np.ndarray:
        """One-hot on the next byte of the fixed answer, then the end token."""
        time.sleep(self.model.token_seconds)  # slow enough to press Stop while it streams
        logits = np.zeros(self.model.n_vocab, dtype=np.float32)
        script = ANSWER.encode()
        logits[script[self._step] if self._step < len(script) else END] = 10.0
        self._step += 1
        return logits

    def _add(self, tokens) -> None:
        tokens = [int(t) for t in np.asarray(tokens).reshape(-1)]
        if self.length + len(tokens) > self.n_ctx:
            raise ValueError(f"fake cache overflow: {self.length + len(tokens)} > {self.n_ctx}")
        if len(tokens) > 1:
            self._step = 0  # a prompt: the answer starts again
        self.tokens += tokens

    def append(self, tokens, offsets, separators, logits: Logits = Logits.NONE):
        self._add(tokens)
        self.offsets = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
        self.separators = np.concatenate([self.separators, np.asarray(separators, dtype=bool)])
        if logits is Logits.ALL:
            return np.zeros((len(tokens), self.model.n_vocab), dtype=np.float32)
        return self._logits() if logits is Logits.LAST else None

    def evict(self, keep) -> None:
        keep = np.asarray(keep)
        self.tokens = [self.tokens[i] for i in keep.tolist()]
        self.offsets, self.separators = self.offsets[keep], self.separators[keep]

    def truncate(self, length: int) -> None:
        self.tokens = self.tokens[:length]
        self.offsets, self.separators = self.offsets[:length], self.separators[:length]

    def decode_main_tail(self, tokens) -> np.ndarray:
        self._add(tokens)
        return self._logits()

    def snapshot(self) -> bytes:
        return json.dumps(self.tokens).encode()

    def restore(self, state: bytes, offsets, separators) -> None:
        tokens = json.loads(state)
        if len(tokens) != len(offsets):
            raise MemoryFileError("the fake state does not match its offsets")
        self.tokens, self.offsets = tokens, np.asarray(offsets, dtype=np.int64)
        self.separators = np.asarray(separators, dtype=bool)

    def export_slots(self, start: int, end: int) -> bytes:
        return json.dumps(self.tokens[start:end]).encode()

    def import_slots(self, state: bytes, offsets) -> None:
        tokens = json.loads(state)
        if len(tokens) != len(offsets):
            raise MemoryFileError("a fake passage does not match its offsets")
        in_conversation = self.length > len(self.offsets)
        self._add(tokens)
        if not in_conversation:
            self.offsets = np.concatenate([self.offsets, np.asarray(offsets, dtype=np.int64)])
            self.separators = np.concatenate([self.separators, np.zeros(len(tokens), dtype=bool)])

    def remove(self, start: int, end: int) -> None:
        del self.tokens[start:end]
        gone = np.arange(start, min(end, len(self.offsets)))
        self.offsets, self.separators = np.delete(self.offsets, gone), np.delete(self.separators, gone)

    def log_probs_after(self, branches, tokens, scored: int, prefix: int) -> np.ndarray:
        """A question byte is likely after a passage that holds it with the two bytes before it:
        enough to rank passages by the words they share with the question."""
        out = np.zeros((len(branches), scored))
        tokens = [int(t) for t in tokens]
        for i, pieces in enumerate(branches):
            text = [t for state, _n in pieces for t in json.loads(state)]
            held = set(zip(text, text[1:], text[2:], strict=False))
            out[i] = [0.0 if tuple(tokens[j - 2:j + 1]) in held else -5.0
                      for j in range(len(tokens) - scored, len(tokens))]
        return out

    def close(self) -> None:
        self.tokens = []

    def __enter__(self) -> FakeCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeModel(PieceVocabulary):
    backend = "fake"
    name = "Fake model"
    path = Path("fake.gguf")
    fingerprint = "f" * 64
    derived_from = None
    n_ctx_train = 1 << 20
    n_layer = 1
    bos = START
    capabilities = Capabilities(recall=True)

    def __init__(self, token_seconds: float = 0.0):
        self.token_seconds = token_seconds
        self.pieces = [bytes([b]) for b in range(256)] + [s.encode() for s in SPECIAL]
        self.n_vocab = len(self.pieces)
        self.created: list[FakeCache] = []
        self.closed = False

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> np.ndarray:
        ids: list[int] = [START] if add_bos else []
        data = text.encode()
        i = 0
        while i < len(data):
            for n, s in enumerate(SPECIAL) if special else ():
                if data.startswith(s.encode(), i):
                    ids.append(256 + n)
                    i += len(s.encode())
                    break
            else:
                ids.append(data[i])
                i += 1
        return np.asarray(ids, dtype=np.int32)

    def apply_chat_template(self, messages: list[dict[str, str]], add_assistant: bool) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_assistant else "")

    def is_end_of_generation(self, token: int) -> bool:
        return token == END

    def new_cache(self, n_ctx: int, n_batch: int = 512) -> FakeCache:
        cache = FakeCache(self, n_ctx)
        self.created.append(cache)
        return cache

    def check_state(self, state: bytes, n_tokens: int) -> None:
        try:
            held = len(json.loads(state))
        except ValueError:
            raise MemoryFileError("the fake state is not JSON") from None
        if held != n_tokens:
            raise MemoryFileError(f"the fake state holds {held} tokens, not {n_tokens}")

    def log_probs_at(self, logits, targets: np.ndarray) -> np.ndarray:
        return np.full(len(targets), -np.log(self.n_vocab))

    def close(self) -> None:
        self.closed = True


class FakeAnswerer(FakeModel):
    """A second fake model, standing in for the answering model (another fingerprint and name)."""

    name = "Fake answering model"
    fingerprint = "a" * 64


class FakeEncoder:
    """A sentence encoder by shared words (hashed into 64 dimensions): pages are found by meaning
    only as far as they share words, in a millisecond instead of the real encoder's seconds."""

    dim = 64

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.strip(".,?!").encode()) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def use_fake_model(monkeypatch, token_seconds: float = 0.02, answerer: FakeModel | None = None,
                   answerer_reason: str | None = None, encoder=None) -> FakeModel:
    """Make every model load (the pipeline, from the CLI and the window's workers) return one fake model, the
    answering model's load return ``answerer`` (None: the reading model answers), and the
    sentence encoder's ``encoder`` (default: a FakeEncoder)."""
    fake = FakeModel(token_seconds)
    monkeypatch.setattr("engine.backends.loading.load_model", lambda *args, **kwargs: fake)
    monkeypatch.setattr("engine.backends.loading.load_answering_model",
                        lambda *args, **kwargs: Available(answerer, answerer_reason))
    chosen = encoder if encoder is not None else FakeEncoder()
    monkeypatch.setattr("engine.recall.sentence_encoder.load_encoder", lambda: Available(chosen))
    return fake


# A document with one fact to find, for recall tests on the fake model.
NEEDLE = "The secret harbour code is 4417, and it opens the east gate."
QUESTION = "What is the secret harbour code?"


def filler(page: int) -> str:
    words = ["river", "market", "lantern", "orchard", "meadow", "bridge", "window", "garden", "candle", "valley"]
    sentences = [f"Page {page} tells of the {words[(page + i) % 10]} and the {words[(page * 3 + i) % 10]} in turn {i}."
                 for i in range(30)]
    return " ".join(sentences)


def write_doc(path: Path, needle_at: int = 3, parts: int = 6) -> Path:
    """A TXT file (cut into 3,000-character pages when read) with the needle in part ``needle_at``."""
    path.write_text(" ".join(filler(p) + (f" {NEEDLE} " if p == needle_at else "") for p in range(1, parts + 1)))
    return path


def needle_page(comma, doc_id: str) -> int:
    return next(p for p in range(1, 100) if "4417" in comma.library.page_text(doc_id, p))


def scanned_pdf(path: Path, pages: list[list[str]], scanned: set[int]) -> Path:
    """A PDF of ``pages`` (lists of lines, 14 points apart); the pages in ``scanned`` (1-based) are
    pictures of their text at 150 dpi with no text layer, as a scanner makes them."""
    import pymupdf

    source = pymupdf.open()
    for lines in pages:
        page = source.new_page()
        for y, line in enumerate(lines):
            page.insert_text((72, 90 + 14 * y), line)
    pdf = pymupdf.open()
    for number, page in enumerate(source, start=1):
        if number in scanned:
            pdf.new_page(width=page.rect.width, height=page.rect.height).insert_image(
                page.rect, pixmap=page.get_pixmap(dpi=150))
        else:
            pdf.insert_pdf(source, from_page=number - 1, to_page=number - 1)
    pdf.save(path)
    return path


def set_raw_pdf_title(pdf, title: str) -> None:
    """Give a pymupdf document a /Title holding exactly ``title``, control characters included
    (set_metadata would map them to other characters), as a crafted file can."""
    pdf.set_metadata({"title": "x"})
    _, ref = pdf.xref_get_key(-1, "Info")
    pdf.xref_set_key(int(ref.split()[0]), "Title", "<FEFF" + title.encode("utf-16-be").hex().upper() + ">")
