"""What every benchmark's JSON carries beside its figures: method, command, model, machine, versions."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("llama-cpp-python", "torch", "triton", "transformers")


def _versions(packages: tuple[str, ...]) -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES + packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        torch = sys.modules["torch"]
        found["cuda"] = torch.version.cuda
        found["gpu"] = torch.cuda.get_device_name()
    return found


def _cpu_name() -> str | None:
    """The processor's model name (Linux): machines of one kind differ, and so do their speeds."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return None
    return f"{fields['model name']} (family {fields.get('cpu family')}, model {fields.get('model')})"


def emit(benchmark: str, method: str, model, figures: dict, out: Path | None,
         packages: tuple[str, ...] = ()) -> None:
    """Print the report as JSON on stdout and, with ``out``, save it there too. ``model`` is a
    model (its ``name``) or a name; ``packages``: the benchmark's own, whose versions it records
    beside the engine's."""
    report = {
        "benchmark": benchmark,
        "method": " ".join(method.split()),
        "command": " ".join(["python", *sys.argv]),
        "model": model if isinstance(model, str) else model.name,
        "machine": {"cpu_count": os.cpu_count(), "cpu": _cpu_name(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "versions": _versions(packages),
        **figures,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if out:
        out.write_text(text + "\n")
