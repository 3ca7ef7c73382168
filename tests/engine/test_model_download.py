"""Downloading a GGUF model from the Hugging Face hub (engine.models.download) through the real
huggingface_hub code path, against the local stand-in for the hub in tests/hub_server.py."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants

from engine.errors import Cancelled, ModelError
from engine.models import download as model_download
from tests.hub_server import CHUNK, COMMIT, FILE, MODEL, REPO, TOKEN, Hub


def download(hub: Hub, folder: Path, **kwargs) -> Path:
    return model_download.download_model(REPO, FILE, folder, endpoint=hub.endpoint, **kwargs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_a_whole_download_arrives_verified_with_progress_to_the_total(hub, tmp_path):
    seen: list[tuple[int, int]] = []
    path = download(hub, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "comma-test" / "Tiny-GGUF" / FILE
    assert path.read_bytes() == MODEL
    assert seen[-1] == (len(MODEL), len(MODEL)) and len(seen) > len(MODEL) // CHUNK
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    facts = json.loads(path.with_name(FILE + ".json").read_text())
    assert facts["sha256"] == hashlib.sha256(MODEL).hexdigest() and facts["commit"] == COMMIT
    assert leftovers(tmp_path) == [FILE, FILE + ".json"]  # no part, nothing outside the folder
    # One HEAD on the hub, one GET on the CDN, which never saw the token.
    assert [(m, p.split("/")[1]) for m, p, _, _ in hub.requests] == [("HEAD", "comma-test"), ("GET", "cdn")]


def test_a_second_call_reuses_the_file_without_the_network(hub, tmp_path):
    path = download(hub, tmp_path)
    asked = len(hub.requests)
    assert download(hub, tmp_path) == path
    assert model_download.download_model(REPO, FILE, tmp_path, revision=COMMIT, endpoint=hub.endpoint) == path
    assert len(hub.requests) == asked
    # A file changed since it was verified is not trusted: it is downloaded again.
    path.write_bytes(b"GGUF changed")
    assert download(hub, tmp_path).read_bytes() == MODEL
    assert len(hub.gets()) == 2


def test_a_dropped_connection_is_resumed_with_a_range_request(hub, tmp_path):
    hub.drop_after = 100_000
    assert download(hub, tmp_path).read_bytes() == MODEL
    (_, _, first, _), (_, _, second, _) = hub.gets()
    assert first is None
    start = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 100_000  # where the part file stopped: whole chunks of what arrived


def test_a_connection_that_does_not_come_back_keeps_the_part_for_the_next_call(hub, tmp_path):
    hub.drop_after, hub.stay_down = 100_000, True
    with pytest.raises(ModelError, match=r"connection to the hub dropped .* did not come back; what arrived is kept"):
        download(hub, tmp_path)
    assert len(hub.gets()) == 6  # the first GET and http_get's five retries, which got nothing
    [part] = (tmp_path / "comma-test" / "Tiny-GGUF").glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept <= 100_000 and part.read_bytes() == MODEL[:kept]
    hub.broken = False
    assert download(hub, tmp_path).read_bytes() == MODEL
    assert hub.gets()[-1][2] == f"bytes={kept}-"
    assert leftovers(tmp_path) == [FILE, FILE + ".json"]


def test_cancel_stops_the_transfer_and_the_next_call_resumes_where_it_stopped(hub, tmp_path):
    seen: list[int] = []
    with pytest.raises(Cancelled, match="download it again to resume where it stopped"):
        download(hub, tmp_path, progress=lambda done, total: seen.append(done), cancelled=lambda: len(seen) > 5)
    [part] = (tmp_path / "comma-test" / "Tiny-GGUF").glob("*.part")
    kept = part.stat().st_size
    assert kept == seen[-1] == 5 * CHUNK and part.read_bytes() == MODEL[:kept]
    assert not (tmp_path / "comma-test" / "Tiny-GGUF" / FILE).exists()
    resumed: list[int] = []
    path = download(hub, tmp_path, progress=lambda done, total: resumed.append(done))
    assert path.read_bytes() == MODEL
    assert hub.gets()[-1][2] == f"bytes={kept}-" and resumed[0] == kept and resumed[-1] == len(MODEL)


def test_a_server_that_ignores_the_range_sends_the_whole_file_again(hub, tmp_path):
    seen: list[int] = []
    with pytest.raises(Cancelled):
        download(hub, tmp_path, progress=lambda done, total: seen.append(done), cancelled=lambda: len(seen) > 3)
    hub.ignore_range = True
    assert download(hub, tmp_path).read_bytes() == MODEL
    assert hub.gets()[-1][2] == f"bytes={3 * CHUNK}-"


def test_a_file_system_that_cannot_hold_the_file_says_so_and_keeps_the_part(hub, tmp_path):
    resource = pytest.importorskip("resource")
    import signal

    # Writing past RLIMIT_FSIZE fails with EFBIG, as a 4 GB model does on a FAT32 stick.
    limit = 5 * CHUNK
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(ModelError, match="cannot hold a file as large as .* FAT32"):
            download(hub, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    [part] = (tmp_path / "comma-test" / "Tiny-GGUF").glob("*.part")
    assert part.read_bytes() == MODEL[:limit]
    assert download(hub, tmp_path).read_bytes() == MODEL


def test_a_file_server_refusal_mid_way_keeps_the_part_for_the_next_call(hub, tmp_path):
    seen: list[int] = []
    with pytest.raises(Cancelled):
        download(hub, tmp_path, progress=lambda done, total: seen.append(done), cancelled=lambda: len(seen) > 2)
    hub.cdn_status = 403  # a signed address that expired
    with pytest.raises(ModelError, match="file server answered HTTP 403 .* what arrived is kept: download it again"):
        download(hub, tmp_path)
    assert download(hub, tmp_path).read_bytes() == MODEL
    assert hub.gets()[-1][2] == f"bytes={2 * CHUNK}-"


def test_offline_mode_says_downloads_are_switched_off(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="switched off because HF_HUB_OFFLINE is set"):
        download(hub, tmp_path)
    assert hub.requests == []


def test_bytes_that_are_not_the_announced_ones_are_refused_and_removed(hub, tmp_path):
    damaged = bytearray(MODEL)
    damaged[200_000] ^= 1
    hub.served[FILE] = bytes(damaged)  # same size, so only the SHA-256 tells
    with pytest.raises(ModelError, match="was corrupted .*SHA-256.* removed: download it again"):
        download(hub, tmp_path)
    assert leftovers(tmp_path) == []
    hub.served.clear()
    assert download(hub, tmp_path).read_bytes() == MODEL


def test_a_file_that_is_not_gguf_is_refused(hub, tmp_path):
    hub.files[FILE] = b"<html>not a model</html>" * 100
    with pytest.raises(ModelError, match="is not a GGUF model file"):
        download(hub, tmp_path)
    assert leftovers(tmp_path) == []


def test_a_file_too_big_for_a_plain_download_says_what_to_do(hub, tmp_path, monkeypatch):
    def refuses(*args, **kwargs):  # what http_get raises for a file over 50 GB without hf_xet
        raise ValueError("File is too large to be downloaded using the regular download method.")

    monkeypatch.setattr(model_download, "http_get", refuses)
    with pytest.raises(ModelError, match="cannot be downloaded this way .* download it with a browser"):
        download(hub, tmp_path)


@pytest.mark.parametrize("repo, filename, revision, token, words", [
    (REPO, "other.gguf", None, None, "has no file other.gguf: check the name in the repository's Files tab"),
    ("comma-test/Missing", FILE, None, None, "does not show the repository comma-test/Missing: check its name; "
                                             "if it is private or gated it needs an access token"),
    ("comma-test/Missing", FILE, None, TOKEN, "there is no repository comma-test/Missing on the hub"),
    (REPO, FILE, "v9", None, "has no revision 'v9'"),
])
def test_what_the_hub_does_not_have_is_said_plainly(hub, tmp_path, repo, filename, revision, token, words):
    with pytest.raises(ModelError, match=words):
        model_download.download_model(repo, filename, tmp_path, revision=revision, endpoint=hub.endpoint, token=token)
    assert leftovers(tmp_path) == []


def test_a_gated_repository_says_a_token_is_needed_and_the_token_opens_it(hub, tmp_path):
    hub.gated = True
    with pytest.raises(ModelError, match="gated repository: it needs a Hugging Face access token"):
        download(hub, tmp_path)
    assert download(hub, tmp_path, token=TOKEN).read_bytes() == MODEL
    (head, _, _, to_hub), (get, path, _, to_cdn) = hub.requests[-2:]
    assert (head, to_hub) == ("HEAD", f"Bearer {TOKEN}")
    assert (get, path, to_cdn) == ("GET", f"/cdn/{FILE}", None)  # the token stays with the hub


def test_an_unreachable_hub_says_so(tmp_path):
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelError, match="cannot reach the Hugging Face hub at .* may be offline"):
        model_download.download_model(REPO, FILE, tmp_path, endpoint=f"http://127.0.0.1:{port}")
    assert leftovers(tmp_path) == []


def test_a_network_login_page_is_not_taken_for_the_hub(hub, tmp_path):
    hub.portal = True
    with pytest.raises(ModelError, match="did not answer like the Hugging Face hub .* network login page"):
        download(hub, tmp_path)
    assert hub.gets() == [] and leftovers(tmp_path) == []


def test_not_enough_disk_is_said_before_the_transfer(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(model_download.shutil, "disk_usage", lambda path: SimpleNamespace(free=1 << 20))
    with pytest.raises(ModelError, match="not enough free disk .* free some space"):
        download(hub, tmp_path)
    assert hub.gets() == []


@pytest.mark.parametrize("repo, filename", [
    ("Tiny-GGUF", FILE), ("a/b/c", FILE), ("../x", FILE), ("owner/..", FILE), ("a--b/c", FILE), ("", FILE),
    (REPO, "tiny.bin"), (REPO, "../tiny.gguf"), (REPO, "/etc/tiny.gguf"), (REPO, "q4//tiny.gguf"),
    (REPO, "q4/../../tiny.gguf"), (REPO, "C:\\tiny.gguf"), (REPO, "a\\..\\tiny.gguf"), (REPO, "tiny\n.gguf"),
])
def test_a_bad_repository_id_or_file_name_is_refused_before_any_request(hub, tmp_path, repo, filename):
    with pytest.raises(ModelError, match="is not a"):
        model_download.download_model(repo, filename, tmp_path, endpoint=hub.endpoint)
    assert hub.requests == [] and leftovers(tmp_path) == []


def test_a_file_in_a_repository_folder_lands_in_the_same_folder_here(hub, tmp_path):
    hub.files["Q4_K_M/tiny.gguf"] = MODEL
    path = model_download.download_model(REPO, "Q4_K_M/tiny.gguf", tmp_path, endpoint=hub.endpoint)
    assert path == tmp_path / "comma-test" / "Tiny-GGUF" / "Q4_K_M" / "tiny.gguf" and path.read_bytes() == MODEL
