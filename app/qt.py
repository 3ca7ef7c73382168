"""``emit(signal, *args)``: emit a Qt signal from Python, safely on every PySide6 we run on.

PySide6 6.12.0 on Python 3.11 returns ``True`` from ``SignalInstance.emit()`` without taking a
reference to it, so every emit whose result is dropped takes one reference away from ``True``.
A few hundred emits (answer tokens, reading progress, scrolling) and ``True`` is freed: Python
aborts with "bool_dealloc: deallocating True or False". This module measures the loss once, at
import, and gives the references back after each emit, so the app is right on fixed versions
(which lose nothing, so nothing is given back) and on the broken one.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal


class _Probe(QObject):
    ping = Signal()


def _references_lost_per_emit() -> int:
    probe = _Probe()
    tries = 16
    before = sys.getrefcount(True)
    for _ in range(tries):
        probe.ping.emit()
    lost = (before - sys.getrefcount(True)) / tries
    for _ in range(max(0, round(lost * tries))):  # repay what the probe itself took
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return max(0, round(lost))


LOST_PER_EMIT = _references_lost_per_emit()


def emit(signal, *args) -> None:
    signal.emit(*args)
    for _ in range(LOST_PER_EMIT):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
