"""Download a GGUF model by Hugging Face repository id and file name into the models folder.

A person names a repository (``owner/name``) and one ``.gguf`` file in it; the file lands in
``folder/owner/name/<file>`` and nothing is written anywhere else. huggingface_hub 2.4.0's
``hf_hub_download`` cannot do this job alone: it streams into a temporary file with a random
name that it deletes on any failure, so a cancelled or dropped 5 GB download would start again
from zero, and it checks only the size of what arrived, never the SHA-256 the hub announces.
So we use its pieces: ``get_hf_file_metadata`` asks the hub (commit, LFS SHA-256, size, the
address the bytes come from) and ``http_get`` streams them, over plain HTTP (no hf-xet), into a
``.part`` file of ours that the next call continues with a Range request (within one call,
http_get itself resumes a dropped connection up to five times). The finished file is
checked (size, SHA-256, GGUF signature) before it takes its name, and a JSON file beside it
records what was verified, so later calls reuse it without touching the network.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import HfFileMetadata, http_get
from huggingface_hub.utils import build_hf_headers

from engine.atomic import fsync_folder
from engine.errors import Cancelled, ModelError
from engine.models.files import GGUF_MAGIC, read_record, write_record

Progress = Callable[[int, int], None]

# The hub's own rules for a repository id's two halves (huggingface_hub validate_repo_id).
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_REPO_ID_MAX = 96
_SHA256 = re.compile(r"[0-9a-f]{64}")
# http_get reports (and so lets us poll cancelled()) once per chunk of
# constants.DOWNLOAD_CHUNK_SIZE, 10 MB by default: on a slow line that is many seconds
# between two chances to stop. 1 MB chunks answer Cancel within a second or so.
_CHUNK = 1 << 20
# Room kept free beyond the model, so a download never fills the disk to the last byte.
_DISK_MARGIN = 64 << 20
_HASH_BLOCK = 8 << 20
_TOKEN_HINT = ("create a read token at https://huggingface.co/settings/tokens and give it to Comma "
               "(or set HF_TOKEN, or log in with `hf auth login`)")


def _mb(n: int | None) -> str:
    return "an unknown size" if n is None else f"{n / 1e6:,.1f} MB"


def _check_names(repo_id: str, filename: str) -> None:
    """Refuse, before any request, names that are not a hub repository id and a .gguf file in it."""
    if len(repo_id) > _REPO_ID_MAX or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ModelError(f"{repo_id!r} is not a Hugging Face repository id; it is written owner/name, "
                         "as in bartowski/Qwen2.5-7B-Instruct-GGUF")
    if not filename.lower().endswith(".gguf"):
        raise ModelError(f"{filename!r} is not a GGUF file; Comma downloads model files whose name ends in .gguf")
    # The name becomes a path under the models folder: each piece must stay a plain name in it.
    if any(p in ("", ".", "..") or "\\" in p or ":" in p or not p.isprintable() for p in filename.split("/")):
        raise ModelError(f"{filename!r} is not a file path inside a repository "
                         "(no leading /, no empty, '.' or '..' pieces, no \\ or :)")


def _reusable(target: Path, revision: str | None) -> bool:
    """Whether ``target`` is a file this module verified, unchanged since, of the revision asked for."""
    facts = read_record(target)
    return facts is not None and (revision is None or revision in (facts.get("revision"), facts.get("commit")))


def _ask_hub(url: str, repo_id: str, filename: str, revision: str | None, hub: str,
             token: str | None) -> HfFileMetadata:
    """The hub's answer to a HEAD on the file: commit, ETag (the LFS SHA-256), size, where to GET it."""
    at = f" at revision {revision!r}" if revision else ""
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=hub)
    except GatedRepoError as exc:
        if exc.response.status_code == 401:
            raise ModelError(f"{repo_id} is a gated repository: it needs a Hugging Face access token; "
                             f"accept its conditions on its page while logged in, then {_TOKEN_HINT}") from None
        raise ModelError(f"{repo_id} is a gated repository and this token has no access to it yet: "
                         "accept its conditions on its page on huggingface.co with this account") from None
    except RepositoryNotFoundError as exc:
        if exc.response.status_code == 401:
            raise ModelError(f"the hub does not show the repository {repo_id}: check its name; if it is private "
                             f"or gated it needs an access token: {_TOKEN_HINT}") from None
        raise ModelError(f"there is no repository {repo_id} on the hub (or this token cannot see it): "
                         "check its name") from None
    except RevisionNotFoundError:
        raise ModelError(f"the repository {repo_id} has no revision {revision!r}: check the branch, tag or "
                         "commit") from None
    except RemoteEntryNotFoundError:
        raise ModelError(f"the repository {repo_id} has no file {filename}{at}: check the name in the "
                         "repository's Files tab (GGUF repositories often hold one file per quantisation)") from None
    except HfHubHTTPError as exc:
        raise _refusal(exc.response.status_code, f"{filename} in {repo_id}") from None
    except OfflineModeIsEnabled:
        raise ModelError("downloads are switched off because HF_HUB_OFFLINE is set; unset it to download "
                         f"{filename}") from None
    except httpx2.TimeoutException:
        raise ModelError(f"the Hugging Face hub at {hub} did not answer in time; check the internet "
                         "connection and try again") from None
    except httpx2.HTTPError as exc:
        raise ModelError(f"cannot reach the Hugging Face hub at {hub} ({exc or type(exc).__name__}): this computer "
                         "may be offline, or a firewall or proxy blocks the way; connect to the internet and try "
                         "again") from None
    # A captive network login page or a proxy answers 200 to anything, without the hub's headers.
    if meta.commit_hash is None or meta.etag is None:
        raise ModelError(f"the server at {hub} did not answer like the Hugging Face hub (no X-Repo-Commit or "
                         "ETag header): a network login page or a proxy may be in the way, or the endpoint "
                         "is wrong")
    return meta


def _refusal(status: int, what: str) -> ModelError:
    if status == 401:
        return ModelError(f"the hub refused the access token for {what} (HTTP 401): check it; {_TOKEN_HINT}")
    if status == 403:
        return ModelError(f"the hub forbids access to {what} (HTTP 403): this token lacks the permission; "
                          "check it on https://huggingface.co/settings/tokens")
    if status == 429:
        return ModelError(f"the hub is rate-limiting downloads of {what} (HTTP 429): wait a few minutes "
                          "and try again")
    return ModelError(f"the hub answered HTTP {status} for {what}: it may be down for a moment; try again later")


def _part_path(target: Path, etag: str) -> Path:
    # Named after the hub's ETag, so a part of an older version of the file is never continued
    # with the bytes of a newer one.
    tag = hashlib.sha256(etag.encode()).hexdigest()[:16]
    return target.with_name(f"{target.name}.{tag}.part")


def _progress_bar(filename: str, progress: Progress | None, cancelled: Callable[[], bool] | None) -> Any:
    """A stand-in for the tqdm class that http_get draws its bar with: http_get tells it of each
    chunk just before writing it, the one hook it has, so progress and Cancel both live here."""

    class Bar:
        def __init__(self, *, total: int | None = None, initial: int = 0, **_: Any) -> None:
            self.total = total
            self.n = initial
            self._report()

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc_info: object) -> None:
            return None

        def update(self, n: int) -> None:
            # Raised before the chunk is written, so the part file holds exactly self.n bytes.
            if cancelled is not None and cancelled():
                raise Cancelled(f"the download of {filename} was cancelled at {_mb(self.n)} of {_mb(self.total)}; "
                                "what arrived is kept: download it again to resume where it stopped")
            self.n += n
            self._report()

        def _report(self) -> None:
            if progress is not None:
                progress(self.n, self.total or 0)

    return Bar


def _transfer(meta: HfFileMetadata, url: str, part: Path, filename: str, token: str | None,
              progress: Progress | None, cancelled: Callable[[], bool] | None) -> None:
    """Stream the file into ``part``, continuing after the bytes it already holds."""
    have = part.stat().st_size if part.exists() else 0
    if meta.size is not None and have > meta.size:
        part.unlink()
        have = 0
    if meta.size is not None:
        free = shutil.disk_usage(part.parent).free
        if free < meta.size - have + _DISK_MARGIN:
            raise ModelError(f"not enough free disk in {part.parent} for {filename} (needs {_mb(meta.size - have)} "
                             f"more, {_mb(free)} free): free some space and try again")
    headers = build_hf_headers(token=token)
    # The bytes usually come from a CDN with a signed address: the token stays with the hub
    # (S3 refuses a request that carries both).
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)
    # huggingface_hub reads this on every call; setting it for the whole process only makes any
    # other download in it report more often.
    constants.DOWNLOAD_CHUNK_SIZE = _CHUNK
    try:
        # Append mode: http_get writes from the end of what is there, and when a server ignores
        # the Range it seeks back and truncates before writing the whole file.
        with part.open("ab") as out:
            http_get(meta.location, out, resume_size=have, headers=headers, expected_size=meta.size,
                     displayed_filename=filename, tqdm_class=_progress_bar(filename, progress, cancelled))
            out.flush()
            os.fsync(out.fileno())
    except ValueError as exc:  # http_get refuses a file over 50 GB without hf_xet
        raise ModelError(f"{filename} cannot be downloaded this way ({exc}); download it with a browser "
                         "and give Comma its path") from None
    except HfHubHTTPError as exc:
        # Most often a signed CDN address that expired; the next call asks the hub for a fresh one.
        raise ModelError(f"the hub's file server answered HTTP {exc.response.status_code} while sending "
                         f"{filename}; what arrived is kept: download it again to resume") from None
    except httpx2.HTTPError:
        # http_get has already retried five times, resuming each time, before giving up.
        arrived = part.stat().st_size if part.exists() else 0
        raise ModelError(f"the connection to the hub dropped while downloading {filename}, at {_mb(arrived)} of "
                         f"{_mb(meta.size)}, and did not come back; what arrived is kept: check the connection "
                         "and download it again to resume") from None
    except OSError as exc:
        # http_get's own size check raises an OSError without errno; the size check that follows
        # says it in plain words and removes the file.
        if exc.errno is not None:
            raise _write_failure(exc, part, filename, meta.size) from None


def _write_failure(exc: OSError, part: Path, filename: str, size: int | None) -> ModelError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelError(f"the disk holding {part.parent} is full ({filename} needs {_mb(size)}); what arrived "
                          "is kept: free some space and download it again to resume")
    if exc.errno == errno.EFBIG:
        return ModelError(f"the file system of {part.parent} cannot hold a file as large as {filename} "
                          f"({_mb(size)}; FAT32 stops at 4 GB): choose a data folder on another disk")
    return ModelError(f"could not write {filename} into {part.parent}: {exc.strerror or exc}")


def _refuse(part: Path, message: str) -> ModelError:
    part.unlink(missing_ok=True)
    return ModelError(message)


def _verify(part: Path, meta: HfFileMetadata, repo_id: str, filename: str,
            cancelled: Callable[[], bool] | None) -> str | None:
    """Check the whole download against what the hub announced; its SHA-256 when the hub gave one."""
    size = part.stat().st_size
    if meta.size is not None and size != meta.size:
        raise _refuse(part, f"the download of {filename} was corrupted ({size:,} bytes arrived, the hub announced "
                            f"{meta.size:,}); it was removed: download it again")
    # An LFS file's ETag is its SHA-256 (every .gguf on the hub is an LFS file); a small file kept
    # in git itself has a git blob id instead, which only the size check covers.
    expected = meta.etag if meta.etag is not None and _SHA256.fullmatch(meta.etag) else None
    with part.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
        if expected is not None:
            digest = hashlib.sha256(magic)
            while block := f.read(_HASH_BLOCK):
                if cancelled is not None and cancelled():
                    raise Cancelled(f"the check of {filename} was cancelled; the download is complete and is "
                                    "checked again next time")
                digest.update(block)
            if digest.hexdigest() != expected:
                raise _refuse(part, f"the download of {filename} was corrupted (its SHA-256 is not the one the hub "
                                    "announces); it was removed: download it again")
    if magic != GGUF_MAGIC:
        raise _refuse(part, f"{filename} in {repo_id} is not a GGUF model file (it does not start with the GGUF "
                            "signature); it was removed")
    return expected


def _no_telemetry() -> None:
    """huggingface_hub's user-agent telemetry fetches a registry of AI agents from the hub once a
    day and caches it in HF_HOME: a request Comma never asked for, and a file outside the data
    folder. It reads this flag on every request."""
    constants.HF_HUB_DISABLE_TELEMETRY = True


def download_model(repo_id: str, filename: str, folder: Path, *, revision: str | None = None,
                   progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
                   endpoint: str | None = None, token: str | None = None) -> Path:
    """The GGUF file ``filename`` of the hub repository ``repo_id``, in ``folder/owner/name/``:
    the verified file from an earlier call (whatever its revision, unless ``revision`` names
    another), or downloaded now, continuing the part an earlier call left.

    ``progress(done_bytes, total_bytes)`` is called as bytes arrive (total 0 when the hub does
    not say); ``cancelled()`` is polled as they do, and stops the transfer with ``Cancelled``,
    keeping what arrived. ``endpoint`` replaces the hub's address (default ``HF_ENDPOINT`` or
    huggingface.co); ``token`` is a Hugging Face access token (default: the one huggingface_hub
    finds, HF_TOKEN or a login). Every failure is a ``ModelError`` saying what to do."""
    _check_names(repo_id, filename)
    target = folder.joinpath(*repo_id.split("/"), *filename.split("/"))
    if _reusable(target, revision):
        return target
    _no_telemetry()
    hub = (endpoint or constants.ENDPOINT).rstrip("/")
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=hub)
    meta = _ask_hub(url, repo_id, filename, revision, hub, token)
    part = _part_path(target, cast(str, meta.etag))  # _ask_hub refuses an answer without one
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f"{glob.escape(target.name)}.*.part"):
            if stale != part:
                stale.unlink()
        _transfer(meta, url, part, filename, token, progress, cancelled)
        sha256 = _verify(part, meta, repo_id, filename, cancelled)
        os.replace(part, target)
        fsync_folder(target.parent)
        # The record goes last: a model without one is downloaded again, never trusted.
        write_record(target, {"repo_id": repo_id, "filename": filename,
                              "revision": revision or constants.DEFAULT_REVISION, "commit": meta.commit_hash,
                              "sha256": sha256})
    except OSError as exc:
        raise _write_failure(exc, part, filename, meta.size) from exc
    return target
