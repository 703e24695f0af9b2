"""policy_loss: the scalar RL loss of an algorithm row from per-token log-probs.

The math (ratios, clips, KL estimators and their clamps, aggregation weights) is
written out in policy_loss_torch.py's docstring; every backend computes the same.
"""
import math
from dataclasses import dataclass

import torch

from lightrl.kernels import policy_loss_torch
from lightrl.kernels.backend import resolve_backend


def policy_impl(name):
    """The backend module (policy_loss_triton or policy_loss_torch) providing policy_loss_terms."""
    if name == "triton":
        from lightrl.kernels import policy_loss_triton  # imported late: only where Triton can run
        return policy_loss_triton
    return policy_loss_torch


@dataclass(frozen=True)
class LossScale:
    """The denominators of a loss call; a field left None is the call's own (the default).

    tokens: mask tokens T (token_mean); seqs: sequences with a mask token S' (every
    per-sequence aggregate); constant: token_sum_norm's C (None: the call's longest
    sequence under the mask). Given the whole batch's counts (over its micro-batches, and
    later over ranks), a call returns its share of the whole batch's loss: the shares and
    their gradients sum to the whole batch's. Metrics stay means over the call's own mask
    tokens; merge_metrics combines them.
    entropy_cutoff: for rows with entropy_top_frac < 1, the whole batch's entropy at that
    fraction (entropy_cutoff()): the policy gradient acts on tokens with entropy >= it. A
    batch-wide number like the counts, so that micro-batches select the batch's top tokens,
    not each their own (None: the call's own cutoff).
    """
    tokens: int | None = None
    seqs: int | None = None
    constant: float | None = None
    entropy_cutoff: float | None = None


def entropy_cutoff(entropy, mask, frac: float) -> float:
    """The entropy of the ceil(frac * T)-th highest-entropy mask token (T = mask tokens); tokens with
    entropy >= it are the top frac (ties at the cutoff all count). entropy [N] f32, mask [N] bool.
    +inf without a mask token."""
    values = entropy.detach().float()[mask]
    if not values.numel():
        return float("inf")
    k = max(1, math.ceil(frac * values.numel()))
    return float(torch.topk(values, k).values[-1])


def select_by_entropy(adv_tok, entropy, mask, row, cutoff):
    """adv_tok [N] with the tokens under the entropy cutoff (row.entropy_top_frac; cutoff None: this
    call's own) set to 0, which removes their policy-gradient term and nothing else."""
    if not row.selects_by_entropy:
        return adv_tok
    if cutoff is None:
        cutoff = entropy_cutoff(entropy, mask, row.entropy_top_frac)
    return torch.where(entropy.detach() >= cutoff, adv_tok, 0.0)


def apply_scale(loss, mask, seq_index, num_seqs: int, row, scale: LossScale):
    """loss (aggregated over the call's own tokens) times the call's part of scale's denominator.

    The part is own mask tokens / scale.tokens for token_mean, own sequences with a mask token /
    scale.seqs for every per-sequence aggregate (a fixed scale.constant is the same in every
    call); None in that field: the call's own, loss unchanged."""
    whole = scale.tokens if row.aggregate == "token_mean" else scale.seqs
    if whole is None:
        return loss
    if row.aggregate == "token_mean":
        own = int(mask.sum())
    else:
        per_seq = torch.zeros(num_seqs, device=mask.device).index_add_(0, seq_index, mask.float())
        own = int((per_seq > 0).sum())
    return loss * (own / max(whole, 1))


# Step-log names of the metrics whose plain names a trainer uses for its own quantities
# (kept_frac: sequences the filter kept; entropy: of the policy on a micro-batch).
STEP_NAMES = {"kept_frac": "nonzero_adv_token_frac", "entropy_mean": "entropy_loss_term"}


def merge_metrics(calls) -> dict[str, float]:
    """The metrics of several calls over disjoint tokens (micro-batches) as one call's.

    calls: (metrics of a call, its mask tokens) pairs. Returns floats: mask-token-weighted
    means, ratio_max the max; kept_frac and entropy_mean renamed as in STEP_NAMES.
    """
    tokens = max(sum(t for _, t in calls), 1)
    names = [k for k in (calls[0][0] if calls else {}) if k != "ratio_max"]
    out = {STEP_NAMES.get(k, k): sum(m[k].item() * t for m, t in calls) / tokens for k in names}
    if calls:
        out["ratio_max"] = max(m["ratio_max"].item() for m, _ in calls)
    return out


class _PolicyLoss(torch.autograd.Function):
    """Loss and its gradient come out of one forward pass (d loss / d logp is closed-form);
    the backward scales the saved gradients by grad_output."""

    @staticmethod
    def forward(ctx, impl, logp, entropy, old_logp, ref_logp, adv_tok, mask, seq_index, num_seqs, row,
                loss_constant):
        loss, grad_logp, grad_ent, parts = impl.policy_loss_terms(
            logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, loss_constant)
        ctx.save_for_backward(grad_logp, grad_ent if grad_ent is not None else grad_logp.new_zeros(0))
        ctx.mark_non_differentiable(parts)
        return loss, parts

    @staticmethod
    def backward(ctx, grad_loss, _grad_parts):
        grad_logp, grad_ent = ctx.saved_tensors
        g_ent = grad_ent * grad_loss if grad_ent.numel() else None
        return None, grad_logp * grad_loss, g_ent, None, None, None, None, None, None, None, None


def check_inputs(n, old_logp, ref_logp, advantages, mask, seq_index, row, entropy, scale,
                 entropy_from_caller=True):
    """Validate shapes / dtypes / row needs and detach the inputs that get no gradient.

    Returns (num_seqs, adv_tok [N] per token, old_logp or None (None when row.ratio == "none"), ref_logp or None).
    entropy_from_caller=False: the op computes entropy itself (fused_policy_loss)."""
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask), ("seq_index", seq_index),
                    ("entropy", entropy)):
        if t is not None and t.shape != (n,):
            raise ValueError(f"{name} must have shape [N={n}] like logp, got {tuple(t.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype} (use mask.bool())")
    if seq_index.dtype != torch.int64:
        raise TypeError(f"seq_index must be int64, got {seq_index.dtype} (use seq_index.long())")
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be [S] per sequence or [N] per token, got {tuple(advantages.shape)}")
    if n and bool((seq_index[1:] < seq_index[:-1]).any()):
        raise ValueError("seq_index must be non-decreasing: the tokens of one sequence contiguous, "
                         "sequences in order 0..S-1")
    per_token = advantages.numel() == n
    if per_token:
        num_seqs = int(seq_index[-1]) + 1 if n else 0
    else:
        num_seqs = advantages.numel()
        if n and int(seq_index[-1]) >= num_seqs:
            raise ValueError(f"seq_index reaches {int(seq_index[-1])} but advantages has {num_seqs} entries "
                             f"(per sequence) and N={n} tokens (per token)")
    if n and int(seq_index[0]) < 0:
        raise ValueError("seq_index must be >= 0")
    if row.kl_in_loss and ref_logp is None:
        raise ValueError(f"row has kl_coef={row.kl_coef} with KL in the loss: pass ref_logp, "
                         "or override kl_coef=0")
    if row.entropy_coef != 0 and entropy is None and entropy_from_caller:
        raise ValueError(f"row has entropy_coef={row.entropy_coef}: pass entropy [N]")
    if row.selects_by_entropy and entropy is None and entropy_from_caller:
        raise ValueError(f"row has entropy_top_frac={row.entropy_top_frac}: pass entropy [N] (the tokens "
                         "are selected by it)")
    if scale.constant is not None and not scale.constant > 0:
        raise ValueError(f"LossScale.constant must be > 0 (the max completion length), got {scale.constant}")
    adv_tok = (advantages if per_token else advantages[seq_index]).detach()
    old_logp = None if (row.ratio == "none" or old_logp is None) else old_logp.detach()
    ref_logp = None if ref_logp is None else ref_logp.detach()
    return num_seqs, adv_tok, old_logp, ref_logp


def policy_loss(logp, old_logp, ref_logp, advantages, mask, seq_index, row, *, entropy=None, scale=None,
                backend="auto"):
    """Scalar loss of ``row`` (lightrl.algos.AlgoRow) and its metrics.

    logp [N] f32 (differentiable), old_logp [N] or None (None = on-policy: ratio 1 with
    gradient), ref_logp [N] or None (needed when the row has KL in the loss), advantages
    [S] per sequence or [N] per token, mask [N] bool (tokens that count), seq_index [N]
    int64 non-decreasing (sequence of each token), entropy [N] (differentiable; needed
    when row.entropy_coef != 0 or row.entropy_top_frac < 1), scale: a LossScale (default: this call's
    own denominators;
    the whole batch's make the loss this call's share of it).
    Returns (loss 0-d f32, metrics): 0-d f32 tensors, means over mask tokens (0 without any):
      clip_frac_low / clip_frac_high: tokens whose coefficient the clip changed: ppo:
        r < 1-eps_low with A < 0 / r > 1+eps_high with A > 0; cispo: r out of range with A != 0;
      ratio_mean, ratio_max: of r over mask tokens; kl_mean: of the row's estimator
        (0 without ref_logp); entropy_mean (0 without entropy); kept_frac: tokens with A != 0
        (after the entropy selection).
    """
    n = logp.shape[0]
    if logp.dim() != 1:
        raise ValueError(f"logp must be [N], got {tuple(logp.shape)}")
    scale = scale or LossScale()
    num_seqs, adv_tok, old_logp, ref_logp = check_inputs(n, old_logp, ref_logp, advantages, mask, seq_index, row,
                                                         entropy, scale)
    adv_tok = select_by_entropy(adv_tok, entropy, mask, row, scale.entropy_cutoff)
    name = resolve_backend(backend, logp.device)
    if name == "reference":
        loss, metrics = policy_loss_torch.reference_policy_loss(
            logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, scale.constant)
    else:
        loss, parts = _PolicyLoss.apply(policy_impl(name), logp, entropy, old_logp, ref_logp, adv_tok, mask,
                                        seq_index, num_seqs, row, scale.constant)
        metrics = policy_loss_torch.finish_metrics(parts)
    return apply_scale(loss, mask, seq_index, num_seqs, row, scale), metrics
