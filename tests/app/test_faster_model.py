"""Settings → a person's own model off llama.cpp's fast path: the row offers a copy, makes it
with progress, shows the measured speed-ups, and keeps or removes the copy as asked."""

import shutil

import pytest

pytest.importorskip("pytestqt")

from app.faster_model import FasterModelRow, describe_gain
from engine.backends.gguf import probe
from engine.models.files import bundled_model_path

pytestmark = pytest.mark.model


@pytest.fixture
def own_model(tmp_path):
    path = tmp_path / "mine.Q4_1.gguf"
    shutil.copyfile(bundled_model_path(), path)
    return path


@pytest.fixture
def quick_probe(monkeypatch):
    real = probe.compare
    monkeypatch.setattr(probe, "compare", lambda a, b: real(a, b, runs=1))


def test_own_model_converted_measured_and_kept(qtbot, own_model, tmp_path, quick_probe):
    row = FasterModelRow(tmp_path / "models")
    qtbot.addWidget(row)
    chosen = []
    row.use_copy.connect(chosen.append)
    row.check(str(own_model))
    assert not row.isHidden() and not row.convert.isHidden()
    assert "Q4_1" in row.label.text() and "MB" in row.convert.text()
    row.start()
    qtbot.waitUntil(lambda: not row.keep.isHidden(), timeout=120_000)
    assert "Reading" in row.label.text() and "tokens/s" in row.label.text()
    assert row.bar.maximum() > 200  # MB of the F16 copy
    row.keep.click()
    assert len(chosen) == 1 and chosen[0].endswith(".gguf") and "models" in chosen[0]
    row.check(chosen[0])
    assert "made by Comma" in row.label.text() and row.convert.isHidden()


def test_removing_the_copy_deletes_only_what_was_made(qtbot, own_model, tmp_path, quick_probe):
    folder = tmp_path / "models"
    row = FasterModelRow(folder)
    qtbot.addWidget(row)
    row.check(str(own_model))
    row.start()
    qtbot.waitUntil(lambda: not row.remove.isHidden(), timeout=120_000)
    assert len(list(folder.iterdir())) == 2
    row.remove.click()
    assert list(folder.iterdir()) == [] and own_model.is_file()
    assert "removed" in row.label.text()


def test_nothing_is_offered_for_fast_weights_or_no_file(qtbot, tmp_path):
    row = FasterModelRow(tmp_path / "models")
    qtbot.addWidget(row)
    row.check("")
    assert row.isHidden()
    row.check(str(tmp_path / "missing.gguf"))
    assert row.isHidden()
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    row.check(str(not_gguf))
    assert row.isHidden() and not_gguf.read_text() == "not a model"


def test_the_gain_is_described_with_both_figures():
    text = describe_gain({"original": {"prefill_tokens_per_s": 200, "decode_tokens_per_s": 70},
                          "copy": {"prefill_tokens_per_s": 440, "decode_tokens_per_s": 56}})
    assert "2.20×" in text and "200 → 440" in text and "0.80×" in text
