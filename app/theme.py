"""Light or dark, as the system prefers: the palette the window is drawn with.

Qt 6.5+ reports the system's colour scheme (``QStyleHints.colorScheme``) and signals when it
changes, but on Linux without a platform theme plugin the default style keeps a light palette
whatever the desktop says. So the window uses the Fusion style, and with a dark scheme a dark
palette of its own; every widget of Comma takes its colours from the palette's roles, so both
read well. The page view keeps the pages as the document paints them (white paper), on a
neutral grey that suits both.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

# Dark colours after Qt's own Fusion dark palette, with links light enough to read on it.
_DARK = {
    QPalette.ColorRole.Window: "#2b2d31",
    QPalette.ColorRole.WindowText: "#e6e6e6",
    QPalette.ColorRole.Base: "#1f2023",
    QPalette.ColorRole.AlternateBase: "#2a2c30",
    QPalette.ColorRole.Text: "#e6e6e6",
    QPalette.ColorRole.Button: "#34363b",
    QPalette.ColorRole.ButtonText: "#e6e6e6",
    QPalette.ColorRole.ToolTipBase: "#34363b",
    QPalette.ColorRole.ToolTipText: "#e6e6e6",
    QPalette.ColorRole.PlaceholderText: "#9a9ca1",
    QPalette.ColorRole.Highlight: "#3d7bd9",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#8ab4f8",
    QPalette.ColorRole.LinkVisited: "#c58af9",
    QPalette.ColorRole.BrightText: "#ff6b6b",
    QPalette.ColorRole.Mid: "#45474d",
    QPalette.ColorRole.Dark: "#191a1c",
    QPalette.ColorRole.Light: "#4a4c52",
}
_DISABLED_TEXT = "#7c7e83"


def system_scheme() -> Qt.ColorScheme:
    return QGuiApplication.styleHints().colorScheme()


def palette_for(scheme: Qt.ColorScheme) -> QPalette:
    """The palette for ``scheme``: Fusion's standard (light) one, or Comma's dark one."""
    palette = QStyleFactory.create("Fusion").standardPalette()
    if scheme == Qt.ColorScheme.Dark:
        for role, colour in _DARK.items():
            palette.setColor(role, QColor(colour))
        for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
            palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(_DISABLED_TEXT))
    return palette


def apply(app: QApplication, scheme: Qt.ColorScheme | None = None) -> None:
    """Draw the application in ``scheme`` (the system's when None)."""
    app.setStyle("Fusion")
    app.setPalette(palette_for(system_scheme() if scheme is None else scheme))


def follow_system(app: QApplication) -> None:
    """On Linux, apply the system's scheme now and whenever it changes. macOS and Windows keep
    their native style, which follows the system's scheme by itself."""
    if not sys.platform.startswith("linux"):
        return
    apply(app)
    QGuiApplication.styleHints().colorSchemeChanged.connect(lambda scheme: apply(app, scheme))


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightnessF() < 0.5


def banner_colours(palette: QPalette, error: bool) -> tuple[str, str]:
    """Background and text of the message banner: a tint of red or blue that reads on both."""
    if is_dark(palette):
        return ("#4a1c22", "#ffd7dc") if error else ("#1c2f4a", "#d6e6ff")
    return ("#fde7e9", "#7a0010") if error else ("#e8f1fd", "#0b3d91")


def status_colour(palette: QPalette, failed: bool) -> QColor:
    """The colour of a reading's line in the library: red when it failed, else the link colour."""
    if failed:
        return QColor("#ff6b6b" if is_dark(palette) else "#b00020")
    return palette.color(QPalette.ColorRole.Link)
