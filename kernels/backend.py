"""Backend choice shared by every public op in lightrl.kernels."""
import os

import torch

BACKENDS = ("auto", "triton", "torch", "reference")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to "triton" on CUDA and "torch" elsewhere; reject what cannot run.

    Triton on a CPU tensor works only through the interpreter (TRITON_INTERPRET=1).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"backend='triton' got tensors on {device}; Triton runs on CUDA, or on CPU only with "
            "TRITON_INTERPRET=1 set before lightrl.kernels is imported. Use backend='torch' on CPU."
        )
    return backend
