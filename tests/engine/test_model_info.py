"""A model file's header is read by our own bounded reader before llama.cpp sees the file: what
it says comes out right, a model whose KV cache cannot be compressed is refused with its reason,
and a broken or crafted file gives a ModelError that says what is wrong, in bounded memory,
never a traceback, with the file released afterwards."""

import os
import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType

from engine.backends.gguf.model import GGUFModel
from engine.backends.gguf.native import llama
from engine.errors import ModelError
from engine.models.gguf_header import read_model_info, refusal
from tests.tiny_gguf import write_gguf

ADVICE = "use a Llama, Qwen2/3 or Mistral-family GGUF"


def test_the_header_says_what_the_model_is(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", "qwen2", context=4096, layers=3, heads=8, kv_heads=2,
                      file_type=LlamaFileType.MOSTLY_Q4_K_M, chat_template="{{ messages }}")
    info = read_model_info(path)
    assert (info.architecture, info.name, info.context_length, info.n_layer, info.n_head, info.n_head_kv) == \
        ("qwen2", "Tiny Test Model", 4096, 3, 8, 2)
    assert (info.file_type, info.file_type_name) == (LlamaFileType.MOSTLY_Q4_K_M, "Q4_K_M")
    assert info.has_chat_template and not info.recurrent and info.sliding_window is None
    assert info.file_size == path.stat().st_size
    reader = GGUFReader(path)  # gguf's own reader counts the same parameters
    assert info.n_params == sum(int(t.n_elements) for t in reader.tensors) == 32 * 8 + 8 * 8
    assert refusal(info) is None


def test_what_the_header_leaves_out(tmp_path):
    tensors = {"token_embd.weight": np.zeros((64, 32), np.float16), "output_norm.weight": np.zeros(32, np.float32)}
    path = write_gguf(tmp_path / "bare-model.gguf", name=None, context=None, heads=None, kv_heads=None,
                      file_type=None, tensors=tensors, metadata={"{arch}.attention.head_count": [4, 8, 6]})
    info = read_model_info(path)
    assert info.name == "bare-model" and info.context_length is None and not info.has_chat_template
    assert info.file_type == -1 and info.file_type_name == "F16"  # the type most weights are in
    assert info.n_head == 8 and info.n_head_kv is None  # per-layer counts: the largest


@pytest.mark.parametrize("arch, metadata, reason", [
    ("gemma3", {"{arch}.attention.sliding_window": 512}, "sliding-window attention (a window of 512 tokens)"),
    ("olmo2", {"{arch}.attention.sliding_window": 1024}, "sliding-window attention (a window of 1,024 tokens)"),
    ("mamba", {"{arch}.ssm.conv_kernel": 4, "{arch}.ssm.state_size": 16}, "'mamba' model with recurrent layers"),
    ("jamba", {"{arch}.ssm.inner_size": 64}, "'jamba' model with recurrent layers"),
    ("rwkv6", {"{arch}.wkv.head_size": 64}, "'rwkv6' model with recurrent layers"),
    ("lfm2", {"{arch}.shortconv.l_cache": 3}, "'lfm2' model with recurrent layers"),
    ("futurenet", {}, "'futurenet' model, whose KV cache cannot be partially removed"),
])
def test_models_whose_cache_cannot_be_compressed_are_refused(tmp_path, arch, metadata, reason):
    info = read_model_info(write_gguf(tmp_path / f"{arch}.gguf", arch, context=8192, metadata=metadata))
    said = refusal(info)
    assert said is not None and said.startswith(f"{arch}.gguf ") and reason in said and said.endswith(ADVICE)


@pytest.mark.parametrize("arch, window", [
    ("qwen2", 8192),  # a window as wide as the context hides nothing
    ("phi3", 2047),  # llama.cpp ignores phi3's window (llama.cpp#13676): its cache stays plain
])
def test_windows_that_hide_nothing_are_no_reason_to_refuse(tmp_path, arch, window):
    info = read_model_info(write_gguf(tmp_path / "m.gguf", arch, context=8192,
                                      metadata={"{arch}.attention.sliding_window": window}))
    assert info.sliding_window == window and refusal(info) is None


def test_the_refusal_comes_before_llama_cpp_loads_anything(tmp_path, monkeypatch):
    def never(*args):
        raise AssertionError("llama.cpp was asked to load a refused model")

    monkeypatch.setattr(llama, "llama_model_load_from_file", never)
    path = write_gguf(tmp_path / "gemma.gguf", "gemma3", metadata={"{arch}.attention.sliding_window": 512})
    with pytest.raises(ModelError, match="sliding-window attention.*cannot be partially removed"):
        GGUFModel(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(ModelError, match="incomplete download"):
        GGUFModel(path)


# Raw headers for what GGUFWriter will not write.
def string(text: str | bytes, length: int | None = None) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data) if length is None else length) + data


def kv(key: str, kind: int, payload: bytes) -> bytes:
    return string(key) + struct.pack("<I", kind) + payload


def tensor(name: str, dims: list[int], kind: int = GGMLQuantizationType.F32, offset: int = 0) -> bytes:
    return string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)


def header(keys: list[bytes], tensors: list[bytes] = (), *, n_keys: int | None = None,
           n_tensors: int | None = None, version: bytes = struct.pack("<I", 3)) -> bytes:
    counts = struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(keys) if n_keys is None else n_keys)
    return b"GGUF" + version + counts + b"".join(keys) + b"".join(tensors)


ARCH = kv("general.architecture", GGUFValueType.STRING, string("llama"))
MAX64 = 2**64 - 1

DAMAGED = [
    (random.Random(0).randbytes(4096), "does not start with the GGUF signature"),
    (b"", "the file is empty"),
    (b"GGUF\x03\x00", "ends inside its header"),
    (header([ARCH], version=struct.pack("<I", 1)), "GGUF version 1, and llama.cpp reads versions 2 and 3"),
    (header([ARCH], version=struct.pack(">I", 3)), "big-endian GGUF"),
    (header([ARCH], n_tensors=MAX64), "claims 18,446,744,073,709,551,615 tensors"),
    (header([ARCH], n_keys=MAX64), "claims 18,446,744,073,709,551,615 metadata keys"),
    (header([ARCH], n_keys=2), "ends inside its header"),
    (header([string("general.architecture", length=2**62)]), "a metadata key of 4,611,686,018,427,387,904 bytes"),
    (header([kv("general.name", GGUFValueType.STRING, string("x", length=MAX64)), ARCH]), "runs past the end"),
    (header([ARCH, kv("tokenizer.ggml.tokens", GGUFValueType.ARRAY, struct.pack("<IQ", GGUFValueType.STRING, 2**40))]),
     "claims 1,099,511,627,776 items"),
    (header([ARCH, kv("tokenizer.ggml.tokens", GGUFValueType.ARRAY, struct.pack("<IQ", GGUFValueType.STRING, 9)
                      + string("a") + string("b", length=2**40))]), "a string in 'tokenizer.ggml.tokens'"),
    (header([ARCH, kv("x", GGUFValueType.ARRAY, struct.pack("<IQ", GGUFValueType.ARRAY, 1) + struct.pack("<IQ", 0, 0))]),
     "unsupported type (9)"),
    (header([ARCH, kv("x", 99, b"")]), "unknown value type (99)"),
    (header([ARCH, ARCH]), "names the key 'general.architecture' twice"),
    (header([kv("general.name", GGUFValueType.STRING, string("no arch"))]), "names no architecture"),
    (header([kv("general.architecture", GGUFValueType.UINT32, struct.pack("<I", 7))]), "names no architecture"),
    (header([ARCH, kv("general.alignment", GGUFValueType.UINT32, struct.pack("<I", 24))]), "not a power of two"),
    (header([ARCH], [tensor("w", [2] * 7)]), "the tensor 'w' has 7 dimensions"),
    (header([ARCH], [tensor("w", [32], kind=250)]), "unknown weight type (250)"),
    (header([ARCH], [tensor("w", [33], kind=GGMLQuantizationType.Q4_0)]), "not a whole number of Q4_0 blocks"),
    (header([ARCH], [string("w", length=5000)]), "a tensor name of 5,000 bytes"),
    (header([ARCH], [tensor("w", [2**40])]), "its weights end at byte 4,398,046,511,232 but the file has only 102 bytes"),
    (header([ARCH], [tensor("w", [MAX64] * 4)]), "(an incomplete download?)"),
]


@pytest.mark.parametrize("data, reason", DAMAGED, ids=[r for _, r in DAMAGED])
def test_a_broken_or_crafted_file_is_refused_with_its_reason_in_bounded_memory(tmp_path, data, reason):
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as caught:
            read_model_info(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith("model.gguf cannot be used as a GGUF model: ")
    assert reason in str(caught.value)
    assert peak < 1 << 20


def test_every_cut_and_many_flipped_bytes_of_a_real_header_give_info_or_a_model_error(tmp_path):
    good = write_gguf(tmp_path / "good.gguf", chat_template="{{ messages }}",
                      metadata={"{arch}.attention.head_count": [4, 4], "general.tags": ["a", "b"]}).read_bytes()
    path = tmp_path / "model.gguf"
    rng = random.Random(13)
    damaged = [good[:cut] for cut in range(len(good))]
    for _ in range(600):
        at = rng.randrange(min(len(good), 700))  # the header: the weights' bytes are never read
        damaged.append(good[:at] + bytes([rng.randrange(256)]) + good[at + 1:])
    outcomes = set()
    for data in damaged:
        path.write_bytes(data)
        try:
            read_model_info(path)
            outcomes.add("read")
        except ModelError:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_the_file_is_released_after_reading(tmp_path):
    good = write_gguf(tmp_path / "good.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(header([ARCH], n_keys=5))
    fds = len(os.listdir("/proc/self/fd"))
    read_model_info(good)
    with pytest.raises(ModelError):
        read_model_info(bad)
    maps = Path("/proc/self/maps").read_text()
    assert str(good) not in maps and str(bad) not in maps
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.model
def test_the_bundled_models_header_agrees_with_llama_cpp():
    model = GGUFModel()
    info = model.info
    assert (info.architecture, info.context_length, info.n_layer) == ("llama", model.n_ctx_train, model.n_layer)
    assert info.n_params == llama.llama_model_n_params(model.ptr)
    assert info.file_type_name == model.weight_type == "Q4_1"
    assert (info.n_head, info.n_head_kv) == (9, 3) and info.has_chat_template and refusal(info) is None
