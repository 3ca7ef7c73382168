"""Triton kernels, one op per file, each with its PyTorch reference beside it (GPU engine)."""
