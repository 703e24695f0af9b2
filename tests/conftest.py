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
        # The marker, not `"gpu" in item.keywords`: keywords hold every parent node's name,
        # so a checkout in a directory called gpu would skip the whole suite.
        if item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory):
    """Directory of a tiny model after a short clean warm start (some rewards are 1, so every
    algorithm row has a signal); shared by the training tests, read-only."""
    from lightrl import tiny
    path = str(tmp_path_factory.mktemp("warm"))
    torch.set_num_threads(1)
    tok = tiny.build_tokenizer()
    model = tiny.build_model(tok, seed=0)
    tiny.warm_start(model, tok, tiny.arithmetic_problems(2000, seed=1), steps=200, lr=5e-3, seed=0,
                    correct_frac=0.7, progress=False)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
