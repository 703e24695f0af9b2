"""Plain-PyTorch twin of the GAE kernel, and the per-token loop reference.

Generalized advantage estimation (Schulman et al. 2016) over each sequence's mask tokens,
with rewards r_t, values V_t, discount gamma and trace decay lam. The recursion skips
mask-false tokens: next(t) is the sequence's next mask token, and the value after its last
mask token is 0 (the completion ends there):
    delta_t = r_t + gamma * V_next(t) - V_t
    A_t     = delta_t + gamma * lam * A_next(t)
    R_t     = A_t + V_t   (the value target)
Mask-false tokens get A = R = 0. gamma = lam = 1 with V = 0 gives the return-to-go.
"""
import torch


def seq_bounds(seq_index, num_seqs: int):
    """(starts, lengths) [S] int64 of each sequence's tokens in the flat layout."""
    lengths = torch.bincount(seq_index, minlength=num_seqs)
    return torch.cumsum(lengths, 0) - lengths, lengths


def gae_torch(rewards, values, mask, seq_index, num_seqs: int, gamma: float, lam: float):
    """rewards, values [N] f32, mask [N] bool, seq_index [N] int64 non-decreasing.
    Returns (advantages [N] f32, returns [N] f32). All sequences step back together, one
    position at a time from their ends (max length steps of [S] vector work)."""
    n = rewards.shape[0]
    adv = torch.zeros(n, dtype=torch.float32, device=rewards.device)
    ret = torch.zeros_like(adv)
    if n == 0:
        return adv, ret
    starts, lengths = seq_bounds(seq_index, num_seqs)
    last_a = torch.zeros(num_seqs, dtype=torch.float32, device=rewards.device)
    next_v = torch.zeros_like(last_a)
    r, v, m = rewards.float(), values.float(), mask
    for i in range(int(lengths.max())):
        live = i < lengths
        t = torch.where(live, starts + lengths - 1 - i, 0)
        on = live & m[t]
        delta = r[t] + gamma * next_v - v[t]
        a = delta + (gamma * lam) * last_a
        last_a = torch.where(on, a, last_a)
        next_v = torch.where(on, v[t], next_v)
        adv[t[on]] = a[on]
        ret[t[on]] = (a + v[t])[on]
    return adv, ret


def reference_gae(rewards, values, mask, seq_index, num_seqs: int, gamma: float, lam: float):
    """The same, one token at a time in plain Python floats (ground truth for tests)."""
    n = rewards.shape[0]
    adv, ret = [0.0] * n, [0.0] * n
    seqs = seq_index.tolist()
    for s in range(num_seqs):
        toks = [t for t in range(n) if seqs[t] == s and bool(mask[t])]
        last_a, next_v = 0.0, 0.0
        for t in reversed(toks):
            v = float(values[t])
            last_a = float(rewards[t]) + gamma * next_v - v + gamma * lam * last_a
            adv[t], ret[t], next_v = last_a, last_a + v, v
    f32 = dict(dtype=torch.float32, device=rewards.device)
    return torch.tensor(adv, **f32), torch.tensor(ret, **f32)
