"""A saved conversation as Markdown: its questions, answers and the pages each answer cited."""

from __future__ import annotations

from storage.library import Library


def _pages(pages: list[int]) -> str:
    return ", ".join(str(p) for p in pages)


def session_markdown(library: Library, session_id: str) -> str:
    session = library.session(session_id)
    doc = library.document(session["doc_id"])
    lines = [f"# {session['title']}", "",
             f"Conversation with Comma about *{doc['title']}* (`{doc['path']}`), started {session['created']}.", ""]
    for m in library.messages(session_id):
        if m["role"] == "user":
            lines += [f"## {m['content']}", ""]
        else:
            lines += [m["content"] or "*(no answer)*", ""]
            if m["pages"]:
                lines += [f"*Pages {_pages(m['pages'])}*" if len(m["pages"]) > 1 else f"*Page {m['pages'][0]}*", ""]
    return "\n".join(lines).rstrip() + "\n"
