"""Triton kernel for GAE: a reverse scan per sequence over the flat token layout.

One program holds BLOCK sequences, one per lane; every lane starts at its sequence's last
token (from the sequence index: starts and lengths) and steps back one token per loop
iteration, carrying A_next and V_next in registers; lanes whose sequence is shorter idle.
The recursion is sequential along a sequence but independent across sequences, so the
parallelism is the batch's sequences (thousands in RL batches) and the loop is the longest
completion. Math as in gae_torch.py.
"""
import torch
import triton
import triton.language as tl

from lightrl.kernels import backend, gae_torch


def _block(device):
    """Sequences per program: 128 lanes on a GPU (4 warps, one sequence a lane), 16 in the interpreter."""
    return 128 if backend.triton_target(device) == "cuda" else 16


@triton.jit
def _gae_kernel(r_ptr, v_ptr, mask_ptr, start_ptr, len_ptr, adv_ptr, ret_ptr, num_seqs, max_len, gamma, gamma_lam,
                BLOCK: tl.constexpr):
    lane = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = lane < num_seqs
    start = tl.load(start_ptr + lane, mask=valid, other=0)
    length = tl.load(len_ptr + lane, mask=valid, other=0)
    last_a = tl.zeros([BLOCK], dtype=tl.float32)
    next_v = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, max_len):
        live = valid & (i < length)
        t = start + length - 1 - i
        on = live & (tl.load(mask_ptr + t, mask=live, other=0) != 0)
        r = tl.load(r_ptr + t, mask=on, other=0.0)
        v = tl.load(v_ptr + t, mask=on, other=0.0)
        a = (r + gamma * next_v - v) + gamma_lam * last_a
        last_a = tl.where(on, a, last_a)
        next_v = tl.where(on, v, next_v)
        tl.store(adv_ptr + t, a, mask=on)
        tl.store(ret_ptr + t, a + v, mask=on)


def gae_triton(rewards, values, mask, seq_index, num_seqs: int, gamma: float, lam: float):
    """Same contract as gae_torch.gae_torch."""
    n = rewards.shape[0]
    dev = rewards.device
    adv = torch.zeros(n, dtype=torch.float32, device=dev)
    ret = torch.zeros(n, dtype=torch.float32, device=dev)
    if n == 0 or num_seqs == 0:
        return adv, ret
    starts, lengths = gae_torch.seq_bounds(seq_index, num_seqs)
    block = _block(dev)
    _gae_kernel[(triton.cdiv(num_seqs, block),)](
        rewards.float().contiguous(), values.float().contiguous(), mask.to(torch.int8).contiguous(), starts,
        lengths, adv, ret, num_seqs, int(lengths.max()), float(gamma), float(gamma * lam), BLOCK=block)
    return adv, ret
