"""The kernels need Triton (and torch), which come with the GPU extra on Linux only."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("triton") and importlib.util.find_spec("torch") else ["*.py"]
