"""Plain-PyTorch twins of the fused linear log-prob kernels.

`logprobs_forward` / `logprobs_backward` are the chunked CPU path: they walk the
tokens in chunks of rows, so the largest temporary is [chunk, V], never [N, V].
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

# Elements of the [chunk, V] fp32 buffer (12M: 48 MB, 384 rows at V = 32k). The
# BLAS loses speed on thinner chunks (at V = 32k, D = 512: 256 rows cost ~10 %
# more GEMM time than 512), while the buffer is most of this path's memory.
_CHUNK_ELEMENTS = 12 << 20


def _chunk_rows(n: int, v: int) -> int:
    return max(16, min(n, _CHUNK_ELEMENTS // max(v, 1)))


def _as_fp32(t: torch.Tensor) -> torch.Tensor:
    # Low-precision inputs are upcast so that logits and the softmax are exact fp32;
    # the copies are [*, D], never [N, V].
    return t if t.dtype == torch.float32 else t.float()


# Both functions work on base-2 logits y = z * log2(e) (exp2 runs about twice as
# fast as exp on CPU) and keep the per-chunk work to a few large ops: every
# per-row scale is applied once to [N, D] or [N] tensors outside the loop. On a
# loaded machine each parallel op can wait for a time slice, so op count matters.

def logprobs_forward(hidden, weight, targets, temperature: float, want_entropy: bool):
    """Chunked forward. hidden [N, D], weight [V, D] (same dtype), targets [N] int64.

    With z = hidden @ W.T / T and p = softmax(z): lse = logsumexp(z),
    logp = z_target - lse, entropy H = lse - sum_j p_j z_j.
    Returns (logp [N] f32, entropy [N] f32 or None, lse [N] f32). Rows whose
    target is -100 get logp 0 and entropy 0 (lse is still computed; the
    backward gives them no gradient).
    """
    n, v = hidden.shape[0], weight.shape[0]
    w = _as_fp32(weight)
    h_all = _as_fp32(hidden) * (LOG2E / temperature)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    row_max, row_sum, row_pu = torch.empty(n, 1, **f32), torch.empty(n, **f32), torch.empty(n, 1, 1, **f32)
    rows = _chunk_rows(n, v)
    y_buf = torch.empty(rows, v, **f32)
    p_buf = torch.empty(rows, v, **f32) if want_entropy else None
    for s in range(0, n, rows):
        e = min(s + rows, n)
        y = torch.mm(h_all[s:e], w.t(), out=y_buf[: e - s])
        torch.amax(y, dim=1, keepdim=True, out=row_max[s:e])
        y.sub_(row_max[s:e])  # u = y - max <= 0: exp2 cannot overflow
        if want_entropy:
            p = torch.exp2(y, out=p_buf[: e - s])
            torch.sum(p, dim=1, out=row_sum[s:e])
            # sum 2^u u as a batched dot: no [chunk, V] temporary
            torch.bmm(p[:, None, :], y[:, :, None], out=row_pu[s:e])
        else:
            torch.sum(y.exp2_(), dim=1, out=row_sum[s:e])
    lse = (row_max.squeeze(1) + row_sum.log2()) / LOG2E
    valid = targets != IGNORE_INDEX
    safe_t = torch.where(valid, targets, 0)
    z_target = (h_all * w[safe_t]).sum(dim=1) / LOG2E
    logp = torch.where(valid, z_target - lse, 0.0)
    entropy = None
    if want_entropy:
        # H = ln(sum 2^u) - ln2 * sum(2^u u) / sum(2^u)
        entropy = torch.where(valid, row_sum.log() - row_pu.view(-1) / row_sum / LOG2E, 0.0)
    return logp, entropy, lse


def logprobs_backward(hidden, weight, targets, temperature: float, lse, entropy, grad_logp, grad_entropy):
    """Chunked backward: recompute each chunk of logits, form dL/dz, run the two GEMMs.

    With p = softmax(z), z = hidden @ W.T / T and per-row upstream gradients
    g = grad_logp, e = grad_entropy:
        d logp / d z_j = onehot(target)_j - p_j
        d H / d z_j    = -p_j (z_j - sum_k p_k z_k) = -p_j (log p_j + H)
        dL/dz_j = g onehot_j - r c_j,  with (r, c) = (g, p) without the entropy
                  term, (1, p (g + e (log p + H))) with it
    and since z carries the 1/T factor:
        grad_hidden = (dL/dz) @ W / T,   grad_weight = (dL/dz).T @ hidden / T.
    The row factor r rides on the [N, D] operands; the one-hot part touches one
    row of W per token and is added outside the chunk loop. Rows whose target is
    -100 contribute nothing. lse [N] f32 comes from logprobs_forward; entropy
    [N] f32 is needed only when grad_entropy is given.
    Returns (grad_hidden [N, D] hidden.dtype, grad_weight [V, D] weight.dtype).
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
    h_r = h32 * neg_r  # dW operand with the row factor and the sign
    # The recomputed logits must round exactly like the forward's (same scaled
    # operand, same chunks): with |z| ~ 1e3 a different rounding order alone
    # shifts log p by ~1e-4.
    h_all = h32 * (LOG2E / temperature)
    lse2 = (lse * LOG2E)[:, None]
    grad_hidden = torch.empty(n, w.shape[1], **f32)
    grad_weight = torch.zeros(weight.shape, **f32)
    rows = _chunk_rows(n, v)
    y_buf = torch.empty(rows, v, **f32)
    p_buf = torch.empty(rows, v, **f32) if with_entropy else None
    for s in range(0, n, rows):
        end = min(s + rows, n)
        y = torch.mm(h_all[s:end], w.t(), out=y_buf[: end - s])
        y.sub_(lse2[s:end])  # log2 p
        if with_entropy:
            c = torch.exp2(y, out=p_buf[: end - s])
            c.mul_(torch.addcmul(coef_b[s:end], y, coef_a[s:end], out=y))
        else:
            c = y.exp2_()
        torch.mm(c, w, out=grad_hidden[s:end])
        grad_weight.addmm_(c.t(), h_r[s:end])
    del y_buf, p_buf, h_all, h_r  # the epilogue's temporaries need not stack on top of them
    grad_hidden.mul_(neg_r).add_(w[safe_t] * (g / temperature)[:, None])
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
