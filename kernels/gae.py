"""gae: generalized advantage estimation over the flat token layout of a batch."""
import torch

from lightrl.kernels import gae_torch
from lightrl.kernels.backend import resolve_backend


def gae(rewards, values, mask, seq_index, *, gamma: float, lam: float, num_seqs: int | None = None,
        backend="auto"):
    """GAE(gamma, lam) advantages and value targets of every token, one reverse scan per sequence.

    rewards, values [N] float (per-token rewards and the critic's values of the same tokens),
    mask [N] bool (False: the token is skipped, gets 0), seq_index [N] int64 non-decreasing
    (each sequence's tokens contiguous), gamma and lam in [0, 1], num_seqs: S (default
    seq_index[-1] + 1). Returns (advantages [N] f32, returns [N] f32 = advantages + values on
    mask tokens). Math in gae_torch.py. backend: "auto" | "triton" | "torch" | "reference".
    """
    n = rewards.shape[0]
    for name, t in (("rewards", rewards), ("values", values), ("mask", mask), ("seq_index", seq_index)):
        if t.shape != (n,):
            raise ValueError(f"{name} must be [N={n}] like rewards, got {tuple(t.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype} (use mask.bool())")
    if seq_index.dtype != torch.int64:
        raise TypeError(f"seq_index must be int64, got {seq_index.dtype} (use seq_index.long())")
    if n and bool((seq_index[1:] < seq_index[:-1]).any()):
        raise ValueError("seq_index must be non-decreasing: each sequence's tokens contiguous, in order")
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0 <= x <= 1:
            raise ValueError(f"{name}={x} must be in [0, 1]")
    if num_seqs is None:
        num_seqs = int(seq_index[-1]) + 1 if n else 0
    elif n and int(seq_index[-1]) >= num_seqs:
        raise ValueError(f"seq_index reaches {int(seq_index[-1])} but num_seqs={num_seqs}")
    name = resolve_backend(backend, rewards.device)
    if name == "reference":
        return gae_torch.reference_gae(rewards, values, mask, seq_index, num_seqs, gamma, lam)
    if name == "triton":
        from lightrl.kernels import gae_triton  # imported late: only where Triton can run
        return gae_triton.gae_triton(rewards, values, mask, seq_index, num_seqs, gamma, lam)
    return gae_torch.gae_torch(rewards, values, mask, seq_index, num_seqs, gamma, lam)
