"""The torch engine's tests need the GPU extra (torch, transformers); the light install skips them."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers") else [
    "test_torch_backend.py"]
