"""A memory file with a valid checksum around a header or sections its writer would never make
is refused with a MemoryFileError that says what is wrong, before anything is sized from it;
any mutation of a real memory either loads exactly what the file holds or is refused; and any
mutation of a real recall store, checksummed again, is refused or answers questions."""

import hashlib
import json
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.answering.conversation import Conversation
from engine.documents.document import read_document
from engine.errors import MemoryFileError
from engine.memory.file_format import FORMAT_VERSION, MAGIC, StoreWriter, open_store, read_memory, write_memory
from engine.memory.memory import Memory
from engine.policy import make_policy
from engine.reading.reader import read
from engine.recall.store import RecallStore
from tests.fakes import FakeModel

TEXT = "\n\n".join(f"Page {p} of the harbour rules. Boats moor at berth {p}, and pay {p} coins a night. " * 10
                   for p in range(1, 13))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A memory the fake model really read (sepllm, evictions happened), and its parts."""
    folder = tmp_path_factory.mktemp("memory")
    doc = folder / "harbour.txt"
    doc.write_text(TEXT)
    model = FakeModel()
    result = read(model, read_document(doc), make_policy("sepllm", 160), notes=False, chunk=32)
    path = folder / "real.mem"
    result.memory.save(path)
    f = read_memory(path)
    header = {k: v for k, v in f.header.items() if k not in ("sections", "format_version")}
    return model, path.read_bytes(), header, dict(f.sections)


def load(model, path, header, sections):
    write_memory(path, header, sections)
    return Memory.load_for(model, path)


def test_the_real_memory_loads(real, tmp_path):
    model, _, header, sections = real
    memory = load(model, tmp_path / "m.mem", header, sections)
    assert memory.kept_tokens == header["kept_tokens"] <= 160 and memory.pages()


def _offsets(values):
    return np.asarray(values, dtype="<i8").tobytes()


CASES = {
    "no kept_tokens": (lambda h, s: h.pop("kept_tokens"), "lacks 'kept_tokens'"),
    "kept_tokens a bool": (lambda h, s: h.update(kept_tokens=True), "'kept_tokens' is not a whole number"),
    "kept_tokens a float": (lambda h, s: h.update(kept_tokens=1e300), "'kept_tokens' is not a whole number"),
    "kept_tokens negative": (lambda h, s: h.update(kept_tokens=-1), "'kept_tokens' is not a whole number"),
    "kept_tokens not the slots": (lambda h, s: h.update(kept_tokens=h["kept_tokens"] - 1), "sections hold"),
    "page starts missing": (lambda h, s: h.pop("page_token_starts"), "lacks 'page_token_starts'"),
    "page starts a dict": (lambda h, s: h.update(page_token_starts={}), "'page_token_starts' is not a list"),
    "page starts reversed": (lambda h, s: h.update(page_token_starts=h["page_token_starts"][::-1]), "out of order"),
    "a page past the end": (lambda h, s: h["page_token_starts"].append(10**9), "out of order or outside"),
    "a page start a string": (lambda h, s: h["page_token_starts"].append("7"), "'page_token_starts[]' is not"),
    "an unknown kind": (lambda h, s: h.update(kind="sermon"), "unknown kind"),
    "an unknown policy": (lambda h, s: h.update(policy={"name": "magic"}), "policy is not one"),
    "an impossible policy": (lambda h, s: h["policy"].update(window=10**6), "policy is not one"),
    "a policy size of Infinity": (lambda h, s: h["policy"].update(capacity=float("inf")),
                                  "'policy.capacity' is not a whole number"),
    "a policy that keeps fewer": (lambda h, s: h["policy"].update(capacity=100, window=50), "more than its policy keeps"),
    "no token_ids": (lambda h, s: s.pop("token_ids"), "no 'token_ids' section"),
    "no state": (lambda h, s: s.pop("state"), "no 'state' section"),
    "odd-length offsets": (lambda h, s: s.update(offsets=s["offsets"][:-3]), "not a whole number of slots"),
    "fewer separators": (lambda h, s: s.update(separators=s["separators"][:-1]), "different numbers of slots"),
    "offsets reversed": (lambda h, s: s.update(offsets=np.frombuffer(s["offsets"], "<i8")[::-1].tobytes()),
                         "not strictly increasing"),
    "offsets repeated": (lambda h, s: s.update(offsets=_offsets(np.zeros(h["kept_tokens"]))), "not strictly increasing"),
    "an offset below 0": (lambda h, s: s.update(offsets=_offsets(np.arange(h["kept_tokens"]) - 5)), "from 0"),
    "an offset past the read": (lambda h, s: s.update(offsets=_offsets(np.arange(h["kept_tokens"]) + 10**6)),
                                "past the end of its read"),
    "a negative token id": (lambda h, s: s.update(token_ids=np.full(h["kept_tokens"], -3, "<i4").tobytes()),
                            "negative token ids"),
    "a token id past the vocabulary": (
        lambda h, s: s.update(token_ids=np.full(h["kept_tokens"], 2**31 - 1, "<i4").tobytes()),
        "token ids past the model's vocabulary of 258 tokens"),
    "chunks on another backend": (lambda h, s: h.update(chunks=[70, 10**12], parallel_chunk_tokens=70),
                                  "only the torch backend"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_crafted_memory_is_refused_with_what_is_wrong(real, tmp_path, case):
    model, _, header, sections = real
    header, sections = json.loads(json.dumps(header)), dict(sections)
    change, words = CASES[case]
    change(header, sections)
    with pytest.raises(MemoryFileError, match=r"m\.mem cannot be used: .*" + re.escape(words) + r".*; read the document again"):
        load(model, tmp_path / "m.mem", header, sections)


@pytest.mark.parametrize("chunks, words", [
    ([70, 10**12], "add up to"),
    ([1] * 3, "add up to"),
    ("many", "more slots than a chunk"),
    ("skewed", "lengths no parallel read makes"),
])
def test_parallel_chunks_are_bounded_by_the_slot_count(real, tmp_path, chunks, words):
    _, _, header, sections = real
    n = header["kept_tokens"]
    skew = [1] * (n // 2) + [n - n // 2]  # many one-slot rows beside a long one
    header = {**header, "backend": "torch", "parallel_chunk_tokens": n if chunks == "skewed" else 8,
              "prompt_tokens": 0, "document_tokens": header["document_tokens"] + header["prompt_tokens"],
              "chunks": {"many": [n], "skewed": skew}.get(chunks, chunks) if isinstance(chunks, str) else chunks}
    path = tmp_path / "m.mem"
    write_memory(path, header, sections)
    with pytest.raises(MemoryFileError, match=words):
        Memory.load(path, model_fingerprint=header["model_fingerprint"], backend="torch")


def test_a_state_that_cannot_hold_the_slots_claimed_is_refused_before_any_cache(tmp_path, monkeypatch):
    """The audit's 650 KB file claiming 50,000 kept tokens: slot sections and policy agree with the
    claim, the state does not; asking refuses it, and no cache was sized from it."""
    from engine.pipeline.comma import Comma
    from storage.library import Library
    from tests.fakes import use_fake_model

    model = use_fake_model(monkeypatch, token_seconds=0)
    doc = tmp_path / "harbour.txt"
    doc.write_text(TEXT)
    comma = Comma(Library(tmp_path / "home"))
    report = comma.ingest(doc, notes=False)
    path = Path(report["memory_path"])
    f = read_memory(path)
    n = 50_000
    header = {k: v for k, v in f.header.items() if k not in ("sections", "format_version")}
    header.update(kept_tokens=n, document_tokens=10**6, policy={**header["policy"], "capacity": 60_000})
    write_memory(path, header, {**f.sections, "token_ids": np.zeros(n, "<i4").tobytes(),
                                "offsets": _offsets(np.arange(n)), "separators": bytes(n)})
    crafted, caches = path.read_bytes(), len(model.created)
    with pytest.raises(MemoryFileError, match="tokens, not 50000"):
        comma.ask(report["doc_id"], "Where do boats moor?")
    assert len(model.created) == caches and path.read_bytes() == crafted


# -- property: every mutation of a real memory loads exactly or is refused ---------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
FIELDS = st.sampled_from(["model_fingerprint", "backend", "document_sha256", "policy", "kept_tokens", "document_tokens",
                          "prompt_tokens", "page_token_starts", "kind", "chunks", "read_id", "checkpoint", "chunk"])
SECTIONS = st.sampled_from(["token_ids", "offsets", "separators", "state"])


def _set_field(data, name, value):
    data["header"][name] = value


def _drop_field(data, name):
    data["header"].pop(name, None)


def _set_in_list(data, name, index, value):
    field = data["header"].get(name)
    if isinstance(field, list) and field:
        field[index % len(field)] = value
    elif isinstance(field, dict) and field:
        field[sorted(field)[index % len(field)]] = value


def _resize_section(data, name, size):
    blob = data["sections"].get(name, b"")
    data["sections"][name] = (blob * (size // max(len(blob), 1) + 1))[:size]


def _drop_section(data, name):
    data["sections"].pop(name, None)


def _reorder_sections(data, seed):
    items = list(data["sections"].items())
    np.random.default_rng(seed).shuffle(items)
    data["sections"] = dict(items)


def _flip_section_byte(data, name, where):
    blob = bytearray(data["sections"].get(name, b""))
    if blob:
        blob[where % len(blob)] ^= 0xFF
        data["sections"][name] = bytes(blob)


MUTATIONS = st.one_of(
    st.tuples(st.just(_set_field), FIELDS | st.text(max_size=6), JSON),
    st.tuples(st.just(_drop_field), FIELDS),
    st.tuples(st.just(_set_in_list), FIELDS, st.integers(0, 50), JSON),
    st.tuples(st.just(_resize_section), SECTIONS, st.integers(0, 5000)),
    st.tuples(st.just(_drop_section), SECTIONS),
    st.tuples(st.just(_reorder_sections), st.integers(0, 2**32)),
    st.tuples(st.just(_flip_section_byte), SECTIONS, st.integers(0, 10**6)),
)
# Raw header text no writer makes: deep nesting, numbers too long for Python, JSON's Infinity.
RAW = st.one_of(
    st.integers(1, 300_000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 6000).map(lambda digits: '{"kept_tokens": ' + "9" * digits + "}"),
    st.sampled_from(['{"kept_tokens": Infinity}', '{"kept_tokens": NaN}', "[]", "null", '"x"', "{"]),
)


def _write_raw(path: Path, header_text: str, sections: dict[str, bytes]) -> None:
    data = b"".join(sections.values())
    body = struct.pack("<8sIQ", MAGIC, FORMAT_VERSION, len(header_text.encode())) + header_text.encode() + data
    path.write_bytes(body + hashlib.sha256(body).digest())


def _check_one(model, path: Path) -> None:
    """Load ``path``: a MemoryFileError, or a memory that is exactly the file's sections."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        memory = Memory.load_for(model, path)
    except MemoryFileError:
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 16 * size + (4 << 20), f"loading a {size}-byte file took {peak} bytes"
    s = read_memory(path).sections
    assert memory.token_ids.tolist() == np.frombuffer(s["token_ids"], "<i4").tolist()
    assert memory.offsets.tolist() == np.frombuffer(s["offsets"], "<i8").tolist()
    assert memory.separators.tolist() == [bool(b) for b in s["separators"]]
    assert memory.state == s["state"] and memory.kept_tokens == memory.header["kept_tokens"]
    assert all(1 <= p <= len(memory.header["page_token_starts"]) for p in memory.pages())


def _mutated(header: dict, sections: dict, mutations: list) -> dict:
    """A copy of a real file's header and sections with ``mutations`` applied in turn."""
    data = {"header": json.loads(json.dumps(header)), "sections": dict(sections)}
    for mutate, *args in mutations:
        mutate(data, *args)
    return data


def _write_mutated(write, path, header: dict, sections: dict, mutations: list) -> bool:
    """Write a real file's header and sections with ``mutations`` applied; False where json
    itself cannot write the result (a NaN key, say)."""
    data = _mutated(header, sections, mutations)
    try:
        write(path, data["header"], data["sections"])
    except (TypeError, ValueError):
        return False
    return True


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_any_mutation_of_a_real_memory_loads_exactly_or_is_refused(real, tmp_path, mutations):
    model, _, header, sections = real
    path = tmp_path / "mutated.mem"
    if not _write_mutated(write_memory, path, header, sections, mutations):
        return
    _check_one(model, path)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header_text=RAW)
def test_any_raw_header_is_refused_without_a_traceback(real, tmp_path, header_text):
    model, _, _, sections = real
    path = tmp_path / "raw.mem"
    _write_raw(path, header_text, sections)
    _check_one(model, path)


# -- property: every mutation of a real recall store is refused or answers ------------------------

QUESTION = "Where do boats moor on page 7?"


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """A memory and the recall store the same read wrote, as their files hold them."""
    folder = tmp_path_factory.mktemp("store")
    doc = folder / "harbour.txt"
    doc.write_text(TEXT)
    model = FakeModel()
    result = read(model, read_document(doc), make_policy("sepllm", 160), notes=False, chunk=32,
                  recall=folder / "real.recall")
    result.memory.save(folder / "real.mem")
    assert result.recall is not None
    result.recall.commit()
    memory = Memory.load_for(model, folder / "real.mem")
    f = open_store(folder / "real.recall", model_fingerprint=model.fingerprint, backend=model.backend)
    header = {k: v for k, v in f.header.items() if k not in ("sections", "format_version")}
    return model, memory, header, f.read(list(f.sections))


def _write_store(path: Path, header: dict, sections: dict[str, bytes]) -> None:
    """A store with these sections and header, every checksum in it valid."""
    with StoreWriter(path) as writer:
        for name, blob in sections.items():
            writer.add(name, blob)
        writer.seal(header)
        writer.commit()


def test_the_real_store_answers(real_store, tmp_path):
    model, memory, header, sections = real_store
    _write_store(tmp_path / "s.recall", header, sections)
    _check_store(model, memory, tmp_path / "s.recall", recalled=True)


def _tokens(data) -> np.ndarray:
    blob = data["sections"].get("tokens", b"")
    return np.frombuffer(blob[:len(blob) // 4 * 4], "<i4").copy()


def _set_token(data, index, value):
    tokens = _tokens(data)
    if tokens.size:
        tokens[index % tokens.size] = value
        data["sections"]["tokens"] = tokens.astype("<i4").tobytes()


def _set_all_tokens(data, value):
    data["sections"]["tokens"] = np.full(_tokens(data).size, value, "<i4").tobytes()


def _pieces(data) -> list:
    pieces = data["header"].get("pieces")
    return pieces if isinstance(pieces, list) and pieces else []


def _set_in_piece(data, index, column, value):
    """A piece's first offset, token count, page or passage (columns 0 to 3)."""
    pieces = _pieces(data)
    if pieces and isinstance(pieces[index % len(pieces)], list) and pieces[index % len(pieces)]:
        piece = pieces[index % len(pieces)]
        piece[column % len(piece)] = value


def _shift_in_piece(data, index, column, delta):
    pieces = _pieces(data)
    piece = pieces[index % len(pieces)] if pieces else None
    if isinstance(piece, list) and len(piece) == 4 and type(piece[column % 4]) is int:
        piece[column % 4] += delta


def _drop_piece(data, index):
    pieces = _pieces(data)
    if pieces:
        del pieces[index % len(pieces)]


def _repeat_piece(data, index, to):
    pieces = _pieces(data)
    if pieces:
        pieces.insert(to % len(pieces), json.loads(json.dumps(pieces[index % len(pieces)])))


def _swap_pieces(data, a, b):
    pieces = _pieces(data)
    if pieces:
        a, b = a % len(pieces), b % len(pieces)
        pieces[a], pieces[b] = pieces[b], pieces[a]


def _drop_store_section(data, index):
    names = sorted(data["sections"])
    if names:
        data["sections"].pop(names[index % len(names)])


INT32 = st.integers(-(2**31), 2**31 - 1) | st.sampled_from([-1, 0, 255, 257, 258, 2**31 - 1])
NUMBER = st.integers(-(2**40), 2**40) | st.integers(-3, 40) | JSON
STORE_FIELDS = st.sampled_from(["pieces", "prompt_tokens", "read_id", "document_sha256", "kind"])
STORE_MUTATIONS = st.one_of(
    st.tuples(st.just(_set_token), st.integers(0, 10**6), INT32),
    st.tuples(st.just(_set_all_tokens), INT32),
    st.tuples(st.just(_resize_section), st.just("tokens"), st.integers(0, 20_000)),
    st.tuples(st.just(_set_in_piece), st.integers(0, 500), st.integers(0, 3), NUMBER),
    st.tuples(st.just(_shift_in_piece), st.integers(0, 500), st.integers(0, 3), st.integers(-40, 40)),
    st.tuples(st.just(_drop_piece), st.integers(0, 500)),
    st.tuples(st.just(_repeat_piece), st.integers(0, 500), st.integers(0, 500)),
    st.tuples(st.just(_swap_pieces), st.integers(0, 500), st.integers(0, 500)),
    st.tuples(st.just(_drop_store_section), st.integers(0, 500)),
    st.tuples(st.just(_set_field), STORE_FIELDS, NUMBER),
    st.tuples(st.just(_drop_field), STORE_FIELDS),
)


def _check_store(model, memory: Memory, path: Path, recalled: bool = False) -> None:
    """Open ``path`` for ``memory``: a MemoryFileError, or a store whose every passage is on a page
    of the document, reads back and answers a question."""
    try:
        store = RecallStore.open(path, model, memory.header)
    except MemoryFileError:
        return
    pages = len(memory.header["page_token_starts"])
    prompt, length = memory.header["prompt_tokens"], memory.header["prompt_tokens"] + memory.header["document_tokens"]
    for passage in store.passages:
        assert 1 <= passage.page <= pages
        assert all(prompt <= o.min() and o.max() < length for o in store.piece_offsets(passage))
        assert isinstance(store.text(passage, model), str)
    with Conversation(model, memory, recall=store) as conversation:
        answer = "".join(conversation.ask(QUESTION, candidate_pages=[(p, 1.0) for p in range(1, pages + 1)]))
        assert answer
        assert all(1 <= source.page <= pages for source in conversation.sources)
        # A passage whose KV state is not its claimed tokens is the backend's to refuse when it
        # loads it: the answer then comes from the memory alone, citing none.
        assert conversation.recall_error is None or conversation.sources == []
        if recalled:
            assert conversation.sources and conversation.recall_error is None


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(STORE_MUTATIONS, min_size=1, max_size=3))
def test_any_mutation_of_a_real_store_is_refused_or_answers(real_store, tmp_path, mutations):
    model, memory, header, sections = real_store
    path = tmp_path / "mutated.recall"
    if not _write_mutated(_write_store, path, header, sections, mutations):
        return
    _check_store(model, memory, path)


@pytest.mark.parametrize("change, words", [
    (lambda data: _set_token(data, 5, 2**31 - 1), "outside the model's vocabulary of 258 tokens"),
    (lambda data: _set_token(data, 5, -1), "outside the model's vocabulary"),
    (lambda data: _set_in_piece(data, 3, 2, data["header"]["pieces"][3][2] + 1), "unreadable passage table"),
    (lambda data: _shift_in_piece(data, 0, 0, -1), "unreadable passage table"),
    (lambda data: data["header"].update(prompt_tokens=data["header"]["prompt_tokens"] + 1), "unreadable passage"),
    (lambda data: _resize_section(data, "tokens", len(data["sections"]["tokens"]) - 4), "unreadable passage"),
], ids=["an id past the vocabulary", "a negative id", "a piece on another page", "a piece in the prompt",
        "another prompt", "a token fewer"])
def test_a_crafted_store_is_refused_with_what_is_wrong(real_store, tmp_path, change, words):
    model, memory, header, sections = real_store
    data = _mutated(header, sections, [])
    change(data)
    _write_store(tmp_path / "s.recall", data["header"], data["sections"])
    with pytest.raises(MemoryFileError, match=r"recall store .*s\.recall is damaged \(.*" + re.escape(words)):
        RecallStore.open(tmp_path / "s.recall", model, memory.header)
