"""group_advantages: per-sequence advantages and keep mask of an algorithm row from group rewards."""
import torch

from lightrl.kernels import advantage_torch
from lightrl.kernels.backend import resolve_backend
from lightrl.kernels.gae import gae


def group_advantages(rewards, group, row, *, lengths=None, shaping=None, backend="auto"):
    """Advantages of ``row`` (lightrl.algos.AlgoRow) for rewards of grouped samples.

    rewards [B] float; group: an int group size (samples g*size .. (g+1)*size-1 form
    group g; B must be a multiple) or an int64 index [B] (any ids, any order);
    lengths [B] (completion lengths, needed when row.keep == "top_k").
    rewards are the verifier's scores: row.reward_map applies to them and the keep filters
    decide on them. shaping [B] (format, overlong and KL-in-reward terms) is added after
    the map, so pm1 does not double it, and enters baseline, scale and top_k's reward per token.
    Returns (advantages [B] f32, keep [B] bool): advantages are computed over the kept
    samples and are 0 elsewhere (rows with row.pairs: +1 chosen, -1 rejected, keep = paired);
    never NaN (a group of one, equal rewards and a fully filtered batch give zeros). Math in advantage_torch.py.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B], got {tuple(rewards.shape)}")
    b, dev = rewards.shape[0], rewards.device
    if isinstance(group, int):
        if group < 1 or b % group:
            raise ValueError(f"group size {group} must be >= 1 and divide the number of rewards B={b}")
        gid = torch.arange(b, device=dev) // group
        num_groups = b // group
    else:
        if group.shape != (b,) or group.dtype != torch.int64:
            raise ValueError(f"group index must be int64 [B={b}], got {group.dtype} {tuple(group.shape)}")
        ids, gid = torch.unique(group, return_inverse=True)
        num_groups = ids.numel()
    if shaping is not None and shaping.shape != (b,):
        raise ValueError(f"shaping must be [B={b}] like rewards, got {tuple(shaping.shape)}")
    if row.keep == "top_k":
        if lengths is None or lengths.shape != (b,):
            raise ValueError(f"row.keep='top_k' (by {row.top_k_by}) needs lengths [B={b}]")
    name = resolve_backend(backend, dev)
    if row.pairwise:  # a min per group and a comparison: one PyTorch path serves every backend
        if row.pairs == "shortest" and (lengths is None or lengths.shape != (b,)):
            raise ValueError(f"row.pairs='shortest' needs lengths [B={b}]")
        return advantage_torch.preference_pairs(rewards, gid, num_groups, row, lengths)
    if name == "reference":
        return advantage_torch.reference_group_advantages(rewards, gid, num_groups, row, lengths, shaping)
    if name == "triton":
        from lightrl.kernels import advantage_triton  # imported late: only where Triton can run
        return advantage_triton.group_advantages_triton(rewards, gid, num_groups, row, lengths, shaping)
    return advantage_torch.group_advantages_torch(rewards, gid, num_groups, row, lengths, shaping)


def token_advantages(advantages, seq_index, mask, row, *, kl=None, values=None, backend="auto", reduce=None):
    """Per-token advantages and value targets of ``row`` from per-sequence advantages, by GAE.

    Each sequence's advantage is the reward of its last mask token; with row.kl_per_token every
    mask token also gets -kl_coef * kl; gae(row.gae_gamma, row.gae_lambda) over values (the
    critic's, or 0) turns these rewards into advantages and returns; row.whiten then whitens the
    advantages over the mask tokens. With gamma = lam = 1 and no critic this is the return-to-go
    A_t = a_s - kl_coef * sum_{i >= t} k_i (REINFORCE++).
    advantages [S] f32 (group_advantages'), seq_index [N] int64 non-decreasing in [0, S), mask [N]
    bool, kl [N] f32 (needed when row.kl_per_token and kl_coef > 0), values [N] f32 or None,
    reduce: sums a tensor over every process (torchrun), so that whitening is over the whole batch.
    Returns (advantages [N] f32, returns [N] f32), 0 outside the mask. Math in advantage_torch.py.
    """
    n = seq_index.shape[0]
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be [S] per sequence, got {tuple(advantages.shape)}")
    if mask.shape != (n,) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [N={n}] like seq_index, got {mask.dtype} {tuple(mask.shape)}")
    if n and int(seq_index.max()) >= advantages.numel():
        raise ValueError(f"seq_index reaches {int(seq_index.max())} but advantages has {advantages.numel()} entries")
    if row.kl_per_token and row.kl_coef > 0 and (kl is None or kl.shape != (n,)):
        raise ValueError(f"row has kl_per_token with kl_coef={row.kl_coef}: pass kl [N={n}], the per-token "
                         "KL estimate")
    if row.critic and (values is None or values.shape != (n,)):
        raise ValueError(f"row has a critic: pass values [N={n}], the critic's value of every token")
    rewards = advantage_torch.token_rewards(advantages, seq_index, mask, row, kl)
    adv, returns = gae(rewards, torch.zeros_like(rewards) if values is None else values, mask, seq_index,
                       gamma=row.gae_gamma, lam=row.gae_lambda, num_seqs=advantages.numel(), backend=backend)
    if row.whiten:
        adv = advantage_torch.whiten(adv, mask, row.std_eps, reduce)
    return adv, returns


def pair_coefficients(logp, ref_logp, mask, seq_index, sign, group, *, beta: float, seqs: int,
                      pairs: int | None = None):
    """DPO as per-sequence coefficients for fused_policy_loss (ratio "none", seq_mean_token_sum).

    logp, ref_logp [N] f32 (the policy's and the reference's log-probs, no gradient), mask [N]
    bool, seq_index [N] int64 non-decreasing in [0, S), sign [S] (+1 chosen, -1 rejected:
    group_advantages' output for a pairs row, after keeping the paired samples), group [S] int64
    (one chosen and one rejected per group), seqs: the loss' S' (LossScale.seqs), pairs: the
    batch's pair count when these are a part of it (torchrun: every rank's; None: these groups).
    Returns (coefficients [S] f32, metrics over these pairs: dpo_loss (mean over pairs of
    -log sigmoid(z)), dpo_accuracy (pairs with D_chosen > D_rejected), dpo_margin (mean D_chosen -
    D_rejected), pairs). Passed as the advantages, they give exactly the DPO loss' gradient. Math in
    advantage_torch.py.
    """
    s = sign.numel()
    if group.shape != (s,) or bool((torch.bincount(torch.unique(group, return_inverse=True)[1]) != 2).any()):
        raise ValueError("pair_coefficients needs exactly two sequences (a chosen and a rejected) per group")
    return advantage_torch.pair_coefficients(logp, ref_logp, mask, seq_index, sign, group, beta, seqs, pairs)


def rollout_weights(old_logp, rollout_logp, mask, seq_index, row):
    """Rollout correction of ``row`` (row.rollout_is) from the trainer's and the engine's log-probs of
    the sampled tokens under the same weights.

    old_logp, rollout_logp [N] f32, mask [N] bool, seq_index [N] int64 non-decreasing.
    Returns (weights [N] f32 to multiply the advantages by (1 for the mask modes), keep [N] bool
    (False: the token leaves the loss; all True for the truncate modes), metrics: rollout_kl (k3
    of the two over mask tokens), rollout_is_clipped_frac (mask tokens whose weight hit the cap),
    rollout_is_masked_frac (mask tokens dropped)). Identical log-probs give weights 1 and keep
    True exactly. Math in advantage_torch.py.
    """
    n = old_logp.shape[0]
    for name, t in (("rollout_logp", rollout_logp), ("mask", mask), ("seq_index", seq_index)):
        if t.shape != (n,):
            raise ValueError(f"{name} must be [N={n}] like old_logp, got {tuple(t.shape)}")
    if row.rollout_is == "none":
        raise ValueError("row.rollout_is is 'none': there is no rollout correction to compute")
    return advantage_torch.rollout_weights(old_logp, rollout_logp, mask, seq_index, row)
