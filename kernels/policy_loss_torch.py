"""Plain-PyTorch twin of the policy-loss kernels, and the autograd reference.

The loss of a row (lightrl.algos.AlgoRow) is a weighted sum over mask tokens t:

    loss = sum_t w_t * l_t,     l_t = pg_t + kl_coef * k_t [if KL in loss] - entropy_coef * H_t

where the aggregation weight w_t depends only on the mask and the sequence index
(token_mean: 1/T; seq_mean_token_mean: 1/(S' T_s); seq_mean_token_sum: 1/S';
token_sum_norm: 1/(S' C); T = mask tokens, T_s = mask tokens of sequence s,
S' = sequences with T_s > 0, C = loss_constant). So d loss / d logp_t is known in
closed form once the per-sequence stats are known: `token_terms` returns it with
the loss, and the backward only scales it by grad_output.

Ratio r_t (its log is clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]; outside the
clamp r is constant and carries no gradient):
    "none"      r = exp(logp - sg(logp)) = 1, dr/dlogp = 1 (also "token"/"sequence" when old_logp is None)
    "token"     r = exp(logp_t - old_t)
    "sequence"  r = s_i = exp(mean_{t in i} (logp_t - old_t)) with token-level gradient
                dr_t/dlogp_t = s_i (GSPO-token: r_t = sg(s_i) exp(logp_t - sg(logp_t))); with
                weights constant within a sequence this is exactly GSPO's gradient.
Policy term with lo = 1 - eps_low, hi = 1 + eps_high:
    "ppo"       pg = -min(r A, clip(r, lo, hi) A), and for A < 0 with dual_clip c: pg = -max(that, c A)
    "cispo"     pg = -sg(clip(r, lo, hi)) A logp
KL estimators of KL(pi || ref) with u = clamp(ref - logp, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP):
    k1 = -u,  k2 = u^2 / 2,  k3 = exp(u) - 1 - u;  "kN+" = value of kN, gradient of k2.
"""
import torch

# |log ratio| bound before exp: exp(20) = 4.9e8 keeps products of ratios, advantages and
# weights finite in fp32, and a token that far off-policy is clipped anyway.
LOG_RATIO_CLAMP = 20.0
KL_LOG_RATIO_CLAMP = 20.0

RATIO_CODES = {"none": 0, "token": 1, "sequence": 2}
AGG_CODES = {"token_mean": 0, "seq_mean_token_mean": 1, "seq_mean_token_sum": 2, "token_sum_norm": 3}
KL_CODES = {"k1": 1, "k2": 2, "k3": 3, "k1+": 1, "k2+": 2, "k3+": 3}
# Order of the partial sums every implementation returns ([..., 8] f32).
PARTS = ("clip_low", "clip_high", "ratio_sum", "ratio_max", "kl_sum", "entropy_sum", "kept", "tokens")


def segment_stats(logp, old_logp, mask, seq_index, num_seqs: int, row, loss_constant):
    """Per-sequence reductions and the aggregation scalars.

    Returns count [S] f32 (mask tokens per sequence), seq_log_ratio [S] f32 (unclamped
    mean of logp - old_logp over mask tokens; zeros unless row.ratio == "sequence" and
    old_logp is given) and scalars [3] f32 = (1/T, 1/S', 1/(S' C)), each with its
    denominator floored at 1 so empty batches give a zero loss, not NaN.
    """
    m = mask.float()
    count = torch.zeros(num_seqs, dtype=torch.float32, device=mask.device).index_add_(0, seq_index, m)
    seq_lr = torch.zeros(num_seqs, dtype=torch.float32, device=mask.device)
    if row.ratio == "sequence" and old_logp is not None:
        diff = torch.where(mask, logp.detach().float() - old_logp.float(), 0.0)
        seq_lr.index_add_(0, seq_index, diff).div_(count.clamp(min=1.0))
    return count, seq_lr, aggregation_scalars(count, loss_constant)


def aggregation_scalars(count, loss_constant):
    """(1/T, 1/S', 1/(S' C)) from per-sequence mask counts; C defaults to max_s T_s."""
    tokens = count.sum().clamp(min=1.0)
    seqs = (count > 0).sum().float().clamp(min=1.0)
    c = count.max().clamp(min=1.0) if loss_constant is None and count.numel() else None
    if c is None:
        c = torch.tensor(float(loss_constant if loss_constant is not None else 1.0), device=count.device)
    return torch.stack([1.0 / tokens, 1.0 / seqs, 1.0 / (seqs * c)]).float()


def kl_terms(logp, ref_logp, mask, estimator: str):
    """Per-token estimator of KL(pi || ref) and its derivative w.r.t. logp (the one definition,
    used by the loss and by the training loop's KL-in-reward).

    logp, ref_logp [n] (any float dtype), mask [n] bool, estimator one of KL_CODES.
    Returns (k [n] f32, dk_dlogp [n] f32), both 0 outside the mask. With
    u = clamp(ref - logp, -KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP): k1 = -u, k2 = u^2 / 2,
    k3 = exp(u) - 1 - u; "kN+" has kN's value and k2's derivative; outside the clamp the
    derivative is 0.
    """
    code = KL_CODES[estimator]
    u_raw = torch.where(mask, ref_logp.float() - logp.detach().float(), 0.0)
    u = u_raw.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    k = -u if code == 1 else (0.5 * u * u if code == 2 else torch.expm1(u) - u)
    dk_du = u if (estimator.endswith("+") or code == 2) else (-torch.ones_like(u) if code == 1 else torch.expm1(u))
    dk = torch.where(mask & (u_raw.abs() <= KL_LOG_RATIO_CLAMP), -dk_du, 0.0)  # du/dlogp = -1
    return torch.where(mask, k, 0.0), dk


def token_terms(logp, old_logp, ref_logp, adv, mask, seq_index, entropy, count, seq_lr, scalars, row):
    """Per-token math for a contiguous slice of tokens.

    logp, old_logp, ref_logp, adv, entropy: [n] (old/ref/entropy may be None; adv already
    gathered per token); mask [n] bool; seq_index [n] int64; count, seq_lr [S]; scalars [3].
    Returns (loss_sum 0-d f32, grad_logp [n] f32, grad_entropy [n] f32 or None, parts [8] f32),
    parts as in PARTS, summed over the slice's mask tokens (ratio_max: max, 0 if none).
    """
    logp = logp.detach().float()
    adv = adv.float()
    zero = torch.zeros_like(logp)
    if row.aggregate == "token_mean":
        w = scalars[0].expand_as(logp)
    elif row.aggregate == "seq_mean_token_mean":
        w = scalars[1] / count[seq_index].clamp(min=1.0)
    elif row.aggregate == "seq_mean_token_sum":
        w = scalars[1].expand_as(logp)
    else:
        w = scalars[2].expand_as(logp)
    w = torch.where(mask, w, 0.0)

    if row.ratio == "none" or old_logp is None:
        raw = zero
    elif row.ratio == "token":
        raw = torch.where(mask, logp - old_logp.float(), 0.0)
    else:
        raw = seq_lr[seq_index]
    lr = raw.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    r = torch.exp(lr)
    dr = torch.where(raw.abs() <= LOG_RATIO_CLAMP, r, 0.0)  # d r / d logp_t

    lo, hi = 1.0 - row.eps_low, 1.0 + row.eps_high
    clipped = r.clamp(lo, hi)
    if row.clip_mode == "ppo":
        unclipped_a, clipped_a = r * adv, clipped * adv
        obj = torch.minimum(unclipped_a, clipped_a)
        dobj = torch.where(unclipped_a <= clipped_a, adv, 0.0)
        if row.dual_clip is not None:
            floor = row.dual_clip * adv
            dual = (adv < 0) & (obj < floor)
            obj = torch.where(dual, floor, obj)
            dobj = torch.where(dual, 0.0, dobj)
        pg, dpg = -obj, -dobj * dr
        clip_low = (r < lo) & (adv < 0)
        clip_high = (r > hi) & (adv > 0)
    else:
        safe_logp = torch.where(mask, logp, 0.0)
        pg, dpg = -clipped * adv * safe_logp, -clipped * adv
        clip_low = (r < lo) & (adv != 0)
        clip_high = (r > hi) & (adv != 0)

    loss_t, grad_t = pg, dpg
    kl_sum = zero.sum()
    if ref_logp is not None:
        k, dk = kl_terms(logp, ref_logp, mask, row.kl_estimator)
        kl_sum = k.sum()
        if row.kl_in_loss:
            loss_t = loss_t + row.kl_coef * k
            grad_t = grad_t + row.kl_coef * dk
    grad_ent = None
    ent_sum = zero.sum()
    if entropy is not None:
        ent = torch.where(mask, entropy.float(), 0.0)
        ent_sum = ent.sum()
        if row.entropy_coef != 0:
            loss_t = loss_t - row.entropy_coef * ent
            grad_ent = -row.entropy_coef * w

    loss_sum = (w * torch.where(mask, loss_t, 0.0)).sum()
    grad_logp = w * grad_t
    mf = mask.float()
    parts = torch.stack([
        (clip_low & mask).float().sum(), (clip_high & mask).float().sum(), (r * mf).sum(),
        (r * mf).max() if r.numel() else zero.sum(), kl_sum, ent_sum, ((adv != 0) & mask).float().sum(), mf.sum(),
    ])
    return loss_sum, grad_logp, grad_ent, parts


def finish_metrics(parts):
    """Metric dict (0-d f32 tensors, detached) from summed partials [8]."""
    n = parts[7].clamp(min=1.0)
    return {
        "clip_frac_low": parts[0] / n, "clip_frac_high": parts[1] / n,
        "ratio_mean": parts[2] / n, "ratio_max": parts[3],
        "kl_mean": parts[4] / n, "entropy_mean": parts[5] / n, "kept_frac": parts[6] / n,
    }


def policy_loss_terms(logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, loss_constant):
    """Whole-batch loss, analytic gradients and metric partials (the torch backend).

    Same arguments as token_terms plus num_seqs; returns
    (loss 0-d f32, grad_logp [N] f32, grad_entropy [N] f32 or None, parts [8] f32).
    """
    count, seq_lr, scalars = segment_stats(logp, old_logp, mask, seq_index, num_seqs, row, loss_constant)
    return token_terms(logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, count, seq_lr, scalars, row)


def reference_policy_loss(logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, loss_constant):
    """Ground truth: the formulas written out with autograd (GSPO in its GSPO-token form).

    Returns (loss 0-d f32 with autograd graph to logp / entropy, metrics dict).
    """
    m = mask.float()
    logp32 = logp.float()
    count = torch.zeros(num_seqs, device=logp.device).index_add_(0, seq_index, m)

    def seq_sum(x):
        return torch.zeros(num_seqs, device=logp.device, dtype=x.dtype).index_add(0, seq_index, x * m)

    if row.ratio == "none" or old_logp is None:
        log_ratio = logp32 - logp32.detach()
    elif row.ratio == "token":
        log_ratio = torch.where(mask, logp32 - old_logp.float(), 0.0)
        log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    else:
        # GSPO-token: r_t = sg(s_i) * exp(logp_t - sg(logp_t)), s_i the clamped sequence ratio.
        seq_log_ratio = (seq_sum(logp32 - old_logp.float()) / count.clamp(min=1.0)).detach()[seq_index]
        inside = seq_log_ratio.abs() <= LOG_RATIO_CLAMP
        log_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) + torch.where(
            inside, logp32 - logp32.detach(), 0.0)
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - row.eps_low, 1.0 + row.eps_high
    adv = adv_tok.float()
    if row.clip_mode == "ppo":
        obj = torch.minimum(ratio * adv, ratio.clamp(lo, hi) * adv)
        if row.dual_clip is not None:
            obj = torch.where(adv < 0, torch.maximum(obj, row.dual_clip * adv), obj)
        per_token = -obj
        clip_low, clip_high = (ratio < lo) & (adv < 0), (ratio > hi) & (adv > 0)
    else:
        per_token = -ratio.clamp(lo, hi).detach() * adv * torch.where(mask, logp32, 0.0)
        clip_low, clip_high = (ratio < lo) & (adv != 0), (ratio > hi) & (adv != 0)
    kl_mean = torch.zeros((), device=logp.device)
    if ref_logp is not None:
        u = torch.where(mask, ref_logp.float() - logp32, 0.0).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        k1, k2, k3 = -u, 0.5 * u * u, torch.exp(u) - 1 - u
        est = {"k1": k1, "k2": k2, "k3": k3}[row.kl_estimator.rstrip("+")]
        if row.kl_estimator.endswith("+"):
            est = k2 + (est - k2).detach()
        kl_mean = (est.detach() * m).sum() / m.sum().clamp(min=1.0)
        if row.kl_in_loss:
            per_token = per_token + row.kl_coef * est
    ent_mean = torch.zeros((), device=logp.device)
    if entropy is not None:
        ent_mean = (entropy.detach().float() * m).sum() / m.sum().clamp(min=1.0)
        if row.entropy_coef != 0:
            per_token = per_token - row.entropy_coef * entropy.float()
    per_token = torch.where(mask, per_token, 0.0)
    seqs = (count > 0).sum().clamp(min=1)
    if row.aggregate == "token_mean":
        loss = per_token.sum() / m.sum().clamp(min=1.0)
    elif row.aggregate == "seq_mean_token_mean":
        loss = (seq_sum(per_token) / count.clamp(min=1.0)).sum() / seqs
    elif row.aggregate == "seq_mean_token_sum":
        loss = per_token.sum() / seqs
    else:
        c = loss_constant if loss_constant is not None else count.max().clamp(min=1.0)
        loss = per_token.sum() / (seqs * c)
    n = m.sum().clamp(min=1.0)
    r = ratio.detach()
    metrics = {
        "clip_frac_low": (clip_low.float() * m).sum() / n, "clip_frac_high": (clip_high.float() * m).sum() / n,
        "ratio_mean": (r * m).sum() / n, "ratio_max": (r * m).max() if r.numel() else r.sum(),
        "kl_mean": kl_mean, "entropy_mean": ent_mean, "kept_frac": ((adv != 0).float() * m).sum() / n,
    }
    return loss, metrics
