"""Backend choice shared by every public op in lightrl.kernels."""
import os

import torch

BACKENDS = ("auto", "triton", "torch", "reference")


def triton_target(device: torch.device):
    """Where Triton kernels on `device` run: "cuda", "interpret" (CPU with TRITON_INTERPRET=1), or None.

    The Triton modules pick their launch configuration (block sizes, warps, splits) from this:
    "cuda" gets the GPU configuration, "interpret" small tiles that the interpreter runs fast.
    Tests replace it with `lambda device: "cuda"` to run the GPU configuration through the
    interpreter, and bench/bench_compile.py to record the GPU launches for compilation.
    """
    if device.type == "cuda":
        return "cuda"
    return "interpret" if os.environ.get("TRITON_INTERPRET") == "1" else None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to "triton" on CUDA and "torch" elsewhere; reject what cannot run.

    Triton on a CPU tensor works only through the interpreter (TRITON_INTERPRET=1).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and triton_target(device) is None:
        raise RuntimeError(
            f"backend='triton' got tensors on {device}; Triton runs on CUDA, or on CPU only with "
            "TRITON_INTERPRET=1 set before lightrl.kernels is imported. Use backend='torch' on CPU."
        )
    return backend
