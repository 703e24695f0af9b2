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
import torch

import math

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


# Both functions work on base-2 logits y = z * log2(e) (the factor rides on the
# hidden chunk, so it is free): on CPU exp2 runs about twice as fast as exp.

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
    scale = LOG2E / temperature
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty(n, dtype=torch.float32, device=hidden.device) if want_entropy else None
    rows = _chunk_rows(n, v)
    y_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device)
    p_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device) if want_entropy else None
    for s in range(0, n, rows):
        e = min(s + rows, n)
        y = y_buf[: e - s]
        torch.mm(_as_fp32(hidden[s:e]) * scale, w.t(), out=y)
        m = y.amax(dim=1, keepdim=True)
        y.sub_(m)  # y - max <= 0: exp2 cannot overflow
        if want_entropy:
            p = torch.exp2(y, out=p_buf[: e - s])
            sum_p = p.sum(dim=1)
            # H = ln(sum 2^u) - ln2 * sum(2^u u) / sum(2^u) with u = y - max; the
            # batched dot avoids a [chunk, V] temporary.
            pu = torch.bmm(p[:, None, :], y[:, :, None]).view(-1)
            entropy[s:e] = sum_p.log() - pu / sum_p * math.log(2.0)
        else:
            sum_p = y.exp2_().sum(dim=1)
        lse[s:e] = (m.squeeze(1) + sum_p.log2()) / LOG2E
    valid = targets != IGNORE_INDEX
    safe_t = torch.where(valid, targets, 0)
    z_target = (_as_fp32(hidden) * w[safe_t]).sum(dim=1) / temperature
    logp = torch.where(valid, z_target - lse, 0.0)
    if want_entropy:
        entropy = torch.where(valid, entropy, 0.0)
    return logp, entropy, lse


def logprobs_backward(hidden, weight, targets, temperature: float, lse, entropy, grad_logp, grad_entropy):
    """Chunked backward: recompute each chunk of logits, form dL/dz, run the two GEMMs.

    With p = softmax(z), z = hidden @ W.T / T and per-row upstream gradients
    g = grad_logp, e = grad_entropy:
        d logp / d z_j = onehot(target)_j - p_j
        d H / d z_j    = -p_j (z_j - sum_k p_k z_k) = -p_j (log p_j + H)
        dL/dz_j = g onehot_j - c_j,   c_j = p_j (g + e (log p_j + H))
    and since z carries the 1/T factor:
        grad_hidden = (dL/dz) @ W / T,   grad_weight = (dL/dz).T @ hidden / T.
    Rows whose target is -100 contribute nothing. lse [N] f32 comes from
    logprobs_forward; entropy [N] f32 is needed only when grad_entropy is given.
    Returns (grad_hidden [N, D] hidden.dtype, grad_weight [V, D] weight.dtype).
    """
    n, v = hidden.shape[0], weight.shape[0]
    w = _as_fp32(weight)
    valid = targets != IGNORE_INDEX
    g = torch.where(valid, grad_logp.float(), 0.0)
    e = torch.where(valid, grad_entropy.float(), 0.0) if grad_entropy is not None else None
    safe_t = torch.where(valid, targets, 0)
    h_all = _as_fp32(hidden) / temperature
    # The one-hot part of dL/dz touches one column per row: apply it directly.
    grad_hidden = (g / temperature)[:, None] * w[safe_t]
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_weight.index_add_(0, safe_t, g[:, None] * h_all)
    rows = _chunk_rows(n, v)
    y_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device)
    p_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device) if e is not None else None
    dh_buf = torch.empty(rows, w.shape[1], dtype=torch.float32, device=hidden.device)
    for s in range(0, n, rows):
        end = min(s + rows, n)
        h = h_all[s:end]
        y = y_buf[: end - s]
        torch.mm(h * LOG2E, w.t(), out=y)
        y.sub_((lse[s:end] * LOG2E)[:, None])  # log2 p
        if e is None:
            # c = g p: the row factor g is applied to the [chunk, D] GEMM operands instead.
            c, row = y.exp2_(), g[s:end, None]
        else:
            p = torch.exp2(y, out=p_buf[: end - s])
            # g + e (ln2 * log2 p + H) in one fused pass, then times p
            coef = torch.addcmul((g[s:end] + e[s:end] * entropy[s:end])[:, None], y,
                                 (e[s:end] * math.log(2.0))[:, None], out=y)
            c, row = p.mul_(coef), torch.ones_like(g[s:end, None])
        grad_hidden[s:end] -= torch.mm(c, w, out=dh_buf[: end - s]) * (row / temperature)
        grad_weight.addmm_(c.t(), h * row, alpha=-1.0)
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
