"""Whether Qt can open the window here, told before the QApplication is made.

PySide6's wheels carry Qt but not the system libraries its X11 platform plugin (xcb) links; on a
plain Debian with X some are missing (libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1), and Qt
then aborts with "no Qt platform plugin could be initialized", which names neither the libraries
nor a way on. Without any display Qt aborts alike. ``startup_problem`` foresees both on Linux and
says, in one sentence, what to install or how to run without a window.

It follows Qt 6's own choice of plugin (QGuiApplicationPrivate::createPlatformIntegration), reads
the libraries the xcb plugin needs from its ELF dynamic section (nothing of the plugin is run),
and asks the dynamic loader for each one PySide6 does not ship. When it cannot tell, it says
nothing and Qt tries as before: the check may never stop a start that would have worked.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

from PySide6.QtCore import QLibraryInfo

# Qt's compile-time default plugin in PySide6's Linux wheels (QGuiApplication.platformName()
# says so before an application exists); Qt tries it last when nothing in the session says more.
DEFAULT_PLATFORM = "xcb"

# The Debian/Ubuntu packages of the X11 client libraries the xcb plugin links (its DT_NEEDED and
# libQt6XcbQpa's, PySide6 6.11). The others it links (libGL, libX11, libxkbcommon, GLib, the C++
# runtime) QtGui links too, so they are present once PySide6.QtGui imports.
DEBIAN_PACKAGES = {
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}

NO_DISPLAY = ("no display to open the window on (DISPLAY is not set); run Comma in a desktop session, "
              "or without a window: --screenshot OUT.png, or QT_QPA_PLATFORM=offscreen")

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
MAX_DYNAMIC_ENTRIES = 4096  # real dynamic sections hold a few dozen; a bound for a damaged file
MAX_NAME = 4096


def startup_problem(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> str | None:
    """What stops Qt from opening a window here, in one sentence, or None (also when unsure).

    Only Linux is checked: elsewhere Qt's plugins come with the wheel and need nothing more."""
    if not platform.startswith("linux"):
        return None
    try:
        return _linux_problem(environ)
    except Exception:  # the check is a courtesy: when it fails, Qt tries and says its own
        return None


def platform_plugins(environ: Mapping[str, str]) -> list[str]:
    """The platform plugins Qt 6 tries on Linux, in order; the first that loads is used.

    QT_QPA_PLATFORM, when not empty, is the list (``name[:options]`` entries separated by ``;``);
    otherwise wayland comes first in a Wayland session (WAYLAND_DISPLAY set, or XDG_SESSION_TYPE
    "wayland"), then xcb, which is also the default when no display is set at all."""
    chosen = environ.get("QT_QPA_PLATFORM", "")
    if not chosen:
        wayland = "WAYLAND_DISPLAY" in environ or environ.get("XDG_SESSION_TYPE") == "wayland"
        return (["wayland"] if wayland else []) + [DEFAULT_PLATFORM]
    plugins = []
    for entry in chosen.split(";"):
        name = next((part for part in entry.split(":") if part), "")
        if name:
            plugins.append(name.lower())
    return plugins


def _linux_problem(environ: Mapping[str, str]) -> str | None:
    if "QT_QPA_PLATFORM_PLUGIN_PATH" in environ or "QT_PLUGIN_PATH" in environ:
        return None  # Qt may load another build of the plugin, whose needs are not read here
    problem = None
    for plugin in platform_plugins(environ):
        if plugin != "xcb":
            return None  # only xcb's needs are known here; Qt loads any other or says why
        if not environ.get("DISPLAY"):
            problem = NO_DISPLAY
            continue  # xcb cannot connect; Qt goes on to the next plugin in the list, if any
        plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
        qt_lib = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.LibrariesPath))
        missing = missing_libraries(plugins / "platforms" / "libqxcb.so", qt_lib)
        if not missing:
            return None
        problem = missing_message(missing)
    return problem


def missing_libraries(plugin: Path, qt_lib: Path) -> list[str]:
    """The sonames the plugin needs, directly or through the Qt libraries in ``qt_lib`` that it
    links, which the dynamic loader cannot find. ValueError when a file is not a readable ELF."""
    missing: list[str] = []
    seen: set[str] = set()
    pending = [plugin]
    while pending:
        for name in needed_libraries(pending.pop()):
            if name in seen:
                continue
            seen.add(name)
            shipped = qt_lib / name
            if shipped.is_file():  # the loader finds these through the plugin's RUNPATH
                pending.append(shipped)
            elif not library_found(name):
                missing.append(name)
    return missing


def library_found(soname: str) -> bool:
    """Whether the dynamic loader finds ``soname`` (and what it needs) as it will for Qt.

    dlopen takes the exact soname and searches as the loader does (LD_LIBRARY_PATH, ld.so.cache,
    the system folders), which neither ctypes.util.find_library nor ldconfig -p (often not on a
    user's PATH) matches. The libraries it loads are the ones Qt would load next."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_message(missing: list[str]) -> str:
    """The sentence for missing sonames: which they are and the apt command that installs them."""
    packages = [DEBIAN_PACKAGES.get(name, name) for name in missing]  # unknown ones by their soname
    return (f"the window needs system libraries that are missing here: {', '.join(missing)} "
            f"(Qt's X11 platform plugin links them); install them with: sudo apt-get install {' '.join(packages)} "
            "(Debian/Ubuntu names; other systems name them alike, e.g. xcb-util-cursor on Fedora)")


def needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED names of an ELF shared object, in order, read from its dynamic segment as the
    loader reads them. Raises ValueError when the file is not such an object or is cut short."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _needed(data)
        except (struct.error, OverflowError) as exc:  # an offset past the end of a damaged file
            raise ValueError(f"{path} is not a whole ELF file: {exc}") from exc


def _needed(data: mmap.mmap) -> list[str]:
    if data[:4] != b"\x7fELF" or data[4:5] not in (b"\1", b"\2") or data[5:6] not in (b"\1", b"\2"):
        raise ValueError("not an ELF file")
    wide = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    fields = struct.unpack_from(order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"), data, 16)
    phoff, phentsize, phnum = fields[4], fields[8], fields[9]
    program = struct.Struct(order + ("IIQQQQQQ" if wide else "IIIIIIII"))
    if phentsize < program.size:
        raise ValueError("bad program header size")
    # Program headers as (type, offset, vaddr, filesz): the two layouts order their fields apart.
    segments = []
    for i in range(phnum):
        entry = program.unpack_from(data, phoff + i * phentsize)
        segments.append((entry[0], entry[2], entry[3], entry[5]) if wide else (entry[0], entry[1], entry[2], entry[4]))
    dynamic = next(((offset, size) for kind, offset, _, size in segments if kind == PT_DYNAMIC), None)
    if dynamic is None:
        raise ValueError("no dynamic segment")
    pair = struct.Struct(order + ("qQ" if wide else "iI"))
    needed, strtab, strsz = [], None, None
    for i in range(min(dynamic[1] // pair.size, MAX_DYNAMIC_ENTRIES)):
        tag, value = pair.unpack_from(data, dynamic[0] + i * pair.size)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
    if not needed:
        return []
    if strtab is None or strsz is None:
        raise ValueError("no string table for the needed libraries")
    table = _file_offset(segments, strtab)
    names = []
    for offset in needed:
        if offset >= strsz:
            raise ValueError("a needed library's name lies outside the string table")
        start = table + offset
        end = data.find(b"\0", start, start + min(MAX_NAME, strsz - offset))
        if end <= start:
            raise ValueError("a needed library's name is empty or not terminated")
        names.append(data[start:end].decode("ascii"))
    return names


def _file_offset(segments: list[tuple[int, int, int, int]], address: int) -> int:
    """Where in the file a loaded address lies (DT_STRTAB holds an address, not an offset)."""
    for kind, offset, vaddr, size in segments:
        if kind == PT_LOAD and vaddr <= address < vaddr + size:
            return offset + address - vaddr
    raise ValueError("the string table lies outside the loaded segments")
