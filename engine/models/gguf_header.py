"""What a GGUF file says about its model, read from the file's header before llama.cpp parses
it, and whether Comma can use that model at all.

A model file is something a person brings: it may be truncated, not a GGUF at all, or crafted.
Every count and length in the header is checked against the file's size, and against limits far
above any real model, before it is used, so a bad file gives a ``ModelError`` that says what is
wrong, and reading holds a few MB at most. The header is walked here rather than by
``gguf.GGUFReader``: that reader makes a numpy array of every tokenizer entry (3.6 s and 190 MB
for the bundled model on this project's machines, and without bound for a crafted file), where
this steps over the arrays it does not need. The ``gguf`` package still names the types.

``refusal`` says why a model cannot hold a separator-compressed memory: its KV cache must be one
plain attention cache, from which a middle range can be removed and the rest re-positioned.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, LlamaFileType

from engine.errors import ModelError

# Families whose KV cache is one plain attention cache: a middle range can be removed and the
# rest re-positioned. Sliding-window, hybrid and recurrent families cannot (llama.cpp refuses
# a partial removal there), so a separator-compressed memory is impossible for them.
EVICTABLE_ARCHITECTURES = frozenset(
    {"llama", "qwen2", "qwen3", "mistral", "mistral3", "granite", "olmo", "olmo2", "phi3",
     "internlm2", "deepseek", "minicpm", "stablelm", "starcoder2", "smollm3", "exaone"}
)
# Families whose files may name a sliding window that llama.cpp ignores, keeping one plain
# cache (phi3: "Phi SWA is currently disabled", llama.cpp#13676).
_WINDOW_IGNORED = frozenset({"phi3"})
# Metadata groups that only families with recurrent layers carry: state-space (Mamba, Jamba,
# Falcon-H1, Granite and Nemotron hybrids, Qwen3-Next), RWKV, and LFM2's short convolutions.
_RECURRENT_GROUPS = ("ssm.", "wkv.", "shortconv.", "time_mix_extra_dim", "time_decay_extra_dim",
                     "token_shift_count")
_ADVICE = "use a Llama, Qwen2/3 or Mistral-family GGUF"

# Far above any real model (tens of keys, a few thousand tensors, vocabularies under 300K
# entries), low enough that a crafted count can make reading neither slow nor large.
MAX_KEYS = 1 << 14
MAX_KEY_BYTES = 1 << 10
MAX_TENSORS = 1 << 16
MAX_TENSOR_NAME_BYTES = 1 << 10
MAX_ARRAY_ITEMS = 1 << 22  # in all arrays together: each string in one is a step of the walk
MAX_DIMS = 4  # ggml's own limit
_KEPT_STRING_BYTES = 256  # longer strings (the chat template, licences) are stepped over
_KEPT_ARRAY_ITEMS = 1 << 12  # shorter numeric arrays are kept: per-layer head counts
_VERSIONS = (2, 3)  # version 1 had 32-bit counts; llama.cpp reads neither it nor anything newer

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SCALARS = {
    GGUFValueType.UINT8: struct.Struct("<B"), GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"), GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: _U32, GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.UINT64: _U64, GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT32: struct.Struct("<f"), GGUFValueType.FLOAT64: struct.Struct("<d"),
    GGUFValueType.BOOL: struct.Struct("<?"),
}

Value = bool | int | float | str | tuple


@dataclass(frozen=True)
class ModelInfo:
    """A model file as its header describes it; ``None`` where the header does not say."""

    path: Path
    file_size: int
    architecture: str
    name: str
    context_length: int | None
    n_layer: int | None
    n_head: int | None  # per-layer counts (OpenELM) are given as their largest
    n_head_kv: int | None
    file_type: int  # ``general.file_type`` (llama.cpp's LLAMA_FTYPE_*), -1 where absent
    file_type_name: str  # "Q4_K_M", "F16"; without a file type, the weights' most common type
    n_params: int  # elements of every tensor
    has_chat_template: bool
    sliding_window: int | None  # the attention window the file names, if any
    recurrent: bool  # recurrent or hybrid layers, whose state replaces part of the KV cache

    @property
    def uses_sliding_window(self) -> bool:
        """Whether llama.cpp would hide tokens beyond a window from attention."""
        window = self.sliding_window
        if not window or self.architecture in _WINDOW_IGNORED:
            return False
        return self.context_length is None or window < self.context_length


class _Damaged(Exception):
    """Why a header cannot be trusted, in words for the person."""


@dataclass(frozen=True)
class _Unread:
    """A value stepped over (a long string, a long or string array): only its size is kept."""

    items: int


class _Cursor:
    """Reads the header from the front, never past the end of the file."""

    def __init__(self, data: mmap.mmap, size: int):
        self.data, self.size, self.pos = data, size, 0
        self.array_items = 0

    def take(self, fmt: struct.Struct):
        if fmt.size > self.size - self.pos:
            raise _Damaged(f"the file ends inside its header (at byte {self.size:,})")
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return value

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Damaged(f"{what} of {n:,} bytes at byte {self.pos:,} runs past the end of the file "
                           f"({self.size:,} bytes)")
        self.pos += n

    def string(self, what: str, keep: int) -> str | _Unread:
        """A string of at most ``keep`` bytes, decoded; a longer one stepped over."""
        length = self.take(_U64)
        start = self.pos
        self.skip(length, what)
        if length > keep:
            return _Unread(length)
        return self.data[start:start + length].decode("utf-8", "replace")


def _value(c: _Cursor, kind: int, key: str) -> Value | _Unread:
    if kind in _SCALARS:
        return c.take(_SCALARS[GGUFValueType(kind)])
    if kind == GGUFValueType.STRING:
        return c.string(f"the value of {key!r}", _KEPT_STRING_BYTES)
    if kind != GGUFValueType.ARRAY:
        raise _Damaged(f"the key {key!r} has an unknown value type ({kind})")
    item_kind, count = c.take(_U32), c.take(_U64)
    c.array_items += count
    if c.array_items > MAX_ARRAY_ITEMS:
        raise _Damaged(f"the array {key!r} claims {count:,} items, more than a real model has in all its arrays")
    if item_kind == GGUFValueType.STRING:
        for _ in range(count):
            c.skip(c.take(_U64), f"a string in {key!r}")
        return _Unread(count)
    if item_kind not in _SCALARS:
        # Arrays of arrays among them: llama.cpp does not read them either.
        raise _Damaged(f"the array {key!r} has items of an unsupported type ({item_kind})")
    fmt = _SCALARS[GGUFValueType(item_kind)]
    if count > _KEPT_ARRAY_ITEMS:
        c.skip(count * fmt.size, f"the array {key!r}")
        return _Unread(count)
    return tuple(c.take(fmt) for _ in range(count))


def _metadata(c: _Cursor) -> tuple[int, dict[str, Value | _Unread]]:
    """The tensor count and every key's value, after checking the fixed header."""
    if c.size < 4 or c.data[:4] != b"GGUF":
        raise _Damaged("it does not start with the GGUF signature")
    c.pos = 4
    version = c.take(_U32)
    if version & 0xFFFF == 0:
        raise _Damaged("it is a big-endian GGUF, made for another kind of computer")
    if version not in _VERSIONS:
        raise _Damaged(f"it is GGUF version {version}, and llama.cpp reads versions 2 and 3")
    n_tensors, n_keys = c.take(_U64), c.take(_U64)
    if n_tensors > MAX_TENSORS:
        raise _Damaged(f"its header claims {n_tensors:,} tensors, where a real model has a few thousand at most")
    if n_keys > MAX_KEYS:
        raise _Damaged(f"its header claims {n_keys:,} metadata keys, where a real model has under a hundred")
    values: dict[str, Value | _Unread] = {}
    for _ in range(n_keys):
        key = c.string("a metadata key", MAX_KEY_BYTES)
        if isinstance(key, _Unread):
            raise _Damaged(f"a metadata key is {key.items:,} bytes long")
        if key in values:
            raise _Damaged(f"its header names the key {key!r} twice")
        values[key] = _value(c, c.take(_U32), key)
    return n_tensors, values


def _tensors(c: _Cursor, n_tensors: int, alignment: int) -> tuple[int, Counter[GGMLQuantizationType]]:
    """Parameter count and bytes per weight type; checks that all weights lie inside the file."""
    n_params, bytes_by_type, data_end = 0, Counter[GGMLQuantizationType](), 0
    for _ in range(n_tensors):
        name = c.string("a tensor name", MAX_TENSOR_NAME_BYTES)
        if isinstance(name, _Unread):
            raise _Damaged(f"a tensor name is {name.items:,} bytes long")
        n_dims = c.take(_U32)
        if n_dims > MAX_DIMS:
            raise _Damaged(f"the tensor {name!r} has {n_dims:,} dimensions (at most {MAX_DIMS})")
        dims = [c.take(_U64) for _ in range(n_dims)]
        kind, offset = c.take(_U32), c.take(_U64)
        try:
            quant = GGMLQuantizationType(kind)
        except ValueError:
            raise _Damaged(f"the tensor {name!r} has an unknown weight type ({kind})") from None
        block, block_bytes = GGML_QUANT_SIZES[quant]
        n = math.prod(dims)
        if dims and dims[0] % block:
            raise _Damaged(f"the tensor {name!r} is {dims[0]:,} wide, not a whole number of {quant.name} blocks")
        n_params += n
        bytes_by_type[quant] += n // block * block_bytes
        data_end = max(data_end, offset + n // block * block_bytes)
    data_start = -(-c.pos // alignment) * alignment
    if data_start + data_end > c.size:
        raise _Damaged(f"its weights end at byte {data_start + data_end:,} but the file has only {c.size:,} bytes "
                       "(an incomplete download?)")
    return n_params, bytes_by_type


def _int(value: Value | _Unread | None) -> int | None:
    """A count from the header: a whole number, or the largest of a per-layer list of them."""
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        value = max(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _file_type_name(file_type: int, bytes_by_type: Counter[GGMLQuantizationType]) -> str:
    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        # No (known) file type: the type most of the weights are stored in says nearly as much.
        return bytes_by_type.most_common(1)[0][0].name if bytes_by_type else "unknown"


def _info(path: Path, size: int, n_tensors: int, values: dict[str, Value | _Unread], c: _Cursor) -> ModelInfo:
    arch = values.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _Damaged("its header names no architecture (general.architecture)")
    alignment = values.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise _Damaged(f"its data alignment ({alignment!r}) is not a power of two")
    n_params, bytes_by_type = _tensors(c, n_tensors, alignment)
    name = values.get("general.name")
    file_type = _int(values.get("general.file_type"))
    template = values.get("tokenizer.chat_template")
    return ModelInfo(
        path=path, file_size=size, architecture=arch,
        name=name if isinstance(name, str) and name.strip() else path.stem,
        context_length=_int(values.get(f"{arch}.context_length")),
        n_layer=_int(values.get(f"{arch}.block_count")),
        n_head=_int(values.get(f"{arch}.attention.head_count")),
        n_head_kv=_int(values.get(f"{arch}.attention.head_count_kv")),
        file_type=-1 if file_type is None else file_type,
        file_type_name=_file_type_name(-1 if file_type is None else file_type, bytes_by_type),
        n_params=n_params,
        has_chat_template=bool(template.items if isinstance(template, _Unread) else template),
        sliding_window=_int(values.get(f"{arch}.attention.sliding_window")),
        recurrent=any(key.startswith(f"{arch}.{group}") for key in values for group in _RECURRENT_GROUPS),
    )


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The header of the GGUF file at ``path``; ``ModelError`` with the reason when it is not a
    usable one (not GGUF, truncated, damaged or crafted counts, no architecture)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _Damaged("the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                c = _Cursor(data, size)
                n_tensors, values = _metadata(c)
                return _info(path, size, n_tensors, values, c)
    except _Damaged as exc:
        raise ModelError(f"{path.name} cannot be used as a GGUF model: {exc}") from None
    except OSError as exc:
        raise ModelError(f"could not read {path}: {exc.strerror or exc}") from exc


def refusal(info: ModelInfo) -> str | None:
    """Why Comma cannot keep a compressed memory with this model; None when it can."""
    cannot = "so Comma cannot keep a compressed memory with it"
    if info.recurrent:
        return (f"{info.path.name} is a {info.architecture!r} model with recurrent layers, whose state cannot "
                f"be partially removed, {cannot}; {_ADVICE}")
    if info.uses_sliding_window:
        return (f"{info.path.name} uses sliding-window attention (a window of {info.sliding_window:,} tokens), "
                f"whose KV cache cannot be partially removed, {cannot}; {_ADVICE}")
    if info.architecture not in EVICTABLE_ARCHITECTURES:
        return (f"{info.path.name} is a {info.architecture!r} model, whose KV cache cannot be partially removed, "
                f"{cannot}; {_ADVICE}")
    return None
