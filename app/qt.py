"""Guards against a PySide6 6.12.0 reference-counting bug; every app module imports this first.

On Python 3.11, PySide6 6.12.0 returns ``None`` from void methods (``setText``, ``setValue``,
``processEvents``…) and ``True`` from ``SignalInstance.emit()`` without taking a reference, so
each such call takes one reference away from ``None`` or ``True``. After a few hundred emits
(answer tokens, reading progress, scrolling), or some tens of thousands of widget updates,
Python frees the singleton and aborts ("bool_dealloc" / "none_dealloc: deallocating …").

- ``make_singletons_immortal()`` (run at import) gives ``None``, ``True`` and ``False`` a
  reference count no session can exhaust, which is what Python 3.12+ does for them anyway
  (immortal objects); it does nothing on 3.12+ or other interpreters.
- ``emit(signal, *args)`` emits and gives back what the emit took (measured once, at import:
  nothing on fixed versions), so signals stay balanced even where the first guard is off.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal


_IMMORTAL_HEADROOM = 1 << 40


def make_singletons_immortal() -> bool:
    """Raise the reference counts of None, True and False far out of reach (CPython < 3.12)."""
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False
    for singleton in (None, True, False):
        # ob_refcnt is the first field of every object in a release build of CPython 3.11.
        refcount = ctypes.c_ssize_t.from_address(id(singleton))
        if refcount.value < _IMMORTAL_HEADROOM // 2:
            refcount.value += _IMMORTAL_HEADROOM
    return True


IMMORTAL = make_singletons_immortal()


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
