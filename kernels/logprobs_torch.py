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

IGNORE_INDEX = -100

# Rows per chunk: [chunk, V] fp32 buffers stay a few tens of MB at V = 32k, small
# enough to be cheap to keep, large enough for the BLAS to run at full speed.
_CHUNK_ELEMENTS = 1 << 23


def _chunk_rows(n: int, v: int) -> int:
    return max(16, min(n, _CHUNK_ELEMENTS // max(v, 1)))


def _as_fp32(t: torch.Tensor) -> torch.Tensor:
    # Low-precision inputs are upcast so that logits and the softmax are exact fp32;
    # the copy is [*, D], never [N, V].
    return t if t.dtype == torch.float32 else t.float()


def logprobs_forward(hidden, weight, targets, temperature: float, want_entropy: bool):
    """Chunked forward. hidden [N, D], weight [V, D] (same dtype), targets [N] int64.

    Returns (logp [N] f32, entropy [N] f32 or None, lse [N] f32), where lse is the
    log-sum-exp of logits / temperature. Rows whose target is -100 get logp 0 and
    entropy 0 (lse is still computed; the backward ignores those rows).
    """
    n, v = hidden.shape[0], weight.shape[0]
    w = _as_fp32(weight)
    inv_t = 1.0 / temperature
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty(n, dtype=torch.float32, device=hidden.device) if want_entropy else None
    rows = _chunk_rows(n, v)
    z_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        z = z_buf[: e - s]
        torch.mm(_as_fp32(hidden[s:e]) * inv_t, w.t(), out=z)
        m = z.amax(dim=1, keepdim=True)
        z.sub_(m)  # z - max: exp cannot overflow
        p = torch.exp(z)
        sum_p = p.sum(dim=1)
        lse[s:e] = m.squeeze(1) + sum_p.log()
        if want_entropy:
            # H = log(sum e^u) - sum(e^u u) / sum(e^u), with u = z - max (shift-invariant).
            entropy[s:e] = sum_p.log() - (p * z).sum(dim=1) / sum_p
    valid = targets != IGNORE_INDEX
    safe_t = torch.where(valid, targets, 0)
    z_target = (_as_fp32(hidden) * w[safe_t]).sum(dim=1) * inv_t
    logp = torch.where(valid, z_target - lse, 0.0)
    if want_entropy:
        entropy = torch.where(valid, entropy, 0.0)
    return logp, entropy, lse


def logprobs_backward(hidden, weight, targets, temperature: float, lse, entropy, grad_logp, grad_entropy):
    """Chunked backward: recompute each chunk of logits, form dL/dz, run the two GEMMs.

    With p = softmax(z), z = hidden @ W.T / T and per-row upstream gradients
    g = grad_logp, e = grad_entropy:
        d logp / d z_j = onehot(target)_j - p_j
        d H / d z_j    = -p_j (z_j - sum_k p_k z_k) = -p_j (z_j - lse + H)
        dL/dz_j = g (onehot_j - p_j) - e p_j (z_j - lse + H)
    and since z carries the 1/T factor:
        grad_hidden = (dL/dz) @ W / T,   grad_weight = (dL/dz).T @ hidden / T.
    Rows whose target is -100 contribute nothing. lse [N] f32 comes from
    logprobs_forward; entropy [N] f32 is needed only when grad_entropy is given.
    Returns (grad_hidden [N, D] hidden.dtype, grad_weight [V, D] weight.dtype).
    """
    n, v = hidden.shape[0], weight.shape[0]
    w = _as_fp32(weight)
    inv_t = 1.0 / temperature
    valid = targets != IGNORE_INDEX
    g = torch.where(valid, grad_logp.float(), 0.0)
    e = torch.where(valid, grad_entropy.float(), 0.0) if grad_entropy is not None else None
    safe_t = torch.where(valid, targets, 0)
    grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    rows = _chunk_rows(n, v)
    z_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device)
    p_buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device)
    for s in range(0, n, rows):
        end = min(s + rows, n)
        h = _as_fp32(hidden[s:end]) * inv_t
        z, p = z_buf[: end - s], p_buf[: end - s]
        torch.mm(h, w.t(), out=z)
        z.sub_(lse[s:end, None])  # z - lse = log p
        torch.exp(z, out=p)
        gc = g[s:end, None]
        if e is None:
            p.mul_(-gc)
        else:
            # dL/dz = -p (g + e (log p + H)), then + g at the target below.
            z.add_(entropy[s:end, None]).mul_(e[s:end, None]).add_(gc)
            p.mul_(z).neg_()
        rows_idx = torch.arange(end - s, device=hidden.device)
        p[rows_idx, safe_t[s:end]] += g[s:end]
        torch.mm(p, w, out=grad_hidden[s:end])
        grad_weight.addmm_(p.t(), h)
    grad_hidden.mul_(inv_t)
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
