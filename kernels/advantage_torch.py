"""Plain-PyTorch twin of the group-advantage kernel, and a per-group loop reference.

For each group (the completions of one prompt), with r the mapped rewards (reward_map applied
to the verifier's scores) and t = r + shaping (format / overlong / KL terms, added after the map
so pm1 does not rescale them):
  keep      see lightrl.algos.AlgoRow.keep, decided on r ("correct" = r > 0: DAPO filters groups
            by accuracy, not by shaped reward); top_k ranks by length or by t / length, ties go
            to the earlier sample
  baseline  group_mean: mean of the kept t; leave_one_out: mean of the other kept t
  scale     group_std: unbiased std of the kept t of the group; batch_std: unbiased std of
            all kept advantages of the batch (after the baseline); a std over fewer than
            two samples is 0, and row.std_eps keeps the division finite.
  advantage (t - baseline) / (scale + std_eps) on kept samples, 0 elsewhere. A group with
            a single kept sample gets advantage 0 under either baseline.

Per-token advantages (lightrl.kernels.token_advantages), for rows with row.token_advantages:
with a_s the sequence's advantage and k_t a per-token KL estimate,
  rewards       r_t = a_s on the sequence's last mask token, - kl_coef * k_t on every mask token
                (kl_per_token), 0 elsewhere (token_rewards)
  GAE           advantages and returns of r over the critic's values (0 without one), gamma and
                lam from the row (lightrl.kernels.gae); gamma = lam = 1 and V = 0 give the
                return-to-go A_t = a_s - kl_coef * sum_{i >= t, i in s} k_i (REINFORCE++)
  whiten        A_t <- (A_t - mean) / (unbiased std + std_eps), both over the mask tokens

Preference pairs (rows with row.pairs, DPO): per group the chosen sample is a correct one
(mapped score > 0) and the rejected an incorrect one, the first of each kind or the shortest
(ties: the earlier); "advantage" +1 chosen, -1 rejected, 0 and not kept elsewhere
(preference_pairs). Their coefficients (pair_coefficients): with D_s = sum over s's mask tokens
of logp - ref_logp and z = beta (D_chosen - D_rejected) per pair, the DPO loss is the mean over
the P pairs of -log sigmoid(z); d/dD_chosen = -beta sigmoid(-z) / P. Under ratio "none" and
seq_mean_token_sum over S' sequences, a sequence coefficient A_s gives d/dlogp_t = -A_s / S', so
A_s = sign_s * beta * sigmoid(-z) * S' / P.

Rollout correction (rollout_weights), with u_t = old_t - rollout_t over the mask tokens (old:
the trainer's log-probs of the sampling weights, rollout: the engine's), rho_t = exp(u_t) and
rho_s = exp(sum_{t in s} u_t) (log clamped to +-20), C = row.rollout_is_cap, c = row.rollout_is_low:
  token_truncate     w_t = min(rho_t, C)        sequence_truncate  w_t = min(rho_s, C)
  token_mask         keep_t = c <= rho_t <= C   sequence_mask      keep_t = c <= rho_s <= C
  rollout_kl = mean_t exp(u_t) - 1 - u_t (k3 of KL(pi_rollout || pi_old), sampled from the rollout).
"""
import torch

from lightrl.kernels.policy_loss_torch import LOG_RATIO_CLAMP


def mapped_rewards(rewards, row):
    r = rewards.float()
    return 2.0 * r - 1.0 if row.reward_map == "pm1" else r


def sort_key(r, lengths, row):
    """Ascending key for top-k: shortest first, or highest reward per token first."""
    lengths = lengths.float()
    return lengths if row.top_k_by == "length" else -(r / lengths.clamp(min=1.0))


def group_advantages_torch(rewards, gid, num_groups: int, row, lengths=None, shaping=None):
    """rewards [B], gid [B] int64 in [0, G), shaping [B] or None. Returns (advantages [B] f32, keep [B] bool)."""
    r = mapped_rewards(rewards, row)
    t = r if shaping is None else r + shaping.float()
    b = r.shape[0]
    dev = r.device

    def seg_sum(x):
        return torch.zeros(num_groups, dtype=x.dtype, device=dev).index_add_(0, gid, x)

    gmax = torch.full((num_groups,), -float("inf"), device=dev).scatter_reduce(0, gid, r, "amax")
    gmin = torch.full((num_groups,), float("inf"), device=dev).scatter_reduce(0, gid, r, "amin")
    if row.keep == "all":
        keep = torch.ones(b, dtype=torch.bool, device=dev)
    elif row.keep == "positives":
        keep = (r == gmax[gid]) & (r > 0)
    elif row.keep == "mixed":
        keep = (gmax != gmin)[gid]
    elif row.keep == "drop_all_wrong":
        keep = (gmax > 0)[gid]
    elif row.keep == "drop_all_correct":
        keep = (gmin <= 0)[gid]
    else:
        # Stable sorts: by key, then by group -> each group's samples in key order.
        order = torch.argsort(sort_key(t, lengths, row), stable=True)
        order = order[torch.argsort(gid[order], stable=True)]
        sizes = seg_sum(torch.ones(b, device=dev))
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.empty(b, device=dev)
        rank[order] = torch.arange(b, device=dev, dtype=torch.float32) - starts[gid[order]]
        keep = rank < row.top_k
    kf = keep.float()
    n = seg_sum(kf)
    total = seg_sum(t * kf)
    mean = total / n.clamp(min=1.0)
    if row.baseline == "none":
        a = t
    elif row.baseline == "group_mean":
        a = t - mean[gid]
    else:
        others = (n[gid] - 1.0).clamp(min=1.0)
        a = torch.where(n[gid] > 1, t - (total[gid] - t) / others, 0.0)
    if row.scale == "group_std":
        var = seg_sum((t - mean[gid]) ** 2 * kf) / (n - 1.0).clamp(min=1.0)
        a = a / (var.sqrt()[gid] + row.std_eps)
    a = torch.where(keep, a, 0.0)
    if row.scale == "batch_std":
        a = a / (batch_std(a, keep) + row.std_eps)
    return a, keep


def batch_std(a, keep):
    """Unbiased std of a over the kept entries (0 for fewer than two)."""
    kf = keep.float()
    nk = kf.sum()
    mean = (a * kf).sum() / nk.clamp(min=1.0)
    return (((a - mean) ** 2 * kf).sum() / (nk - 1.0).clamp(min=1.0)).sqrt()


def reference_group_advantages(rewards, gid, num_groups: int, row, lengths=None, shaping=None):
    """The same, one group at a time in plain Python (ground truth for tests)."""
    r = mapped_rewards(rewards, row)
    t = r if shaping is None else r + shaping.float()
    adv = torch.zeros_like(r)
    keep = torch.zeros(r.shape, dtype=torch.bool, device=r.device)
    for g in range(num_groups):
        idx = (gid == g).nonzero().flatten().tolist()
        vals = [float(r[i]) for i in idx]
        if not idx:
            continue
        if row.keep == "all":
            k = [True] * len(idx)
        elif row.keep == "positives":
            k = [v == max(vals) and v > 0 for v in vals]
        elif row.keep == "mixed":
            k = [max(vals) != min(vals)] * len(idx)
        elif row.keep == "drop_all_wrong":
            k = [any(v > 0 for v in vals)] * len(idx)
        elif row.keep == "drop_all_correct":
            k = [not all(v > 0 for v in vals)] * len(idx)
        else:
            keys = [float(x) for x in sort_key(t[idx], lengths[idx], row)]
            ranked = sorted(range(len(idx)), key=lambda j: (keys[j], j))
            k = [ranked.index(j) < row.top_k for j in range(len(idx))]
        totals = [float(t[i]) for i in idx]
        kept = [v for v, kk in zip(totals, k) if kk]
        n = len(kept)
        mean = sum(kept) / n if n else 0.0
        std = (sum((v - mean) ** 2 for v in kept) / (n - 1)) ** 0.5 if n > 1 else 0.0
        for j, i in enumerate(idx):
            if not k[j]:
                continue
            keep[i] = True
            v = totals[j]
            if row.baseline == "none":
                a = v
            elif row.baseline == "group_mean":
                a = v - mean
            else:
                a = v - (sum(kept) - v) / (n - 1) if n > 1 else 0.0
            if row.scale == "group_std":
                a = a / (std + row.std_eps)
            adv[i] = a
    if row.scale == "batch_std":
        adv = adv / (batch_std(adv, keep) + row.std_eps)
    return adv, keep


def token_rewards(advantages, seq_index, mask, row, kl=None):
    """Per-token rewards [N] f32: each sequence's advantage on its last mask token, and with
    row.kl_per_token -kl_coef * kl on every mask token; 0 outside the mask."""
    n = seq_index.shape[0]
    pos = torch.arange(n, device=seq_index.device)
    last = torch.full((advantages.numel(),), -1, dtype=torch.long, device=seq_index.device).scatter_reduce(
        0, seq_index, torch.where(mask, pos, -1), "amax")
    r = torch.zeros(n, dtype=torch.float32, device=seq_index.device)
    has = last >= 0
    r[last[has]] = advantages.float()[has]
    if row.kl_per_token and kl is not None and row.kl_coef > 0:
        r = r - row.kl_coef * torch.where(mask, kl.float(), 0.0)
    return torch.where(mask, r, 0.0)


def whiten(a, mask, eps: float, reduce=None):
    """(a - mean) / (unbiased std + eps) over the mask entries of a [N] f32; 0 elsewhere. reduce: sums
    a tensor over every process (torchrun), so that mean and std are the whole batch's; None: this one."""
    reduce = reduce or (lambda t: t)
    mf = mask.float()
    n, total = reduce(torch.stack([mf.sum(), (a * mf).sum()]))
    mean = total / n.clamp(min=1.0)
    std = (reduce(((a - mean) ** 2 * mf).sum()) / (n - 1.0).clamp(min=1.0)).sqrt()
    return torch.where(mask, (a - mean) / (std + eps), 0.0)


def preference_pairs(rewards, gid, num_groups: int, row, lengths=None):
    """(advantages [B] f32: +1 chosen, -1 rejected, else 0; keep [B] bool: the paired samples)."""
    r = mapped_rewards(rewards, row)
    b, dev = r.shape[0], r.device
    idx = torch.arange(b, device=dev)
    # Lexicographic key (length, index) or index alone, as one int64: the group's minimum wins.
    key = idx if row.pairs == "first" else lengths.long() * b + idx
    big = torch.iinfo(torch.long).max

    def pick(which):
        best = torch.full((num_groups,), big, dtype=torch.long, device=dev)
        best = best.scatter_reduce(0, gid, torch.where(which, key, big), "amin")
        return best[gid] == key

    chosen, rejected = pick(r > 0), pick(r <= 0)
    paired = torch.zeros(num_groups, dtype=torch.long, device=dev).index_add_(
        0, gid, chosen.long() + rejected.long()) == 2
    chosen, rejected = chosen & paired[gid], rejected & paired[gid]
    return chosen.float() - rejected.float(), chosen | rejected


def pair_coefficients(logp, ref_logp, mask, seq_index, sign, group, beta: float, seqs: int, pairs=None):
    """(coefficients [S] f32, metrics) for sequences of which each group holds one chosen (sign +1) and
    one rejected (sign -1). logp, ref_logp [N], mask [N] bool, seq_index [N] int64 in [0, S), sign [S],
    group [S] int64, seqs: S' of the loss (its sequences with a mask token), pairs: the loss' pair
    count (None: these groups')."""
    num_seqs = sign.numel()
    d = torch.zeros(num_seqs, dtype=torch.float64, device=logp.device).index_add_(
        0, seq_index, torch.where(mask, logp.double() - ref_logp.double(), 0.0))
    _, pair = torch.unique(group, return_inverse=True)
    num_pairs = int(pair.max()) + 1 if num_seqs else 0
    margin = torch.zeros(num_pairs, dtype=torch.float64, device=logp.device).index_add_(0, pair, sign.double() * d)
    z = beta * margin
    coef = sign.double() * beta * torch.sigmoid(-z)[pair] * (seqs / max(num_pairs if pairs is None else pairs, 1))
    metrics = {"dpo_loss": float(torch.nn.functional.softplus(-z).mean()) if num_pairs else 0.0,
               "dpo_accuracy": float((margin > 0).double().mean()) if num_pairs else 0.0,
               "dpo_margin": float(margin.mean()) if num_pairs else 0.0, "pairs": num_pairs}
    return coef.float(), metrics


def rollout_weights(old_logp, rollout_logp, mask, seq_index, row):
    """(weights [N] f32, keep [N] bool, metrics): see the module docstring."""
    u = torch.where(mask, old_logp.float() - rollout_logp.float(), 0.0)
    n_seqs = int(seq_index[-1]) + 1 if seq_index.numel() else 0
    level, kind = row.rollout_is.split("_")
    if level == "token":
        log_rho = u
    else:
        log_rho = torch.zeros(n_seqs, device=u.device).index_add_(0, seq_index, u)[seq_index]
    rho = torch.exp(log_rho.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    weight, keep = torch.ones_like(rho), torch.ones_like(mask)
    if kind == "truncate":
        weight = torch.clamp(rho, max=row.rollout_is_cap)
        changed = rho > row.rollout_is_cap
    else:
        keep = (rho >= row.rollout_is_low) & (rho <= row.rollout_is_cap)
        changed = torch.zeros_like(mask)
    mf = mask.float()
    tokens = mf.sum().clamp(min=1.0)
    metrics = {"rollout_kl": float(((torch.expm1(u) - u) * mf).sum() / tokens),
               "rollout_is_clipped_frac": float((changed & mask).float().sum() / tokens),
               "rollout_is_masked_frac": float((~keep & mask).float().sum() / tokens)}
    return weight, keep, metrics
