"""Plain-PyTorch fused policy loss for token-level rows: three GEMMs, gradients finished in the forward.

When d loss / d logp_t depends only on token t (ratio "none" or "token": the
aggregation weights come from mask and seq_index alone), each chunk of tokens can be
finished at once: logits (GEMM 1), log-softmax, the loss terms and their closed-form
gradient, then d hidden (GEMM 2) and the chunk's share of d weight (GEMM 3), while the
chunk's logits are still in cache. The backward only scales the stored gradients by
grad_output: no second pass over the vocabulary, 3 GEMMs instead of 4. Sequence-level
rows (GSPO) need every token's log-prob before any gradient and take the generic path.

Notation as in logprobs_torch.py: z = hidden @ W.T / T, p = softmax(z), logp = log p_target,
H = -sum p log p; dL/dz_j = g (onehot_j - p_j) - e p_j (log p_j + H) for g = dL/dlogp,
e = dL/dH; d hidden = dL/dz @ W / T, d W = dL/dz.T @ hidden / T.
"""
import torch

from lightrl.kernels import policy_loss_torch
from lightrl.kernels.logprobs_torch import IGNORE_INDEX

# Rows per chunk: one [chunk, V] fp32 buffer of 64 MiB (two with entropy); CPU BLAS loses
# speed on the d-weight GEMM (inner size = chunk) much below ~500 rows.
_CHUNK_ELEMENTS = 1 << 24


def fused_token_level(hidden, weight, targets, old_logp, ref_logp, adv_tok, mask, seq_index, num_seqs, row,
                      temperature: float, loss_constant, want_grad_weight: bool = True, entropy_cutoff=None):
    """Loss, metric partials and the finished gradients for a token-level row.

    hidden [N, D], weight [V, D] (fp32/bf16/fp16), targets [N] int64 (-100 = none),
    other per-token inputs [N] as in policy_loss; entropy_cutoff: the batch's cutoff, required
    when row.entropy_top_frac < 1 (each chunk is finished before the next is seen). Returns
    (loss 0-d f32, parts [8] f32, grad_hidden [N, D] hidden.dtype, grad_weight [V, D] weight.dtype or None).
    """
    if row.ratio == "sequence":
        raise ValueError("fused_token_level handles token-level rows only (row.ratio is 'sequence')")
    n, v = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    w = weight if weight.dtype == torch.float32 else weight.float()
    inv_t = 1.0 / temperature
    if row.selects_by_entropy and entropy_cutoff is None:
        raise ValueError(f"row has entropy_top_frac={row.entropy_top_frac}: pass entropy_cutoff (the batch's)")
    want_entropy = row.entropy_coef != 0 or row.selects_by_entropy
    count, seq_lr, scalars = policy_loss_torch.segment_stats(None, None, mask, seq_index, num_seqs, row,
                                                             loss_constant)
    valid = targets != IGNORE_INDEX
    safe_t = torch.where(valid, targets, 0)
    grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=dev)
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if want_grad_weight else None
    loss = torch.zeros((), dtype=torch.float32, device=dev)
    parts = torch.zeros(8, dtype=torch.float32, device=dev)
    rows = max(16, min(n, _CHUNK_ELEMENTS // max(v, 1)))
    z_buf = torch.empty(rows, v, dtype=torch.float32, device=dev)
    p_buf = torch.empty(rows, v, dtype=torch.float32, device=dev) if want_entropy else None
    for s in range(0, n, rows):
        e = min(s + rows, n)
        h = hidden[s:e].float() * inv_t
        z = z_buf[: e - s]
        torch.mm(h, w.t(), out=z)                                   # GEMM 1
        z.sub_(z.amax(dim=1, keepdim=True))                         # u = z - max
        ok = valid[s:e]
        rows_idx = torch.arange(e - s, device=dev)
        u_target = z[rows_idx, safe_t[s:e]]
        if want_entropy:
            q = torch.exp(z, out=p_buf[: e - s])                    # q = e^u, z keeps u
        else:
            q = z.exp_()                                            # one buffer: u is not needed again
        sum_q = q.sum(dim=1)
        log_sum = sum_q.log()
        logp = torch.where(ok, u_target - log_sum, 0.0)
        ent = None
        if want_entropy:
            # H = log sum e^u - sum(e^u u) / sum e^u
            ent = torch.where(ok, log_sum - torch.einsum("ij,ij->i", q, z) / sum_q, 0.0)
        sl = slice(s, e)
        adv_c = torch.where(ent >= entropy_cutoff, adv_tok[sl], 0.0) if row.selects_by_entropy else adv_tok[sl]
        loss_c, g, g_ent, parts_c = policy_loss_torch.token_terms(
            logp, None if old_logp is None else old_logp[sl], None if ref_logp is None else ref_logp[sl],
            adv_c, mask[sl], seq_index[sl], ent, count, seq_lr, scalars, row)
        loss += loss_c
        parts[:3] += parts_c[:3]
        parts[3] = torch.maximum(parts[3], parts_c[3])
        parts[4:] += parts_c[4:]
        g = torch.where(ok, g, 0.0)
        if g_ent is None:
            dz = q.mul_((-g / sum_q)[:, None])                       # -g p, p = q / sum q
        else:
            ge = torch.where(ok, g_ent, 0.0)
            # -p (g + e (log p + H)), log p = u - log sum q
            z.sub_(log_sum[:, None]).add_(ent[:, None]).mul_(ge[:, None]).add_(g[:, None])
            dz = q.mul_(z).mul_((-1.0 / sum_q)[:, None])
        dz[rows_idx, safe_t[s:e]] += g                              # + g at the target
        torch.mm(dz, w, out=grad_hidden[s:e])                       # GEMM 2
        if want_grad_weight:
            grad_weight.addmm_(dz.t(), h)                           # GEMM 3 (h carries 1/T)
    grad_hidden.mul_(inv_t)
    return (loss, parts, grad_hidden.to(hidden.dtype),
            grad_weight.to(weight.dtype) if grad_weight is not None else None)
