"""Step 3 of the loop: from a scored StepBatch to what the loss trains on.

`advantages` runs once per step, after the rollout: the KL to the reference in the reward
(kl_in_reward), group_advantages' per-sequence advantages and keep mask, the kept batch, the
rollout correction's weights and token mask (rollout_is), the whole batch's LossScale over every
rank, and per-token advantages (GAE, whitening, the correction's weights) in extras. The two
pieces that must be known before a micro-batch's loss but depend on the current weights run before
each update instead (from update_policy): DPO's pair coefficients and the entropy cutoff.
Each acts only when the row's fields ask for it (lightrl.algos.AlgoRow).
"""
from __future__ import annotations

import dataclasses

import torch

from lightrl import dist
from lightrl.batch import StepBatch
from lightrl.config import Config
from lightrl.kernels import (LossScale, entropy_cutoff, group_advantages, pair_coefficients, rollout_weights,
                             token_advantages)


def advantages(policy, batch: StepBatch, critic, cfg: Config, row,
               finite: bool) -> tuple[StepBatch, LossScale, dict, str | None]:
    """(the kept sequences, ready for the update; the whole batch's loss scale; metrics: kept_frac, the
    reward KL's kl_mean, the rollout correction's; why the step trains nothing, or None). Sets
    batch.advantages and batch.keep [S]. finite: every rank's rewards are finite (else nothing trains)."""
    metrics, skip_reason, shaping = {}, None if finite else "non-finite reward", batch.shaping
    if row.kl_in_reward and skip_reason is None:
        if row.kl_per_token:  # a per-token reward: enters after the advantage step
            batch.extras["kl"] = policy.token_kl(batch, cfg.micro_batch, row.kl_estimator)
            kl = batch.seq_sum(batch.extras["kl"])
        else:
            kl = policy.sequence_kl(batch, cfg.micro_batch, row.kl_estimator)
            shaping = shaping - row.kl_coef * kl
        # The loss sees no ref_logp here, so its kl_mean would be 0: log this KL's token mean instead.
        metrics["kl_mean"] = dist.total(kl.sum().item()) / max(dist.total(int(batch.mask.sum())), 1)
    batch.advantages, batch.keep = group_advantages(batch.scores, batch.group, row, lengths=batch.lengths,
                                                    shaping=shaping, backend=cfg.backend)
    metrics["kept_frac"] = batch.keep.float().mean().item() if batch.num_seqs else 0.0
    if skip_reason is None and not dist.any_true(bool(batch.keep.any())):
        skip_reason = "every group filtered (no kept sample)" + (" after refills" if row.refill else "")
    kept = batch.select(batch.keep)
    if row.rollout_is != "none" and skip_reason is None:
        metrics.update(rollout_correction(policy, kept, cfg, row))
    loss_constant = float(cfg.max_new_tokens) if row.aggregate == "token_sum_norm" else None
    scale = dist.loss_scale(kept.loss_scale(loss_constant))  # the whole batch's, over every rank
    if skip_reason is None and not scale.tokens:
        skip_reason = "no completion token to train on (all kept completions empty or masked as truncated)"
    if skip_reason is None and (row.token_advantages or row.rollout_is != "none"):
        per_token_advantages(kept, critic, cfg, row)
    return kept, scale, metrics, skip_reason


def rollout_correction(policy, batch: StepBatch, cfg: Config, row) -> dict:
    """Rollout correction (row.rollout_is): the trainer's log-probs of the sampling weights (one no-grad
    pass; kept as the old log-probs when the row has several updates) against the engine's sampling
    log-probs give per-token weights (extras["rollout_weight"], applied by per_token_advantages) and a
    token mask, which drops tokens from the batch's mask before its denominators are counted. Returns
    rollout_kl, rollout_is_clipped_frac, rollout_is_masked_frac."""
    old = policy.logprobs(policy.model, batch, cfg.micro_batch)
    if row.needs_old_logp and cfg.updates_per_batch > 1:
        batch.extras["old_logp"] = old
    batch.extras["rollout_weight"], keep, metrics = rollout_weights(old, batch.extras["rollout_logp"], batch.mask,
                                                                    batch.seq_index, row)
    batch.mask = batch.mask & keep
    return metrics


def per_token_advantages(batch: StepBatch, critic, cfg: Config, row) -> None:
    """Per-token advantages into batch.extras["advantages"]: token_advantages (GAE over the per-token
    rewards, whitening) for rows with them, else the sequence's; times the rollout correction's
    weights when it has set them. With a critic, its values of the batch as "old_values" and the GAE
    returns (its targets) as "returns"."""
    if row.token_advantages:
        values = critic.values(batch, cfg.micro_batch) if critic is not None else None
        adv, returns = token_advantages(batch.advantages, batch.seq_index, batch.mask, row, kl=batch.extras.get("kl"),
                                        values=values, backend=cfg.backend, reduce=dist.total_tensor)
        if critic is not None:
            batch.extras.update(old_values=values, returns=returns)
    else:
        adv = batch.advantages[batch.seq_index]
    if "rollout_weight" in batch.extras:
        adv = adv * batch.extras["rollout_weight"]
    batch.extras["advantages"] = adv


def dpo_coefficients(policy, batch: StepBatch, sign, scale, cfg: Config, row) -> dict:
    """DPO's per-sequence coefficients for the current weights into batch.extras["advantages"] (per
    token), from a no-grad pass of the policy: each pair's margin sums log-ratios over whole
    sequences, which may sit in different micro-batches, so it must be known before any of their
    losses. sign [S]: +1 chosen, -1 rejected. Returns the pair metrics (dpo_loss, ...)."""
    logp = policy.logprobs(policy.model, batch, cfg.micro_batch)
    pairs = int(dist.total(torch.unique(batch.group).numel()))  # the whole batch's (every rank's)
    coef, metrics = pair_coefficients(logp, batch.extras["ref_logp"], batch.mask, batch.seq_index, sign, batch.group,
                                      beta=row.dpo_beta, seqs=scale.seqs, pairs=pairs)
    if dist.active():  # means over every rank's pairs
        local = metrics.pop("pairs")
        metrics = {**dist.loss_metrics(metrics, local), "pairs": pairs}
    batch.extras["advantages"] = coef[batch.seq_index]
    return metrics


def entropy_scale(policy, batch: StepBatch, scale, cfg: Config, row):
    """(scale with the batch's entropy cutoff, the batch's log-probs [N] f32) for rows that select tokens
    by entropy. The top fraction is the whole batch's, so the cutoff must be known before the first
    micro-batch's loss: it comes from one no-grad pass of the sampling weights, the pass that gives the
    old log-probs too (so it is free when they are needed), and stays fixed over the batch's updates,
    which then all train the same tokens. Each loss call selects by the entropy of its own fused
    forward against this cutoff; on the first update the two entropies are the same numbers."""
    logp, entropy = policy.logprobs(policy.model, batch, cfg.micro_batch, return_entropy=True)
    cutoff = entropy_cutoff(entropy, batch.mask, row.entropy_top_frac)
    return dataclasses.replace(scale, entropy_cutoff=cutoff), logp
