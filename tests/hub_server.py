"""A local HTTP server that answers as the Hugging Face hub does, for the tests of downloading a
model (engine.models.download) and of the CLI and window that use it: a HEAD on
``/{repo}/resolve/{revision}/{file}`` gets a 302 to a CDN address (another host name) with
X-Repo-Commit, X-Linked-Etag (the LFS SHA-256) and X-Linked-Size; the CDN serves the bytes,
with Range requests as 206. It can drop the connection mid-way, serve bytes that are not the
announced ones, and ask for a token; no test touches the real network.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

from huggingface_hub import file_download

from engine.models import download as model_download

REPO = "comma-test/Tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token"
MODEL = b"GGUF\x03\x00\x00\x00" + random.Random(13).randbytes(300_000)
CHUNK = 16 << 10


@dataclass
class Hub:
    """What the fake hub serves and how it misbehaves; ``requests`` records what it was asked."""
    port: int = 0
    files: dict[str, bytes] = field(default_factory=lambda: {FILE: MODEL})
    served: dict[str, bytes] = field(default_factory=dict)  # bytes sent instead of the announced ones
    gated: bool = False
    drop_after: int | None = None  # the next GET of the file stops after this many bytes
    stay_down: bool = False  # after the drop, every GET is cut before its first byte
    broken: bool = False
    ignore_range: bool = False  # answer a Range request with the whole file, as some proxies do
    cdn_status: int | None = None  # the CDN refuses the next GET with this status
    portal: bool = False  # a network login page answering everything with 200 and HTML
    requests: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self) -> list[tuple[str, str, str | None, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            self._answer()

        def _error(self, status: int, code: str, message: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range"),
                                 self.headers.get("Authorization")))
            if hub.portal:
                page = b"<html>Log in to the hotel network</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(page)
                return
            if self.path.startswith("/cdn/"):
                self._cdn(self.path.removeprefix("/cdn/"))
                return
            owner, name, resolve, revision, filename = self.path.lstrip("/").split("/", 4)
            if f"{owner}/{name}" != REPO or resolve != "resolve":
                # The hub cannot tell a stranger whether a private repository exists: 401 without a token.
                self._error(404 if self.headers.get("Authorization") else 401, "RepoNotFound", "Repository not found")
            elif hub.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._error(401, "GatedRepo", f"Access to model {REPO} is restricted. Please log in.")
            elif revision not in ("main", COMMIT):
                self._error(404, "RevisionNotFound", "Invalid rev id")
            elif filename not in hub.files:
                self._error(404, "EntryNotFound", f"{filename} does not exist on main")
            else:
                data = hub.files[filename]
                sha = hashlib.sha256(data).hexdigest()
                self.send_response(302)
                # Another host name than the endpoint's, as the hub's CDN is: the token must not follow.
                self.send_header("Location", f"http://localhost:{hub.port}/cdn/{filename}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", "0")
                self.end_headers()

        def _cdn(self, filename: str) -> None:
            if self.headers.get("Authorization"):
                self._error(400, "", "Only one auth mechanism allowed")  # as S3 answers a signed URL with a token
                return
            if hub.cdn_status is not None:
                status, hub.cdn_status = hub.cdn_status, None
                self._error(status, "", "Request has expired")
                return
            data = hub.served.get(filename, hub.files[filename])
            asked = self.headers.get("Range")
            start = int(asked.removeprefix("bytes=").split("-")[0]) if asked and not hub.ignore_range else 0
            if hub.broken:
                self.close_connection = True
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            body = data[start:]
            if hub.drop_after is not None:
                body, hub.drop_after, hub.broken = body[:hub.drop_after], None, hub.stay_down
                self.close_connection = True
            self.wfile.write(body)

    return Handler


def serve(monkeypatch) -> Iterator[Hub]:
    """Run the fake hub for one test (the ``hub`` fixture of tests/conftest.py)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # Small chunks, so a 300 KB file arrives in many pieces, as a real model does in 1 MB ones.
    monkeypatch.setattr(model_download, "_CHUNK", CHUNK)
    # http_get waits a second before each of its retries after a dropped connection.
    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda _seconds: None))
    fake = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()
