"""The start-up check before Qt (app/qt_platform.py), with no display needed: which platform plugin
Qt will try, the ELF reader on PySide6's real xcb plugin and on damaged files, the sentence that
names the missing libraries and their packages, and open_window stopping before any QApplication."""

import shutil
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QLibraryInfo

from app import qt_platform, window
from app.qt_platform import NO_DISPLAY, missing_libraries, missing_message, needed_libraries, platform_plugins, startup_problem

QT_LIB = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.LibrariesPath))
XCB_PLUGIN = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms" / "libqxcb.so"
needs_xcb_plugin = pytest.mark.skipif(not XCB_PLUGIN.is_file(), reason="needs PySide6's Linux xcb plugin")
SESSION = ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "QT_QPA_PLATFORM_PLUGIN_PATH",
           "QT_PLUGIN_PATH")


def missing(*sonames):
    """A stand-in for the loader's look-up that cannot find these sonames."""
    return lambda soname: soname not in sonames


def never_asked(soname):
    pytest.fail(f"the loader was asked for {soname}")


@pytest.mark.parametrize("environ, plugins", [
    ({}, ["xcb"]),  # Qt's default, which then fails for want of a display
    ({"DISPLAY": ":0"}, ["xcb"]),
    ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, ["wayland", "xcb"]),
    ({"WAYLAND_DISPLAY": ""}, ["wayland", "xcb"]),  # Qt asks only whether it is set
    ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}, ["wayland", "xcb"]),
    ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"}, ["xcb"]),
    ({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"}, ["offscreen"]),
    ({"QT_QPA_PLATFORM": "", "DISPLAY": ":0"}, ["xcb"]),  # empty counts as unset
    ({"QT_QPA_PLATFORM": "XCB:nograb", "WAYLAND_DISPLAY": "wayland-0"}, ["xcb"]),
    ({"QT_QPA_PLATFORM": "wayland;xcb:nograb"}, ["wayland", "xcb"]),
    ({"QT_QPA_PLATFORM": ";:minimal:x=1;;"}, ["minimal"]),
])
def test_the_plugins_qt_tries_in_order(environ, plugins):
    assert platform_plugins(environ) == plugins


@needs_xcb_plugin
def test_the_real_xcb_plugin_lists_the_x_libraries_it_needs():
    needed = needed_libraries(XCB_PLUGIN)
    assert {"libQt6XcbQpa.so.6", "libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1",
            "libxkbcommon-x11.so.0", "libc.so.6"} <= set(needed)


@needs_xcb_plugin
@pytest.mark.skipif(not shutil.which("readelf"), reason="needs binutils' readelf")
def test_the_reader_agrees_with_readelf():
    for path in (XCB_PLUGIN, QT_LIB / "libQt6XcbQpa.so.6"):
        listing = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        expected = [line.split("[", 1)[1].rstrip("]") for line in listing.splitlines() if "(NEEDED)" in line]
        assert needed_libraries(path) == expected


def tiny_elf(wide: bool, order: str, names: list[str], strsz_cut: int = 0) -> bytes:
    """A shared object of headers, one loaded segment, a string table and a dynamic segment."""
    header_size, program_size = (64, 56) if wide else (52, 32)
    strings = b"\0" + b"".join(name.encode() + b"\0" for name in names)
    strtab = header_size + 2 * program_size
    dynamic_at = strtab + len(strings)
    base = 0x10000  # loaded at another address than its file offset, as real objects are
    offsets = [1 + sum(len(n) + 1 for n in names[:i]) for i in range(len(names))]
    pair = order + ("qQ" if wide else "iI")
    dynamic = b"".join(struct.pack(pair, 1, offset) for offset in offsets)
    dynamic += struct.pack(pair, 5, base + strtab) + struct.pack(pair, 10, len(strings) - strsz_cut)
    dynamic += struct.pack(pair, 0, 0)
    total = dynamic_at + len(dynamic)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        header = struct.pack(order + "HHIQQQIHHHHHH", 3, 62, 1, 0, header_size, 0, 0, header_size, program_size, 2, 0, 0, 0)
        load = struct.pack(order + "IIQQQQQQ", 1, 4, 0, base, base, total, total, 0x1000)
        dyn = struct.pack(order + "IIQQQQQQ", 2, 6, dynamic_at, base + dynamic_at, 0, len(dynamic), len(dynamic), 8)
    else:
        header = struct.pack(order + "HHIIIIIHHHHHH", 3, 20, 1, 0, header_size, 0, 0, header_size, program_size, 2, 0, 0, 0)
        load = struct.pack(order + "IIIIIIII", 1, 0, base, base, total, total, 4, 0x1000)
        dyn = struct.pack(order + "IIIIIIII", 2, dynamic_at, base + dynamic_at, 0, len(dynamic), len(dynamic), 6, 4)
    return ident + header + load + dyn + strings + dynamic


@pytest.mark.parametrize("wide, order", [(False, ">"), (True, "<")])
def test_the_reader_takes_both_classes_and_byte_orders(tmp_path, wide, order):
    path = tmp_path / "libtiny.so"
    path.write_bytes(tiny_elf(wide, order, ["libfoo.so.1", "libbar.so.2"]))
    assert needed_libraries(path) == ["libfoo.so.1", "libbar.so.2"]
    path.write_bytes(tiny_elf(wide, order, ["libfoo.so.1", "libbar.so.2"], strsz_cut=8))
    with pytest.raises(ValueError):  # the second name runs past the table's stated size
        needed_libraries(path)


@needs_xcb_plugin
@pytest.mark.parametrize("keep", [0, 10, 64, 1000, "half"])
def test_a_cut_short_plugin_is_an_error_not_a_crash(tmp_path, keep):
    data = XCB_PLUGIN.read_bytes()
    path = tmp_path / "libqxcb.so"
    path.write_bytes(data[:len(data) // 2 if keep == "half" else keep])
    with pytest.raises(ValueError):
        needed_libraries(path)


def test_a_file_that_is_not_elf_is_an_error(tmp_path):
    path = tmp_path / "libnot.so"
    path.write_text("INPUT(-lfoo)\n" * 20)  # a linker script, as some lib*.so files are
    with pytest.raises(ValueError):
        needed_libraries(path)


@needs_xcb_plugin
def test_missing_libraries_are_named_with_the_apt_line(monkeypatch):
    asked = []

    def found(soname):
        asked.append(soname)
        return soname not in ("libxcb-cursor.so.0", "libxcb-icccm.so.4")

    monkeypatch.setattr(qt_platform, "library_found", found)
    assert missing_libraries(XCB_PLUGIN, QT_LIB) == ["libxcb-cursor.so.0", "libxcb-icccm.so.4"]
    assert not [soname for soname in asked if soname.startswith("libQt6")]  # PySide6 ships those
    message = startup_problem({"DISPLAY": ":0"}, "linux")
    assert message is not None and "\n" not in message
    assert "libxcb-cursor.so.0, libxcb-icccm.so.4" in message
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4 (" in message
    assert "Fedora" in message


def test_a_soname_without_a_known_package_is_named_itself():
    assert "sudo apt-get install libxcb-keysyms1 libfoo.so.3 (" in missing_message(["libxcb-keysyms.so.1", "libfoo.so.3"])


@needs_xcb_plugin
def test_nothing_is_said_when_every_library_is_found(monkeypatch):
    monkeypatch.setattr(qt_platform, "library_found", lambda soname: True)
    assert startup_problem({"DISPLAY": ":0"}, "linux") is None


@needs_xcb_plugin
@pytest.mark.skipif(not shutil.which("ldd"), reason="needs ldd")
def test_on_this_machine_the_check_finds_what_ldd_finds_missing():
    listing = subprocess.run(["ldd", str(XCB_PLUGIN)], capture_output=True, text=True, check=True).stdout
    not_found = {line.split("=>")[0].strip() for line in listing.splitlines() if "not found" in line}
    assert set(missing_libraries(XCB_PLUGIN, QT_LIB)) == not_found


def test_no_display_says_how_to_go_on_without_one(monkeypatch):
    monkeypatch.setattr(qt_platform, "library_found", never_asked)
    for environ in ({}, {"DISPLAY": ""}, {"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "wayland-0"}):
        assert startup_problem(environ, "linux") == NO_DISPLAY
    assert "--screenshot" in NO_DISPLAY and "QT_QPA_PLATFORM=offscreen" in NO_DISPLAY


@pytest.mark.parametrize("environ, platform", [
    ({"DISPLAY": ":0"}, "darwin"),
    ({}, "win32"),
    ({"QT_QPA_PLATFORM": "offscreen"}, "linux"),
    ({"QT_QPA_PLATFORM": "minimal", "DISPLAY": ":0"}, "linux"),
    ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, "linux"),  # wayland is tried first
    ({"XDG_SESSION_TYPE": "wayland"}, "linux"),
    ({"QT_QPA_PLATFORM": "xcb;offscreen"}, "linux"),  # Qt falls back to offscreen
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM_PLUGIN_PATH": "/opt/qt/plugins"}, "linux"),  # another plugin
    ({"DISPLAY": ":0", "QT_PLUGIN_PATH": "/opt/qt/plugins"}, "linux"),
])
def test_nothing_is_checked_where_xcb_is_not_what_qt_needs(monkeypatch, environ, platform):
    monkeypatch.setattr(qt_platform, "library_found", never_asked)
    assert startup_problem(environ, platform) is None


def test_a_failing_check_lets_qt_try(monkeypatch):
    def broken(path):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(qt_platform, "needed_libraries", broken)
    assert startup_problem({"DISPLAY": ":0"}, "linux") is None


class QtNotReached:
    """Stands in for QApplication: open_window must return before it looks for or makes one."""

    def __getattr__(self, name):
        pytest.fail(f"open_window reached QApplication.{name}")

    def __call__(self, *args):
        pytest.fail("open_window made a QApplication")


class Reached(Exception):
    pass


def reached(*args):
    raise Reached


@needs_xcb_plugin
def test_open_window_says_what_to_install_and_stops_before_qt(monkeypatch, capsys):
    for name in SESSION:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(qt_platform, "library_found", missing("libxcb-cursor.so.0"))
    monkeypatch.setattr(window, "QApplication", QtNotReached())
    assert window.open_window() == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "sudo apt-get install libxcb-cursor0 (" in lines[0]
    assert captured.out == ""


def test_a_screenshot_needs_no_display(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # so that the value open_window sets is undone
    for name in SESSION:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(qt_platform, "library_found", never_asked)
    monkeypatch.setattr(window, "QApplication", SimpleNamespace(instance=reached))
    with pytest.raises(Reached):
        window.open_window(screenshot="shot.png")
