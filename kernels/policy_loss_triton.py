"""Triton kernels for the policy loss: a segmented per-sequence reduction and the per-token math.

1. `_seq_stats_kernel`, one program per sequence (tokens are contiguous, so a sequence
   is the range [start, end) of the token axis): mask-token count and, for sequence
   ratios, the sum of logp - old_logp. Deterministic: no atomics.
2. `_token_kernel`, one program per BLOCK tokens: ratio, clip, KL, entropy, the
   aggregation weight, each token's weighted loss and closed-form d loss / d logp
   (and d loss / d entropy), plus per-block partial sums of the loss and metrics,
   reduced in PyTorch over the [blocks] axis (deterministic, no atomics).
Math as in policy_loss_torch.py (same clamps, same tie rules).
"""
import torch
import triton
import triton.language as tl

from lightrl.kernels import backend, policy_loss_torch

LOG_RATIO_CLAMP = policy_loss_torch.LOG_RATIO_CLAMP
KL_LOG_RATIO_CLAMP = policy_loss_torch.KL_LOG_RATIO_CLAMP

# Tokens per program and warps per triton_target (both kernels are memory-bound streams of
# [N] vectors: 1024 tokens over 4 warps is 8 per thread, 16-byte loads of fp32).
CONFIGS = {"cuda": dict(BLOCK=1024, num_warps=4), "interpret": dict(BLOCK=64)}


def _config(device):
    return CONFIGS[backend.triton_target(device)]


@triton.jit
def _seq_stats_kernel(logp_ptr, old_ptr, mask_ptr, start_ptr, end_ptr, count_ptr, lr_ptr,
                      SEQ_RATIO: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    start = tl.load(start_ptr + s)
    end = tl.load(end_ptr + s)
    cnt = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        inb = idx < end
        m = tl.load(mask_ptr + idx, mask=inb, other=0) != 0
        cnt += m.to(tl.float32)
        if SEQ_RATIO:
            lp = tl.load(logp_ptr + idx, mask=m, other=0.0)
            old = tl.load(old_ptr + idx, mask=m, other=0.0)
            acc += tl.where(m, lp - old, 0.0)
    n = tl.sum(cnt, axis=0)
    tl.store(count_ptr + s, n)
    if SEQ_RATIO:
        tl.store(lr_ptr + s, tl.sum(acc, axis=0) / tl.maximum(n, 1.0))


@triton.jit
def _token_kernel(logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, seq_ptr, ent_ptr, count_ptr, lr_ptr, scal_ptr,
                  grad_ptr, grad_ent_ptr, loss_part_ptr, parts_ptr, N,
                  lo, hi, dual_c, kl_coef, ent_coef,
                  RATIO: tl.constexpr, CISPO: tl.constexpr, DUAL: tl.constexpr, HAS_REF: tl.constexpr,
                  KL_CODE: tl.constexpr, KL_PLUS: tl.constexpr, KL_IN_LOSS: tl.constexpr, HAS_ENT: tl.constexpr,
                  ENT_GRAD: tl.constexpr, AGG: tl.constexpr, CLAMP: tl.constexpr, KL_CLAMP: tl.constexpr,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    inb = idx < N
    m = (tl.load(mask_ptr + idx, mask=inb, other=0) != 0) & inb
    mf = m.to(tl.float32)
    seq = tl.load(seq_ptr + idx, mask=inb, other=0)
    lp = tl.load(logp_ptr + idx, mask=m, other=0.0)
    adv = tl.load(adv_ptr + idx, mask=m, other=0.0)

    # Aggregation weight w_t (scalars: 1/T, 1/S', 1/(S' C)).
    if AGG == 0:
        w = tl.zeros([BLOCK], dtype=tl.float32) + tl.load(scal_ptr)
    elif AGG == 1:
        cnt = tl.load(count_ptr + seq, mask=m, other=1.0)
        w = tl.load(scal_ptr + 1) / tl.maximum(cnt, 1.0)
    elif AGG == 2:
        w = tl.zeros([BLOCK], dtype=tl.float32) + tl.load(scal_ptr + 1)
    else:
        w = tl.zeros([BLOCK], dtype=tl.float32) + tl.load(scal_ptr + 2)
    w = tl.where(m, w, 0.0)

    # Ratio and d ratio / d logp_t.
    if RATIO == 0:
        raw = tl.zeros([BLOCK], dtype=tl.float32)
    elif RATIO == 1:
        old = tl.load(old_ptr + idx, mask=m, other=0.0)
        raw = tl.where(m, lp - old, 0.0)
    else:
        raw = tl.load(lr_ptr + seq, mask=m, other=0.0)
    lr = tl.minimum(tl.maximum(raw, -CLAMP), CLAMP)
    r = tl.exp(lr)
    dr = tl.where(tl.abs(raw) <= CLAMP, r, 0.0)

    clipped = tl.minimum(tl.maximum(r, lo), hi)
    if CISPO:
        pg = -clipped * adv * lp
        grad = -clipped * adv
        clip_low = (r < lo) & (adv != 0)
        clip_high = (r > hi) & (adv != 0)
    else:
        un = r * adv
        cl = clipped * adv
        obj = tl.minimum(un, cl)
        dobj = tl.where(un <= cl, adv, 0.0)
        if DUAL:
            floor = dual_c * adv
            dual = (adv < 0) & (obj < floor)
            obj = tl.where(dual, floor, obj)
            dobj = tl.where(dual, 0.0, dobj)
        pg = -obj
        grad = -dobj * dr
        clip_low = (r < lo) & (adv < 0)
        clip_high = (r > hi) & (adv > 0)
    loss_t = pg

    kl_sum = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    if HAS_REF:
        rl = tl.load(ref_ptr + idx, mask=m, other=0.0)
        u_raw = tl.where(m, rl - lp, 0.0)
        u = tl.minimum(tl.maximum(u_raw, -KL_CLAMP), KL_CLAMP)
        if KL_CODE == 1:
            k = -u
        elif KL_CODE == 2:
            k = 0.5 * u * u
        else:
            k = (tl.exp(u) - 1.0) - u
        kl_sum = tl.sum(tl.where(m, k, 0.0), axis=0)
        if KL_IN_LOSS:
            if KL_PLUS or KL_CODE == 2:
                dk_du = u
            elif KL_CODE == 1:
                dk_du = tl.zeros([BLOCK], dtype=tl.float32) - 1.0
            else:
                dk_du = tl.exp(u) - 1.0
            dk = tl.where(tl.abs(u_raw) <= KL_CLAMP, -dk_du, 0.0)
            loss_t = loss_t + kl_coef * k
            grad = grad + kl_coef * dk

    ent_sum = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    if HAS_ENT:
        ent = tl.where(m, tl.load(ent_ptr + idx, mask=m, other=0.0), 0.0)
        ent_sum = tl.sum(ent, axis=0)
        if ENT_GRAD:
            loss_t = loss_t - ent_coef * ent
            tl.store(grad_ent_ptr + idx, -ent_coef * w, mask=inb)

    tl.store(grad_ptr + idx, w * grad, mask=inb)
    tl.store(loss_part_ptr + pid, tl.sum(w * tl.where(m, loss_t, 0.0), axis=0))
    p = parts_ptr + pid * 8
    tl.store(p + 0, tl.sum((clip_low & m).to(tl.float32), axis=0))
    tl.store(p + 1, tl.sum((clip_high & m).to(tl.float32), axis=0))
    tl.store(p + 2, tl.sum(r * mf, axis=0))
    tl.store(p + 3, tl.max(r * mf, axis=0))
    tl.store(p + 4, kl_sum)
    tl.store(p + 5, ent_sum)
    tl.store(p + 6, tl.sum(((adv != 0) & m).to(tl.float32), axis=0))
    tl.store(p + 7, tl.sum(mf, axis=0))


def seq_stats(logp, old_logp, mask_i8, seq_index, num_seqs: int, row, loss_constant):
    """Triton twin of policy_loss_torch.segment_stats (mask given as int8)."""
    dev = logp.device
    count = torch.zeros(num_seqs, dtype=torch.float32, device=dev)
    seq_lr = torch.zeros(num_seqs, dtype=torch.float32, device=dev)
    if num_seqs:
        rows = torch.bincount(seq_index, minlength=num_seqs)
        ends = torch.cumsum(rows, 0)
        starts = ends - rows
        seq_ratio = row.ratio == "sequence" and old_logp is not None
        _seq_stats_kernel[(num_seqs,)](
            logp, old_logp if seq_ratio else logp, mask_i8, starts, ends, count, seq_lr,
            SEQ_RATIO=seq_ratio, **_config(dev))
    return count, seq_lr, policy_loss_torch.aggregation_scalars(count, loss_constant)


def token_terms(logp, old_logp, ref_logp, adv, mask_i8, seq_index, entropy, count, seq_lr, scalars, row):
    """Triton twin of policy_loss_torch.token_terms (mask given as int8, inputs contiguous f32)."""
    n = logp.shape[0]
    dev = logp.device
    cfg = _config(dev)
    block = cfg["BLOCK"]
    blocks = max(1, triton.cdiv(n, block))
    grad = torch.empty(n, dtype=torch.float32, device=dev)
    ent_grad = row.entropy_coef != 0 and entropy is not None
    grad_ent = torch.empty(n, dtype=torch.float32, device=dev) if ent_grad else None
    loss_parts = torch.empty(blocks, dtype=torch.float32, device=dev)
    parts = torch.empty(blocks, 8, dtype=torch.float32, device=dev)
    ratio = 0 if (row.ratio == "none" or old_logp is None) else policy_loss_torch.RATIO_CODES[row.ratio]
    _token_kernel[(blocks,)](
        logp, old_logp if old_logp is not None else logp, ref_logp if ref_logp is not None else logp, adv,
        mask_i8, seq_index, entropy if entropy is not None else logp, count, seq_lr, scalars,
        grad, grad_ent if ent_grad else grad, loss_parts, parts, n,
        1.0 - row.eps_low, 1.0 + row.eps_high, float(row.dual_clip or 0.0), float(row.kl_coef),
        float(row.entropy_coef),
        RATIO=ratio, CISPO=row.clip_mode == "cispo", DUAL=row.dual_clip is not None, HAS_REF=ref_logp is not None,
        KL_CODE=policy_loss_torch.KL_CODES[row.kl_estimator], KL_PLUS=row.kl_estimator.endswith("+"),
        KL_IN_LOSS=row.kl_in_loss, HAS_ENT=entropy is not None, ENT_GRAD=ent_grad,
        AGG=policy_loss_torch.AGG_CODES[row.aggregate], CLAMP=LOG_RATIO_CLAMP, KL_CLAMP=KL_LOG_RATIO_CLAMP,
        **cfg)
    total = parts.sum(0)
    total[3] = parts[:, 3].max()
    return loss_parts.sum(), grad, grad_ent, total


def _prep(t):
    return None if t is None else t.detach().float().contiguous()


def policy_loss_terms(logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, loss_constant):
    """Same contract as policy_loss_torch.policy_loss_terms."""
    logp, old_logp, ref_logp, adv_tok, entropy = map(_prep, (logp, old_logp, ref_logp, adv_tok, entropy))
    mask_i8 = mask.to(torch.int8).contiguous()
    seq_index = seq_index.contiguous()
    count, seq_lr, scalars = seq_stats(logp, old_logp, mask_i8, seq_index, num_seqs, row, loss_constant)
    return token_terms(logp, old_logp, ref_logp, adv_tok, mask_i8, seq_index, entropy, count, seq_lr, scalars, row)
