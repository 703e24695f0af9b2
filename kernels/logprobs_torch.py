"""Plain-PyTorch twins of the fused linear log-prob kernels.

`logprobs_forward` / `logprobs_backward` are the blocked CPU path: they walk the
logits in [rows, cols] blocks of bounded size, never building [N, V].
`reference_linear_logprobs` materialises the full logits; it is the ground truth.

Notation shared with logprobs_triton.py (T = temperature, W = weight):
    z = hidden @ W.T / T                 scaled logits, [N, V]
    lse = logsumexp_j z_j,  p = softmax(z)
    logp = z_target - lse
    H = -sum_j p_j log p_j = lse - sum_j p_j z_j
"""
import math

import torch

IGNORE_INDEX = -100
LOG2E = 1.0 / math.log(2.0)

# Logits are built in [rows, cols] blocks: up to _MAX_ROWS tokens by as many
# vocabulary columns as fit in _CHUNK_ELEMENTS (8M fp32 = 32 MB; 4096 x 2048 at
# the bench shape). Tall blocks keep the BLAS at full speed (token-only chunks of
# [384, 32000] were ~8 % slower end to end on 2 cores), and d weight for a column
# block is summed over all rows of the block in one GEMM.
_CHUNK_ELEMENTS = 8 << 20
_MAX_ROWS = 4096


def _blocks(n: int, v: int):
    rows = max(1, min(n, _MAX_ROWS))
    return rows, max(16, min(v, _CHUNK_ELEMENTS // rows))


def _as_fp32(t: torch.Tensor) -> torch.Tensor:
    # Low-precision inputs are upcast so that logits and the softmax are exact fp32;
    # the copies are [*, D], never [N, V].
    return t if t.dtype == torch.float32 else t.float()


# Both functions work on base-2 logits y = z * log2(e) (exp2 runs about twice as
# fast as exp on CPU) and keep the per-block work to a few large ops: per-row
# scales ride on [N, D] operands or [rows] vectors. On a loaded machine every
# parallel op can wait for a time slice, so the op count shows in wall time.

def logprobs_forward(hidden, weight, targets, temperature: float, want_entropy: bool):
    """Blocked forward with an online log-sum-exp over vocabulary blocks.

    hidden [N, D], weight [V, D] (same dtype), targets [N] int64. With
    z = hidden @ W.T / T and p = softmax(z): lse = logsumexp(z),
    logp = z_target - lse, entropy H = lse - sum_j p_j z_j.
    Returns (logp [N] f32, entropy [N] f32 or None, lse [N] f32). Rows whose
    target is -100 get logp 0 and entropy 0 (lse is still computed; the
    backward gives them no gradient).
    """
    n, v = hidden.shape[0], weight.shape[0]
    w = _as_fp32(weight)
    h_all = _as_fp32(hidden) * (LOG2E / temperature)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    lse = torch.empty(n, **f32)
    entropy = torch.empty(n, **f32) if want_entropy else None
    rows, cols = _blocks(n, v)
    y_buf = torch.empty(rows * cols, **f32)
    p_buf = torch.empty(rows * cols, **f32) if want_entropy else None
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        # Running max m, s = sum 2^(y-m), a = sum 2^(y-m) (y-m). A finite start
        # keeps (m - m_new) * s at 0 on the first block instead of -inf * 0.
        m = torch.full((r1 - r0, 1), -1e30, **f32)
        s = torch.zeros(r1 - r0, 1, **f32)
        a = torch.zeros(r1 - r0, 1, **f32) if want_entropy else None
        for c0 in range(0, v, cols):
            c1 = min(c0 + cols, v)
            y = torch.mm(h_all[r0:r1], w[c0:c1].t(), out=y_buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            m_new = torch.maximum(m, y.amax(dim=1, keepdim=True))
            alpha = torch.exp2(m - m_new)
            y.sub_(m_new)  # u = y - m_new <= 0: exp2 cannot overflow
            if want_entropy:
                p = torch.exp2(y, out=p_buf[: y.numel()].view_as(y))
                # a is kept relative to the running max, so H never subtracts two large numbers
                a = alpha * (a + (m - m_new) * s) + torch.bmm(p[:, None, :], y[:, :, None]).view(-1, 1)
                s = alpha * s + p.sum(dim=1, keepdim=True)
            else:
                s = alpha * s + y.exp2_().sum(dim=1, keepdim=True)
            m = m_new
        lse[r0:r1] = ((m + s.log2()) / LOG2E).view(-1)
        if want_entropy:
            entropy[r0:r1] = (s.log() - a / s / LOG2E).view(-1)  # ln s - ln2 * a / s
    valid = targets != IGNORE_INDEX
    safe_t = torch.where(valid, targets, 0)
    z_target = (h_all * w[safe_t]).sum(dim=1) / LOG2E
    logp = torch.where(valid, z_target - lse, 0.0)
    if want_entropy:
        entropy = torch.where(valid, entropy, 0.0)
    return logp, entropy, lse


def logprobs_backward(hidden, weight, targets, temperature: float, lse, entropy, grad_logp, grad_entropy,
                      want_grad_weight: bool = True):
    """Blocked backward: recompute each block of logits, form dL/dz, run the two GEMMs.

    With p = softmax(z), z = hidden @ W.T / T and per-row upstream gradients
    g = grad_logp, e = grad_entropy:
        d logp / d z_j = onehot(target)_j - p_j
        d H / d z_j    = -p_j (z_j - sum_k p_k z_k) = -p_j (log p_j + H)
        dL/dz_j = g onehot_j - r c_j,  with (r, c) = (g, p) without the entropy
                  term, (1, p (g + e (log p + H))) with it
    and since z carries the 1/T factor:
        grad_hidden = (dL/dz) @ W / T,   grad_weight = (dL/dz).T @ hidden / T.
    The row factor r rides on the [N, D] operands; the one-hot part touches one
    row of W per token and is added outside the block loop. Rows whose target is
    -100 contribute nothing. lse [N] f32 comes from logprobs_forward; entropy
    [N] f32 is needed only when grad_entropy is given.
    Returns (grad_hidden [N, D] hidden.dtype, grad_weight [V, D] weight.dtype, or None
    without want_grad_weight: a frozen lm_head skips the d-weight GEMM).
    """
    n, v = hidden.shape[0], weight.shape[0]
    w = _as_fp32(weight)
    h32 = _as_fp32(hidden)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    valid = targets != IGNORE_INDEX
    safe_t = torch.where(valid, targets, 0)
    g = torch.where(valid, grad_logp.float(), 0.0)
    with_entropy = grad_entropy is not None
    if with_entropy:
        e = torch.where(valid, grad_entropy.float(), 0.0)
        coef_b, coef_a = (g + e * entropy)[:, None], (e / LOG2E)[:, None]  # c / p = b + a * log2 p
        r = torch.ones_like(g)
    else:
        r = g
    neg_r = (-r / temperature)[:, None]
    h_r = h32 * neg_r  # d-weight operand with the row factor and the sign
    # The recomputed logits must round exactly like the forward's (same scaled
    # operand, same blocks): with |z| ~ 1e3 a different rounding order alone
    # shifts log p by ~1e-4.
    h_all = h32 * (LOG2E / temperature)
    lse2 = (lse * LOG2E)[:, None]
    grad_hidden = torch.zeros(n, w.shape[1], **f32)
    grad_weight = torch.zeros(weight.shape, **f32) if want_grad_weight else None
    rows, cols = _blocks(n, v)
    y_buf = torch.empty(rows * cols, **f32)
    p_buf = torch.empty(rows * cols, **f32) if with_entropy else None
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        for c0 in range(0, v, cols):
            c1 = min(c0 + cols, v)
            y = torch.mm(h_all[r0:r1], w[c0:c1].t(), out=y_buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            y.sub_(lse2[r0:r1])  # log2 p
            if with_entropy:
                c = torch.exp2(y, out=p_buf[: y.numel()].view_as(y))
                c.mul_(torch.addcmul(coef_b[r0:r1], y, coef_a[r0:r1], out=y))
            else:
                c = y.exp2_()
            grad_hidden[r0:r1].addmm_(c, w[c0:c1])
            if want_grad_weight:
                grad_weight[c0:c1].addmm_(c.t(), h_r[r0:r1])
    del y_buf, p_buf, h_all, h_r  # the epilogue's temporaries need not stack on top of them
    grad_hidden.mul_(neg_r).add_(w[safe_t] * (g / temperature)[:, None])
    if not want_grad_weight:
        return grad_hidden.to(hidden.dtype), None
    grad_weight.index_add_(0, safe_t, h32 * (g / temperature)[:, None])
    return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype)


def reference_linear_logprobs(hidden, weight, targets, temperature: float = 1.0, return_entropy: bool = False):
    """Ground truth: full [N, V] fp32 logits, log_softmax, autograd for the backward."""
    valid = targets != IGNORE_INDEX
    logits = (hidden.float() @ weight.float().t()) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    logp = logprobs.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1)
    logp = torch.where(valid, logp, 0.0)
    if not return_entropy:
        return logp
    entropy = -(logprobs.exp() * logprobs).sum(dim=-1)
    return logp, torch.where(valid, entropy, 0.0)
