"""A GGUF model's chat prompt, rendered from the Jinja template its file carries.

llama.cpp's ``llama_chat_apply_template`` knows only its built-in formats, recognised by
patterns in the template's text, and falls back to ChatML for any other: a model trained on
another format would read a prompt it has never seen. So the template itself is rendered, as
transformers renders it (a sandboxed Jinja environment with ``raise_exception``,
``strftime_now``, ``tojson``, ``bos_token``, ``eos_token``), by llama-cpp-python's
``Jinja2ChatFormatter``. The built-in renderer remains the fallback for a file without a
template and for a template that fails: a template is a small program from the model file, and
its failure must never stop an answer. ``ChatTemplate.fallback_reason`` says why it was used.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, cast

from engine.backends.gguf.native import llama

if TYPE_CHECKING:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

Messages = list[dict[str, str]]


class ChatTemplate:
    """Renders conversations with one model's template.

    ``adds_bos``: the tokenizer puts the BOS token in front of a prompt itself (the vocabulary's
    ``add_bos``); callers tokenize rendered prompts with ``add_bos=True``, so a template that
    writes ``bos_token`` first (Llama 3's does) would make the model read two. The rendered
    prompt then leaves its leading BOS out, as llama.cpp's server does. Where the tokenizer adds
    none (SmolLM2, Qwen), the template's own BOS text stays and is read as the control token.
    """

    def __init__(self, template: str | None, bos_token: str, eos_token: str, adds_bos: bool):
        self.template = template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.adds_bos = adds_bos
        self.fallback_reason: str | None = None  # why the last prompt came from the built-in renderer
        self._formatters: dict[bool, Jinja2ChatFormatter] = {}

    def render(self, messages: Messages, add_assistant: bool) -> str:
        """The prompt for ``messages``; ``add_assistant`` opens the assistant's turn after them."""
        if not self.template:
            self.fallback_reason = "the model file has no chat template"
            prompt = builtin_render("chatml", messages, add_assistant)
        else:
            try:
                prompt = self._render_jinja(messages, add_assistant)
                self.fallback_reason = None
            except Exception as exc:  # whatever the template raises, the built-in renderer takes over
                self.fallback_reason = f"the model's chat template failed: {type(exc).__name__}: {exc}"
                prompt = builtin_render(self.template, messages, add_assistant)
        if self.adds_bos and self.bos_token and prompt.startswith(self.bos_token):
            prompt = prompt[len(self.bos_token):]
        return prompt

    def _render_jinja(self, messages: Messages, add_assistant: bool) -> str:
        try:
            return self._apply(messages, add_assistant)
        except Exception:
            if len(messages) < 2 or messages[0]["role"] != "system":
                raise
            # Templates of models trained without a system turn (Gemma, Mistral v0.1) raise on
            # one; such a model reads the instructions at the top of the first user turn instead,
            # where llama.cpp's built-in formats put them too.
            system, first, *rest = messages
            merged = {"role": first["role"], "content": system["content"] + "\n\n" + first["content"]}
            return self._apply([merged, *rest], add_assistant)

    def _apply(self, messages: Messages, add_assistant: bool) -> str:
        # One compiled template for each way of ending the prompt (the formatter fixes it).
        if add_assistant not in self._formatters:
            # Imported only now, after engine.backends.gguf.native has said whether llama-cpp-python is there.
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            assert self.template
            self._formatters[add_assistant] = Jinja2ChatFormatter(
                self.template, eos_token=self.eos_token, bos_token=self.bos_token,
                add_generation_prompt=add_assistant)
        # The formatter is typed for OpenAI-style request messages, which role/content dicts are.
        return self._formatters[add_assistant](messages=cast(Any, messages)).prompt


def builtin_render(template: str, messages: Messages, add_assistant: bool) -> str:
    """``messages`` in the llama.cpp built-in format that ``template`` is recognised as (its
    name, such as ``chatml``, or a template text), ChatML where it is recognised as none."""
    chat = (llama.llama_chat_message * len(messages))()
    keep = []
    for slot, m in zip(chat, messages, strict=True):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        slot.role, slot.content = role, content

    buf = ctypes.create_string_buffer(4096 + 2 * sum(len(b) for b in keep))

    def render(name: bytes) -> int:
        nonlocal buf
        n = llama.llama_chat_apply_template(name, chat, len(messages), add_assistant, buf, len(buf))
        if n > len(buf):
            buf = ctypes.create_string_buffer(n)
            n = llama.llama_chat_apply_template(name, chat, len(messages), add_assistant, buf, n)
        return n

    n = render(template.encode())
    if n < 0:
        # A template llama.cpp does not recognise: ChatML is the most widely trained fallback.
        n = render(b"chatml")
    return buf.raw[:n].decode("utf-8")
