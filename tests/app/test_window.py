"""The first window: it opens offscreen, lists the library, and reports a bad file in words."""

import pytest

pytest.importorskip("pytestqt")

from app.actions import Comma  # noqa: E402
from app.window import MainWindow  # noqa: E402
from storage.library import Library  # noqa: E402


def test_bad_file_is_reported_and_library_unchanged(qtbot, tmp_path):
    window = MainWindow(Comma(Library(tmp_path / "home")))
    qtbot.addWidget(window)
    assert window.documents.count() == 0
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    window.read(str(empty))
    qtbot.waitUntil(lambda: "Could not read" in window.status.text(), timeout=10_000)
    assert "empty" in window.status.text()
    assert window.documents.count() == 0 and window.comma.list() == []
