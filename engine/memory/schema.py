"""What a memory file's header and sections must say before anything is sized or trusted from them.

A memory file's SHA-256 catches accidents, not intent: a file made by hand, or by another
program, can carry a valid checksum around any header. So every loaded memory is checked here,
by type and bound, field by field, before a cache is sized from it or a page is cited from it:

- the fields each kind of memory needs (a read's memory, or a long read's checkpoint), with
  their types; integers are plain integers within ``MAX_INT``, never booleans or floats;
- one slot count for all the slot sections (``token_ids``, ``offsets``, ``separators``) and
  ``kept_tokens``, within what the policy that made the memory can keep;
- offsets strictly increasing, below the read's length; pages' first tokens in order, inside it;
- token ids from 0 up to the vocabulary of the model that loads the memory;
- ``chunks`` (a parallel read's slots per chunk) only from the torch backend, adding up to the
  slot count.

The KV state itself is the backend's to check (``Cache.restore``), since only it knows its
layout. Every failure is a ``MemoryFileError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import MemoryFileError
from engine.policy import policy_from_description

# Larger than any real count of tokens, pages or bytes, small enough that nothing sized from
# it can ask for more than a file could hold.
MAX_INT = 1 << 40
SLOT_SECTIONS = {"token_ids": 4, "offsets": 8, "separators": 1}  # bytes per slot

_COMMON = {"model_fingerprint": str, "backend": str, "document_sha256": str, "policy": dict, "kept_tokens": int}
_READ = {**_COMMON, "document_tokens": int, "prompt_tokens": int, "page_token_starts": list}
_CHECKPOINT = {**_COMMON, "checkpoint": dict, "chunk": int}
_OPTIONAL = {"model_name": str, "read_id": str, "kind": str, "parallel_chunk_tokens": int, "chunks": list,
             "selected_chunks": list}


class _Unusable(Exception):
    """One reason a memory cannot be used; becomes the MemoryFileError's sentence."""


def _check_type(name: str, value, kind: type) -> None:
    if kind is int:
        if type(value) is not int or not 0 <= value <= MAX_INT:
            raise _Unusable(f"'{name}' is not a whole number between 0 and {MAX_INT}")
    elif not isinstance(value, kind):
        raise _Unusable(f"'{name}' is not a {kind.__name__}")


def _int_list(name: str, values: list) -> list[int]:
    for v in values:
        _check_type(f"{name}[]", v, int)
    return values


def _fields(header: dict) -> dict[str, type]:
    kind = header.get("kind", "memory")
    if kind == "checkpoint":
        return _CHECKPOINT
    if kind != "memory":
        raise _Unusable(f"it is of an unknown kind {kind!r}")
    return _READ


def _check_header(header: dict) -> None:
    required = _fields(header)
    for name, kind in required.items():
        if name not in header:
            raise _Unusable(f"its header lacks '{name}'")
        _check_type(name, header[name], kind)
    for name, kind in _OPTIONAL.items():
        if name in header:
            _check_type(name, header[name], kind)
    for name, value in header["policy"].items():
        if name != "name":  # every size of a policy is a whole number; Infinity would not be
            _check_type(f"policy.{name}", value, int)
    try:
        policy_from_description(header["policy"])
    except (KeyError, TypeError, ValueError):
        raise _Unusable("its policy is not one this Comma knows") from None


def _slot_count(sections: dict[str, bytes]) -> int:
    if "state" not in sections:
        raise _Unusable("it has no 'state' section")
    counts = set()
    for name, width in SLOT_SECTIONS.items():
        if name not in sections:
            raise _Unusable(f"it has no '{name}' section")
        if len(sections[name]) % width:
            raise _Unusable(f"its '{name}' section is not a whole number of slots")
        counts.add(len(sections[name]) // width)
    if len(counts) != 1:
        raise _Unusable("its token, offset and separator sections hold different numbers of slots")
    return counts.pop()


def _capacity(header: dict) -> int:
    """The most slots the policy that made the memory can leave in one cache row."""
    capacity = policy_from_description(header["policy"]).capacity
    if capacity is not None:
        return int(capacity)
    if "document_tokens" in header:
        return header["document_tokens"] + header["prompt_tokens"]
    return MAX_INT


def _check_chunks(header: dict, n: int) -> None:
    if "chunks" not in header:
        return
    if header["backend"] != "torch":
        raise _Unusable("it lists parallel chunks, which only the torch backend reads")
    if "parallel_chunk_tokens" not in header:
        raise _Unusable("it lists parallel chunks without their length")
    chunks = _int_list("chunks", header["chunks"])
    if not chunks or sum(chunks) != n:
        raise _Unusable(f"its chunks add up to {sum(chunks)} slots, not its {n}")
    # A chunk's row held the prompt and at most parallel_chunk_tokens of the document.
    prompt = header.get("prompt_tokens", 0)
    if max(chunks) > header["parallel_chunk_tokens"] + prompt:
        raise _Unusable("a chunk holds more slots than a chunk of its read can")
    # Chunks are scored side by side in rows as long as the longest: rows of a real read are
    # alike (the first also holds the prompt, the last may be short), so the rows' cells stay
    # near the slot count; a crafted skew would ask for rows x longest.
    if len(chunks) * max(chunks) > 2 * n + max(chunks) + len(chunks) * prompt:
        raise _Unusable("its chunks are of lengths no parallel read makes")


def _check_slots(header: dict, sections: dict[str, bytes], n: int, n_vocab: int | None) -> None:
    if header["kept_tokens"] != n:
        raise _Unusable(f"its header says {header['kept_tokens']} kept tokens, but its sections hold {n}")
    capacity = _capacity(header)
    if "chunks" not in header and n > capacity:
        raise _Unusable(f"it holds {n} slots, more than its policy keeps ({capacity})")
    offsets = np.frombuffer(sections["offsets"], dtype="<i8")
    if n and (offsets[0] < 0 or np.any(np.diff(offsets) <= 0)):
        raise _Unusable("its token offsets are not strictly increasing from 0")
    token_ids = np.frombuffer(sections["token_ids"], dtype="<i4")
    if np.any(token_ids < 0):
        raise _Unusable("it holds negative token ids")
    if n_vocab is not None and np.any(token_ids >= n_vocab):
        raise _Unusable(f"it holds token ids past the model's vocabulary of {n_vocab} tokens")
    if "document_tokens" in header:
        length = header["prompt_tokens"] + header["document_tokens"]
        if n and offsets[-1] >= length:
            raise _Unusable(f"a slot's offset ({int(offsets[-1])}) lies past the end of its read ({length} tokens)")
        starts = _int_list("page_token_starts", header["page_token_starts"])
        if any(b < a for a, b in zip(starts, starts[1:], strict=False)) or \
                any(not header["prompt_tokens"] <= s <= length for s in starts):
            raise _Unusable("its pages' first tokens are out of order or outside the read")


def check_memory(path: Path, header: dict, sections: dict[str, bytes], n_vocab: int | None = None) -> None:
    """Raise ``MemoryFileError`` unless the header and sections are a memory Comma can use
    (with ``n_vocab``, the model's vocabulary size, by a model that has every token id it holds)."""
    try:
        _check_header(header)
        n = _slot_count(sections)
        _check_slots(header, sections, n, n_vocab)
        _check_chunks(header, n)
    except _Unusable as exc:
        raise MemoryFileError(f"memory file {path} cannot be used: {exc}; read the document again "
                              "(ingest --force)") from None
