"""The torch backend: transformers model definitions with Comma's cache and Triton kernels."""
