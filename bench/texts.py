"""Real long texts that ship with this machine's software, for benchmarks (none written by us).

- ``gpl3``: the GNU General Public License v3 (Debian's /usr/share/common-licenses/GPL-3), the
  text the first prototype's figures were measured on.
- ``python_reference``: the Python Language Reference topics that CPython ships for ``help()``
  (``pydoc_data.topics``), prose with code samples.
- ``bash_manual``: the Bash manual page as ``man`` renders it (Debian's bash package).
- ``gnutls_news``: GnuTLS's NEWS file (Debian's libgnutls30 package), release notes written by
  its developers over two decades.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path


def gpl3() -> str:
    return Path("/usr/share/common-licenses/GPL-3").read_text()


def python_reference() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def bash_manual() -> str:
    env = {**os.environ, "MANWIDTH": "100"}
    return subprocess.run(["man", "-P", "cat", "bash"], capture_output=True, text=True, env=env, check=True).stdout


def gnutls_news() -> str:
    return gzip.decompress(Path("/usr/share/doc/libgnutls30/NEWS.gz").read_bytes()).decode("utf-8", "replace")


TEXTS = {"gpl3": gpl3, "python_reference": python_reference, "bash_manual": bash_manual,
         "gnutls_news": gnutls_news}


def long_text(model, tokens: int) -> str:
    """The first ``tokens`` tokens of real text, the sources above one after another, repeated if
    needed (the sources come whole, and one of them is ~170K tokens, so the joined text is cut)."""
    parts, count = [], 0
    while count < tokens:
        for make in TEXTS.values():
            text = make()
            parts.append(text)
            count += len(model.tokenize(text))
            if count >= tokens:
                break
    head = model.tokenize("\n\n".join(parts))[:tokens]
    return model.detokenize(head).decode("utf-8", "replace")
