"""The torch backend on the CPU: its cache and attention against the model's own transformers
forward pass, eviction, memories, parallel chunks, and its error paths."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import MemoryFileError, ModelError
from engine.models.files import resolve_model_source
from engine.policy import Full, SepLLM
from engine.protocols import Logits
from engine.reading.scoring import score

GPL3 = "/usr/share/common-licenses/GPL-3"


@pytest.fixture(scope="module")
def model():
    from engine.backends.torch.model import TorchModel

    return TorchModel(device="cpu")


@pytest.fixture(scope="module")
def tokens(model):
    return model.tokenize(Path(GPL3).read_text()[:4000])[:400]


@contextlib.contextmanager
def plain_transformers(model):
    """The same weights with transformers' own rotary embedding and SDPA attention."""
    comma_rotary = model.hf.model.rotary_emb
    model.hf.model.rotary_emb = model._rotary
    model.hf.config._attn_implementation = "sdpa"
    try:
        yield model.hf
    finally:
        model.hf.model.rotary_emb = comma_rotary
        model.hf.config._attn_implementation = "comma"


@pytest.mark.model
def test_full_policy_chunked_ingest_matches_the_models_own_forward(model, tokens):
    ours = score(model, tokens, Full(), chunk=96).logprobs
    with plain_transformers(model) as hf, torch.inference_mode():
        logits = hf(torch.as_tensor(tokens[None].astype(np.int64))).logits[0].float()
    theirs = torch.log_softmax(logits, -1)[torch.arange(len(tokens) - 1), torch.as_tensor(tokens[1:].astype(np.int64))]
    # float32 on the CPU: the two differ only in summation order.
    assert np.abs(ours - theirs.numpy()).max() < 1e-3


@pytest.mark.model
def test_sepllm_on_a_text_shorter_than_its_capacity_equals_full(model, tokens):
    full = score(model, tokens, Full(), chunk=128).logprobs
    sep = score(model, tokens, SepLLM(capacity=800), chunk=128).logprobs
    assert np.abs(full - sep).max() < 1e-5


@pytest.mark.model
def test_evicting_keeps_perplexity_close_to_full(model, tokens):
    full = score(model, tokens, Full(), chunk=64)
    sep = score(model, tokens, SepLLM(initial=4, separators=16, window=48, capacity=160), chunk=64)
    assert sep.attended.max() <= 160
    assert full.perplexity() <= sep.perplexity() < 1.3 * full.perplexity()


@pytest.mark.model
def test_a_restored_memory_is_bit_exact(model, tokens):
    policy = SepLLM(initial=4, separators=16, window=48, capacity=160)
    cache = model.new_cache(160 + 8)
    for start in range(0, 300, 64):
        keep = policy.keep(cache.separators, min(64, 300 - start))
        if keep is not None:
            cache.evict(keep)
        cache.append(tokens[start:start + 64][: 300 - start], np.arange(start, min(start + 64, 300)),
                     model.separator_ids[tokens[start:min(start + 64, 300)]])
    state = cache.snapshot()
    restored = model.new_cache(160 + 8)
    restored.restore(state, cache.offsets, cache.separators)
    probe = tokens[300:305]
    assert np.array_equal(cache.decode_main_tail(probe), restored.decode_main_tail(probe))


@pytest.mark.model
def test_a_memory_of_another_shape_is_refused(model):
    from safetensors.torch import save

    wrong = save({"kv": torch.zeros(2, 2, 3, 5, 64)})
    with pytest.raises(MemoryFileError, match="shape"):
        model.new_cache(16).restore(wrong, np.arange(5), np.zeros(5, dtype=bool))
    with pytest.raises(MemoryFileError, match="cannot be read"):
        model.new_cache(16).restore(b"not tensors", np.arange(5), np.zeros(5, dtype=bool))


@pytest.mark.model
def test_parallel_chunks_read_each_chunk_as_its_own_memory(model, tmp_path):
    from engine.answering.conversation import Conversation
    from engine.documents.document import read_document
    from engine.reading.parallel import read_parallel

    path = tmp_path / "gpl.txt"
    path.write_text(Path(GPL3).read_text()[:3000])
    document = read_document(path)
    policy = SepLLM(initial=4, separators=16, window=48, capacity=160)
    result = read_parallel(model, document, policy, chunk_tokens=200, chunk=64)
    memory = result.memory
    chunks = memory.header["chunks"]
    prompt = memory.header["prompt_tokens"]
    assert len(chunks) == -(-memory.header["document_tokens"] // 200) and sum(chunks) == memory.kept_tokens
    assert all(n <= 160 for n in chunks)
    # What survives of the prompt is kept once, in the first chunk; every chunk's slots come
    # from its own stretch of the document, in order.
    bounds = np.cumsum([0, *chunks])
    assert memory.offsets[0] == 0 and memory.offsets[:bounds[1]].max() < prompt + 200
    for i in range(1, len(chunks)):
        part = memory.offsets[bounds[i]:bounds[i + 1]]
        assert part.min() >= prompt + 200 * i and part.max() < prompt + 200 * (i + 1)
    answer = "".join(Conversation(model, memory).ask("What is this text?"))
    assert answer.strip()


def test_cuda_requested_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from engine.backends.torch.model import TorchModel

    with pytest.raises(ModelError, match="CUDA"):
        TorchModel(device="cuda")


def test_a_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model_source(tmp_path)


def test_a_random_llama_matches_transformers_on_this_device():
    # No model file needed: on CUDA this runs the Triton kernels in bf16, on the CPU the reference.
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.backends.torch.model import TorchModel

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, vocab_size=512, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = TorchModel.from_module(LlamaForCausalLM(config).to(dtype), device="cuda" if cuda else "cpu")
    tokens = np.random.default_rng(0).integers(0, 512, 300).astype(np.int32)
    ours = score(model, tokens, Full(), chunk=96, separators=np.zeros(300, dtype=bool)).logprobs
    with plain_transformers(model) as hf, torch.inference_mode():
        logits = hf(torch.as_tensor(tokens[None].astype(np.int64), device=model.device)).logits[0].float()
    theirs = torch.log_softmax(logits, -1)[torch.arange(299), torch.as_tensor(tokens[1:].astype(np.int64))]
    # bf16 activations round differently along two summation orders; float32 agrees closely.
    assert np.abs(ours - theirs.cpu().numpy()).max() < (0.1 if cuda else 1e-3)
    assert np.abs(ours - theirs.cpu().numpy()).mean() < (0.02 if cuda else 1e-4)


@pytest.mark.model
def test_out_of_gpu_memory_while_reading_saves_nothing_and_the_next_read_works(model, tmp_path, monkeypatch):
    from engine.errors import CommaError
    from engine.memory.memory import Memory
    from engine.pipeline.comma import Comma
    from storage.library import Library

    path = tmp_path / "short.txt"
    path.write_text(Path(GPL3).read_text()[:1500])
    comma = Comma(library=Library(tmp_path / "home"), backend="torch")
    comma.models.use(reading=model)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(model.hf.model, "forward", exhausted)
        with pytest.raises(CommaError, match="ran out of memory.*nothing was saved"):
            comma.ingest(path, cache=320, notes=False)
    assert comma.list() == []
    assert not list((tmp_path / "home").rglob("*.mem"))

    report = comma.ingest(path, cache=320, notes=False)
    saved = Path(report["memory_path"])
    assert Memory.load(saved, model_fingerprint=model.fingerprint, backend="torch").kept_tokens == report["kept_tokens"]
    # A memory is tied to its backend: the gguf engine refuses this one with a reason.
    with pytest.raises(MemoryFileError, match="'torch' backend"):
        Memory.load(saved, model_fingerprint=model.fingerprint, backend="gguf")


@pytest.mark.model
def test_a_hugging_face_folder_loads_and_reads(model, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.backends.torch.model import TorchModel
    from engine.documents.document import read_document
    from engine.reading.reader import read

    folder = tmp_path / "tiny-llama"
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, vocab_size=model.n_vocab, max_position_embeddings=4096)
    LlamaForCausalLM(config).save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    tiny = TorchModel(folder, device="cpu")
    assert tiny.name == "tiny-llama" and tiny.shape.kv_heads == 1 and tiny.shape.head_dim == 32
    assert tiny.fingerprint != model.fingerprint
    assert np.array_equal(tiny.tokenize("Hello, world."), model.tokenize("Hello, world."))
    path = tmp_path / "doc.txt"
    path.write_text(Path(GPL3).read_text()[:2000])
    memory = read(tiny, read_document(path), SepLLM(initial=4, separators=16, window=48, capacity=160),
                  notes=False).memory
    assert memory.header["backend"] == "torch" and memory.kept_tokens <= 160


@pytest.mark.model
def test_on_the_torch_engine_the_answering_model_reads_on_the_spot_then_deep(model, tmp_path, monkeypatch):
    """The answering model loads through the reading model's engine. A small random Qwen2 folder
    stands in for the assembled GGUF (the real one dequantizes to 6 GB of float32 on the CPU, in
    minutes): the question's page is read on the spot, then the deep read's memory and store
    are kept under the torch engine and answer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.generate import Sampling
    from engine.models import answering as answering_model
    from engine.pipeline.comma import Comma
    from storage.library import Library
    from tests.fakes import QUESTION, needle_page, write_doc

    folder = tmp_path / "tiny-qwen2"
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=model.n_vocab, max_position_embeddings=4096)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    monkeypatch.setattr(answering_model, "installed", lambda: True)
    monkeypatch.setattr(answering_model, "assemble", lambda *args, **kwargs: folder)
    comma = Comma(library=Library(tmp_path / "home"), backend="torch", answering="auto")
    comma.models.use(reading=model)
    report = comma.ingest(write_doc(tmp_path / "harbour.txt"), notes=False, deep=False)
    gold = needle_page(comma, report["doc_id"])
    answerer = comma.answerer
    assert answerer.backend == "torch" and answerer.name == "tiny-qwen2" and comma.answerer_reason is None
    short = Sampling(max_tokens=4)
    spot = comma.ask(report["doc_id"], QUESTION, sampling=short)
    assert spot.model == "answering" and spot.model_name == "tiny-qwen2" and spot.read_on_the_spot[0] == gold
    deep = comma.deep_read(report["doc_id"])
    record = comma.library.find_memory(report["doc_id"], answerer.fingerprint, "torch")
    assert deep["model"] == "tiny-qwen2" and record is not None and Path(record["recall_path"]).is_file()
    after = comma.ask(report["doc_id"], QUESTION, sampling=short)
    assert after.model == "answering" and after.read_on_the_spot == [] and after.recall and after.pages[0] == gold


@pytest.mark.model
def test_a_truncated_gguf_is_a_clear_error(tmp_path):
    from engine.backends.torch.model import TorchModel
    from engine.models.files import bundled_model_path

    broken = tmp_path / "broken.gguf"
    with bundled_model_path().open("rb") as f:
        broken.write_bytes(f.read(3_000_000))
    with pytest.raises(ModelError, match="broken.gguf cannot be used as a GGUF model: its weights end"):
        TorchModel(broken, device="cpu")


@pytest.mark.model
def test_parallel_reading_from_the_pipeline_and_asking_it(model, tmp_path):
    from engine.errors import CommaError
    from engine.pipeline.comma import Comma
    from storage.library import Library

    path = tmp_path / "gpl.txt"
    path.write_text(Path(GPL3).read_text()[:3000])
    comma = Comma(library=Library(tmp_path / "home"), backend="torch")
    comma.models.use(reading=model)
    report = comma.ingest(path, cache=160, parallel=250)
    sequential = comma.ingest(path, cache=160, notes=False)
    # Both memories live side by side: a parallel reading keeps other slots than a sequential one.
    assert not sequential["reused"] and report["memory_path"] != sequential["memory_path"]
    assert report["kept_tokens"] > sequential["kept_tokens"]
    assert comma.ask(report["doc_id"], "What is this?").answer
    gguf = Comma(library=Library(tmp_path / "home"), backend="gguf")
    with pytest.raises(CommaError, match="parallel reading needs --backend torch"):
        gguf.ingest(path, parallel=250)


@pytest.mark.model
def test_answering_keeps_the_chunks_that_predict_the_question(model, tmp_path):
    from engine.documents.document import read_document
    from engine.reading.parallel import chunk_bounds, read_parallel, select_chunks

    path = tmp_path / "gpl.txt"
    path.write_text(Path(GPL3).read_text()[:5000])
    memory = read_parallel(model, read_document(path), SepLLM(initial=4, separators=16, window=48, capacity=160),
                           chunk_tokens=200, chunk=64).memory
    bounds = chunk_bounds(memory)
    # A question quoting the end of chunk 3 word for word: that chunk's window still holds it.
    quote = model.detokenize(memory.token_ids[bounds[4] - 24:bounds[4]]).decode("utf-8", "replace")
    budget = memory.header["chunks"][0] + memory.header["chunks"][3]
    picked = select_chunks(model, memory, quote, budget)
    assert picked.header["selected_chunks"] == [0, 3]
    assert picked.kept_tokens == budget <= memory.kept_tokens
    assert np.array_equal(picked.offsets, np.concatenate([memory.offsets[:bounds[1]], memory.offsets[bounds[3]:bounds[4]]]))
    assert select_chunks(model, memory, quote, memory.kept_tokens) is memory


@pytest.mark.model
def test_a_stored_passage_ranks_and_loads_exactly_as_it_was_read(model, tokens):
    """Keys are kept unrotated, so a passage's stored KV placed after the same start gives the
    same predictions as reading it there, ranked on a side row or loaded into the cache."""
    start, question = tokens[:40], tokens[240:260]  # the passage is tokens 40..239
    read = model.new_cache(300)
    read.append(tokens[:240], np.arange(240), np.zeros(240, dtype=bool))
    expected = model.log_probs_at(read.forward(question[None], Logits.ALL), np.append(question[1:], 0))[:-1]
    read.truncate(240)
    stored = read.export_slots(40, 240)
    other = read.export_slots(0, 40)  # another passage, ranked beside it
    ranked = read.log_probs_after([[(stored, 200)], [(other, 40)]], question, len(question) - 1, 40)
    assert np.abs(ranked[0] - expected).max() < 1e-4 and ranked[1].mean() < ranked[0].mean()
    assert read.length == 240  # ranking leaves the cache as it was
    loaded = model.new_cache(300)
    loaded.append(start, np.arange(40), np.zeros(40, dtype=bool))
    loaded.import_slots(stored, np.arange(40, 240))
    assert loaded.length == 240 and np.array_equal(loaded.offsets, np.arange(240))
    again = model.log_probs_at(loaded.forward(question[None], Logits.ALL), np.append(question[1:], 0))[:-1]
    assert np.abs(again - expected).max() < 1e-4
    with pytest.raises(MemoryFileError, match="shape"):
        loaded.import_slots(stored, np.arange(10))  # a passage of another length


@pytest.mark.model
def test_removing_slots_moves_the_later_ones_into_place_with_their_kv(model, tokens):
    cache = model.new_cache(200)
    cache.append(tokens[:60], np.arange(60), np.zeros(60, dtype=bool))
    cache.decode_main_tail(tokens[60:100])  # conversation text after the document slots
    before = cache.kv[:, :, 0, :, :100].clone()
    cache.remove(50, 70)
    assert cache.length == 80 and np.array_equal(cache.offsets, np.arange(50))
    assert torch.equal(cache.kv[:, :, 0, :, :80], torch.cat([before[..., :50, :], before[..., 70:, :]], dim=3))
    with pytest.raises(ValueError):
        cache.remove(70, 90)


@pytest.mark.model
def test_the_torch_engine_reads_a_recall_store_and_answers_from_the_needle_s_page(model, tmp_path):
    from engine.pipeline.comma import Comma
    from storage.library import Library
    from tests.fakes import QUESTION, needle_page, write_doc

    comma = Comma(library=Library(tmp_path / "home"), backend="torch", answering="off")
    comma.models.use(reading=model)
    report = comma.ingest(write_doc(tmp_path / "harbour.txt", parts=8), notes=False)
    assert report["recall_bytes"] > 0
    result = comma.ask(report["doc_id"], QUESTION)
    assert result.recall and result.pages[0] == needle_page(comma, report["doc_id"])
    # Sources ordered by the attention the answer paid to each, scored by its share of it.
    shares = [source["score"] for source in result.sources]
    assert len(shares) == 2 and shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-6


@pytest.mark.model
def test_the_attention_an_answer_pays_is_what_the_model_s_own_attention_weights_say(model, tokens):
    cache = model.new_cache(64)
    cache.append(tokens[:50], np.arange(50), np.zeros(50, dtype=bool))
    cache.record_attention()
    cache.decode_main_tail(tokens[50:51])
    paid = cache.attention_paid()
    assert cache.attention_paid().sum() == 0  # reading it stops the recording
    comma_rotary = model.hf.model.rotary_emb
    model.hf.model.rotary_emb = model._rotary
    model.hf.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            weights = model.hf(torch.as_tensor(tokens[None, :51].astype(np.int64)), output_attentions=True).attentions
    finally:
        model.hf.model.rotary_emb = comma_rotary
        model.hf.config._attn_implementation = "comma"
    expected = sum(layer[0, :, -1].float().sum(dim=0) for layer in weights).numpy()
    assert np.abs(paid[:51] - expected).max() < 1e-3 and not paid[51:].any()
