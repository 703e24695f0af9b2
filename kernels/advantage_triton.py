"""Triton kernel for group advantages: one program per group, the group held in registers.

Groups are made contiguous by a stable sort on the group id (in PyTorch, O(B log B) on
[B] ints); each program reads its group through that permutation, does the filter,
baseline and per-group std in registers (top-k ranks by an all-pairs comparison, fine
for the group sizes of RLVR, tens of samples) and writes back in the original order.
The batch-wide std ("batch_std") is one more reduction over [B], done in PyTorch.
Math as in advantage_torch.py.
"""
import torch
import triton
import triton.language as tl

from lightrl.kernels import advantage_torch

KEEP_CODES = {"all": 0, "positives": 1, "mixed": 2, "drop_all_wrong": 3, "drop_all_correct": 4, "top_k": 5}
BASELINE_CODES = {"none": 0, "group_mean": 1, "leave_one_out": 2}


@triton.jit
def _broadcast(flag, BLOCK: tl.constexpr):
    # A per-group condition as a [BLOCK] mask (scalar & tensor of bools is not allowed).
    return (tl.zeros([BLOCK], dtype=tl.float32) + flag.to(tl.float32)) > 0


@triton.jit
def _group_kernel(r_ptr, t_ptr, key_ptr, perm_ptr, start_ptr, size_ptr, adv_ptr, keep_ptr, top_k, std_eps,
                  KEEP: tl.constexpr, BASELINE: tl.constexpr, GROUP_STD: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    start = tl.load(start_ptr + g)
    size = tl.load(size_ptr + g)
    lane = tl.arange(0, BLOCK)
    valid = lane < size
    idx = tl.load(perm_ptr + start + lane, mask=valid, other=0)
    r = tl.load(r_ptr + idx, mask=valid, other=0.0)  # mapped scores: the filter
    t = tl.load(t_ptr + idx, mask=valid, other=0.0)  # plus shaping: the advantage
    gmax = tl.max(tl.where(valid, r, -float("inf")), axis=0)
    gmin = tl.min(tl.where(valid, r, float("inf")), axis=0)
    if KEEP == 0:
        keep = valid
    elif KEEP == 1:
        keep = valid & (r == gmax) & (r > 0)
    elif KEEP == 2:
        keep = valid & _broadcast(gmax != gmin, BLOCK)
    elif KEEP == 3:
        keep = valid & _broadcast(gmax > 0, BLOCK)
    elif KEEP == 4:
        keep = valid & _broadcast(gmin <= 0, BLOCK)
    else:
        key = tl.load(key_ptr + idx, mask=valid, other=0.0)
        # rank_i = #{j in group: key_j < key_i, or key_j == key_i and j < i}
        ki = key[:, None]
        kj = key[None, :]
        before = (kj < ki) | ((kj == ki) & (lane[None, :] < lane[:, None]))
        rank = tl.sum((before & valid[None, :]).to(tl.int32), axis=1)
        keep = valid & (rank < top_k)
    kf = keep.to(tl.float32)
    n = tl.sum(kf, axis=0)
    total = tl.sum(t * kf, axis=0)
    mean = total / tl.maximum(n, 1.0)
    if BASELINE == 0:
        a = t
    elif BASELINE == 1:
        a = t - mean
    else:
        a = tl.where(n > 1, t - (total - t) / tl.maximum(n - 1.0, 1.0), 0.0)
    if GROUP_STD:
        dev = (t - mean) * kf
        std = tl.sqrt(tl.sum(dev * dev, axis=0) / tl.maximum(n - 1.0, 1.0))
        a = a / (std + std_eps)
    a = tl.where(keep, a, 0.0)
    tl.store(adv_ptr + idx, a, mask=valid)
    tl.store(keep_ptr + idx, keep.to(tl.int8), mask=valid)


def group_advantages_triton(rewards, gid, num_groups: int, row, lengths=None, shaping=None):
    """Same contract as advantage_torch.group_advantages_torch."""
    r = advantage_torch.mapped_rewards(rewards, row).contiguous()
    t = r if shaping is None else (r + shaping.float()).contiguous()
    b = r.shape[0]
    adv = torch.zeros(b, dtype=torch.float32, device=r.device)
    keep = torch.zeros(b, dtype=torch.int8, device=r.device)
    if b == 0 or num_groups == 0:
        return adv, keep.bool()
    perm = torch.argsort(gid, stable=True)
    sizes = torch.bincount(gid, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    key = advantage_torch.sort_key(t, lengths, row).contiguous() if row.keep == "top_k" else r
    block = max(16, triton.next_power_of_2(int(sizes.max())))
    _group_kernel[(num_groups,)](
        r, t, key, perm, starts, sizes, adv, keep, row.top_k, row.std_eps,
        KEEP=KEEP_CODES[row.keep], BASELINE=BASELINE_CODES[row.baseline], GROUP_STD=row.scale == "group_std",
        BLOCK=block)
    keep = keep.bool()
    if row.scale == "batch_std":
        adv = adv / (advantage_torch.batch_std(adv, keep) + row.std_eps)
    return adv, keep
