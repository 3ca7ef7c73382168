"""What every benchmark's JSON carries beside its figures: method, command, model, machine, versions."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path


def emit(benchmark: str, method: str, model, figures: dict, out: Path | None) -> None:
    """Print the report as JSON on stdout and, with ``out``, save it there too."""
    report = {
        "benchmark": benchmark,
        "method": " ".join(method.split()),
        "command": " ".join(["python", *sys.argv]),
        "model": model.name,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "versions": {"python": platform.python_version(), "llama-cpp-python": version("llama-cpp-python")},
        **figures,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if out:
        out.write_text(text + "\n")
