"""Test-wide setup.

Without CUDA, Triton kernels can only run through the interpreter, and Triton
reads TRITON_INTERPRET when a kernel is defined, so it is set here, before any
test imports lightrl.kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
