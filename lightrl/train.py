"""The training loop, read top to bottom: rollout -> reward -> advantage -> update -> log / eval / checkpoint.

`train(cfg)` never looks at an algorithm's name, only at the fields of its row (lightrl.algos.AlgoRow):
  sample_factor / refill       how many completions to draw and whether to draw more prompts
                               until enough groups survive the filter (DAPO dynamic sampling);
  keep / baseline / scale      group_advantages turns rewards into per-sequence advantages and
                               a keep mask; dropped sequences never reach the update;
  ratio (needs_old_logp)       old log-probs (of the weights that sampled the batch) are computed
                               before the first update when they can differ from the current ones
                               (several updates per batch); otherwise the loss is on-policy;
  kl_coef (needs_ref)          a frozen reference copy gives reference log-probs; kl_in_reward
                               moves the KL into the reward before advantages (kl_per_token:
                               as per-token rewards after them);
  token_advantages             per-token advantages (GAE over per-token rewards: the KL return-to-go,
                               a critic's values; whitening) in extras (per_token_advantages);
  critic                       a value model (lightrl.critic) gives GAE its values and trains on the
                               returns after the policy's update (critic.update);
  entropy_top_frac             the batch's entropy cutoff in the LossScale (entropy_scale);
  rollout_is                   the engine's sampling log-probs against the trainer's: weights on the
                               advantages, masks on tokens (rollout_correction); old_logp_from_engine:
                               they are the ratio's old log-probs;
  pairs (pairwise)             DPO: group_advantages keeps one chosen / rejected pair per group, and
                               their coefficients come from the current and reference log-probs
                               before each update (dpo_coefficients); ref_refresh copies the policy
                               into the reference every K steps (saved with each checkpoint);
  overlong_*, aggregate, ...   used by the reward rules and fused_policy_loss.
A step's sequences are one lightrl.batch.StepBatch on the training device. Only completion
tokens reach fused_policy_loss (hidden states and the lm_head weight, never [tokens x vocab]
logits); given the batch's denominators, each micro-batch's loss is its share of the batch's.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import torch
from tqdm.auto import tqdm

import lightrl.critic
from lightrl import checkpoint, dist, model
from lightrl.batch import StepBatch
from lightrl.config import ROLLOUT_SEEDS_PER_STEP, Config, save_config
from lightrl.data import PromptSampler
from lightrl.errors import RunStopped
from lightrl.kernels import (entropy_cutoff, fused_policy_loss, group_advantages, merge_metrics, pair_coefficients,
                             rollout_weights, token_advantages)
from lightrl.logs import MetricsLog, logger, show_bars
from lightrl.preflight import Start, preflight
from lightrl.rewards.combined import reward_stats
from lightrl.rewards.combined import score as reward_score
from lightrl.rewards.math import get_stats
from lightrl.rewards.rules import format_reward, overlong_penalty


def train(cfg: Config, start: Start | None = None) -> str:
    """Run RL as configured; returns the run directory. start: preflight(cfg), when the caller ran it."""
    started, progress = time.time(), show_bars(cfg.progress)
    start = start or preflight(cfg)  # every config and input error surfaces here, before anything is created
    row, ckpt, run_dir = start.row, start.ckpt, start.run_dir
    data_rows, eval_data_rows, bad_rows = start.rows, start.eval_rows, start.bad_rows
    device, engine_name, amp_dtype = model.setup(cfg)
    if dist.launched():  # torchrun: join the other ranks (lightrl.dist); rank 0's run directory is everyone's
        device = dist.init(device)
        dist.check(cfg.prompts_per_step, cfg.lora_r, row)
        run_dir = dist.broadcast(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if dist.is_main():
        save_config(cfg, os.path.join(run_dir, "config.json"))
    logger.info(f"run directory {os.path.abspath(run_dir)} (algo {cfg.algo}, engine {engine_name}, {device})")
    if bad_rows:
        logger.warning(f"skipped {bad_rows} bad data rows (--skip-bad-rows)")

    # ---- policy, reference, optimizer, rollout engine, logger ---------------------------------
    torch.manual_seed(cfg.seed)
    policy = model.load(cfg, row, run_dir, ckpt, data_rows, device, amp_dtype)
    critic = lightrl.critic.load(cfg, policy, ckpt, device) if row.critic else None
    if dist.active():
        dist.shard_policy(policy)
    trainable = [p for p in policy.model.parameters() if p.requires_grad]  # LoRA: the adapters only
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))
    sampler = PromptSampler(len(data_rows), cfg.seed)
    start_step, bad_in_a_row = 0, 0
    if ckpt:
        state = checkpoint.load_state(ckpt)
        dist.load_optimizer_state(policy.model, optimizer, ckpt, state)
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        checkpoint.set_rng_state(state["rng"])
        start_step = state["step"]  # bad_in_a_row starts at 0: a resume (often with a new LR) counts afresh
        logger.info(f"resumed from {ckpt} at step {start_step}")
    engine = model.rollout_engine(cfg, policy, engine_name, resumed=ckpt is not None,
                                  logprobs=row.needs_rollout_logp)
    log = MetricsLog(run_dir, cfg, resume_step=start_step, started=started) if dist.is_main() else None
    loss_constant = float(cfg.max_new_tokens) if row.aggregate == "token_sum_norm" else None

    # ---- the loop -----------------------------------------------------------------------------
    bar = tqdm(range(start_step, cfg.steps), desc="steps", initial=start_step, total=cfg.steps,
               disable=not (progress and dist.is_main()))
    for step in bar:
        t_step = time.time()
        model.reset_peak_memory(device)
        get_stats(reset=True)
        reward_stats(reset=True)
        m = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "bad_rows": bad_rows}

        # 1. rollout + 2. reward
        with dist.unsharded(policy.model):
            batch, rollout_metrics = rollout(engine, policy, sampler, data_rows, step, cfg, row)
        m.update(rollout_metrics)
        t_rollout = time.time() - t_step

        # 3. advantages over the final batch; only kept sequences go on to the update.
        nonfinite = dist.any_true(not bool(torch.isfinite(batch.scores + batch.shaping).all()))
        skip_reason = "non-finite reward" if nonfinite else None
        shaping, reward_kl_mean = batch.shaping, None
        if row.kl_in_reward and skip_reason is None:
            if row.kl_per_token:  # a per-token reward: enters after the advantage step
                batch.extras["kl"] = policy.token_kl(batch, cfg.micro_batch, row.kl_estimator)
                kl = batch.seq_sum(batch.extras["kl"])
            else:
                kl = policy.sequence_kl(batch, cfg.micro_batch, row.kl_estimator)
                shaping = shaping - row.kl_coef * kl
            # The loss sees no ref_logp here, so its kl_mean would be 0: log this KL's token mean instead.
            reward_kl_mean = dist.total(kl.sum().item()) / max(dist.total(int(batch.mask.sum())), 1)
        batch.advantages, batch.keep = group_advantages(batch.scores, batch.group, row, lengths=batch.lengths,
                                                        shaping=shaping, backend=cfg.backend)
        m["kept_frac"] = batch.keep.float().mean().item() if batch.num_seqs else 0.0
        if skip_reason is None and not dist.any_true(bool(batch.keep.any())):
            skip_reason = "every group filtered (no kept sample)" + (" after refills" if row.refill else "")
        kept = batch.select(batch.keep)
        if row.rollout_is != "none" and skip_reason is None:
            m.update(rollout_correction(policy, kept, cfg, row))
        scale = dist.loss_scale(kept.loss_scale(loss_constant))  # the whole batch's, over every rank
        if skip_reason is None and not scale.tokens:
            skip_reason = "no completion token to train on (all kept completions empty or masked as truncated)"
        if skip_reason is None and (row.token_advantages or row.rollout_is != "none"):
            per_token_advantages(kept, critic, cfg, row)

        # 4. update
        t_update = time.time()
        engine.sleep()
        stepped = False
        if skip_reason is None:
            update_metrics, stepped, skip_reason = update_policy(policy, optimizer, kept, scale, cfg, row)
            m.update(update_metrics)
            nonfinite = skip_reason is not None
            if critic is not None:
                m.update(critic.update(kept, cfg, row))
        if reward_kl_mean is not None:
            m["kl_mean"] = reward_kl_mean
        if stepped:
            scheduler.step()
            engine.sync_weights(policy.model)
        if row.ref_refresh and (step + 1) % row.ref_refresh == 0:
            policy.refresh_reference()
        bad_in_a_row = bad_in_a_row + 1 if nonfinite else 0
        if skip_reason is not None:
            logger.warning(f"step {step + 1} skipped {'the rest of ' if stepped else ''}its update: {skip_reason}")
        m["skipped"] = int(skip_reason is not None)
        t_end = time.time()

        # 5. log, evaluate, checkpoint.
        done = step + 1
        m.update(step_time=t_end - t_step, rollout_time=t_rollout, update_time=t_end - t_update,
                 tokens_per_s=(sum(batch.comp_lens) + int(kept.mask.sum()) * cfg.updates_per_batch)
                 / max(t_end - t_step, 1e-9),
                 peak_mem_gb=model.peak_memory_gb(device), verifier_timeouts=get_stats()["n_timeouts"],
                 **reward_stats())
        if eval_data_rows and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            with dist.unsharded(policy.model):
                m.update(evaluate(engine, policy, eval_data_rows, done, cfg))
        m = dist.step_metrics(m, samples=rollout_metrics["samples"], seqs=batch.num_seqs)
        if log is not None:
            log.write(m)
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy']:.3f}")
        if bad_in_a_row >= cfg.max_bad_steps:
            raise RunStopped(f"stopping: {bad_in_a_row} consecutive steps had non-finite rewards or losses "
                               f"(last: {skip_reason}); the last good checkpoint is in {run_dir}/checkpoints")
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            state = {"step": done, "bad_in_a_row": bad_in_a_row, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                     "rng": checkpoint.rng_state()}
            writers = [critic.save] if critic is not None else []
            writers += [policy.save_reference] if row.ref_refresh else []
            if dist.active():  # rank 0 writes the whole model, every rank its optimizer shard
                dist.save_checkpoint(run_dir, done, policy.model, policy.tokenizer, state, optimizer,
                                     cfg.keep_checkpoints, finite=not nonfinite, collective=writers)
            else:
                if cfg.merge_on_save:  # LoRA: base + adapters as one plain model, beside the adapters
                    writers.append(lambda path: model.save_merged(policy, os.path.join(path, "merged")))
                checkpoint.save(run_dir, done, policy.model, policy.tokenizer, state, cfg.keep_checkpoints,
                                finite=not nonfinite, extra=writers)
    bar.close()
    if log is not None:
        log.close()  # draws curves.png and logs the summary
    dist.close()
    return run_dir


def rollout(engine, policy, sampler, data_rows, step: int, cfg: Config, row) -> tuple[StepBatch, dict]:
    """Groups of group_size * sample_factor scored completions for prompts_per_step prompts; refill
    rows draw more prompts, round by round, until that many groups keep a sequence (at most
    max_refills more rounds). Under torchrun "prompts" are this rank's share and every rank joins every
    round (lightrl.dist.take). Returns (the step's batch, rollout metrics; rewards over every sample,
    refills the rounds drawn after the first)."""
    group_n, target = cfg.group_size * row.sample_factor, dist.local_prompts(cfg.prompts_per_step)
    groups, sampled, refills, rewards, all_scores = [], 0, 0, [], []
    while True:
        idx, first = dist.take(sampler, target - len(groups))  # first: this rank's first group in the round
        prompts = [policy.encode(data_rows[i]["question"]) for i in idx]
        want = {"return_logprobs": True} if row.needs_rollout_logp else {}
        comps = engine.generate(prompts, group_n, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens,
                                seed=cfg.seed * 1_000_003 + step * ROLLOUT_SEEDS_PER_STEP + refills,
                                first_seq=None if first is None else first * group_n, **want)
        comps, logprobs = comps if want else (comps, None)
        scores, shaping = _rewards(comps, [data_rows[i] for i in idx for _ in range(group_n)], policy.tokenizer,
                                   cfg, row)
        sampled += len(comps)
        rewards += [s + x for s, x in zip(scores, shaping)]
        all_scores += scores
        cut = lambda xs, g: xs[g * group_n:(g + 1) * group_n]  # noqa: E731
        new = [(prompts[g], cut(comps, g), cut(scores, g), cut(shaping, g)) + ((cut(logprobs, g),) if want else ())
               for g in range(len(idx))]
        if not row.refill:
            groups = new
            break
        f32 = lambda xs: torch.tensor(xs, dtype=torch.float32, device=policy.model.device)  # noqa: E731
        _, keep = group_advantages(f32(scores), group_n, row, shaping=f32(shaping), backend=cfg.backend,
                                   lengths=torch.tensor([len(c) for c in comps], device=policy.model.device))
        groups += [grp for grp, k in zip(new, keep.view(-1, group_n).any(1).tolist()) if k]
        if dist.all_true(len(groups) >= target) or refills == cfg.max_refills:
            groups = groups[:target]
            break
        refills += 1
    comps = [c for grp in groups for c in grp[1]]
    truncated = [len(c) >= cfg.max_new_tokens and c[-1] not in policy.stop_ids for c in comps]
    batch = StepBatch.build(groups, [not (cfg.mask_truncated and t) for t in truncated], policy.model.device)
    return batch, dict(reward_mean=_mean(rewards), accuracy=_mean(all_scores), samples=sampled,
                       refills=refills, groups=len(groups), completion_len_mean=_mean(batch.comp_lens),
                       completion_len_max=max(batch.comp_lens, default=0), truncated_frac=_mean(truncated),
                       empty_frac=_mean([all(t in policy.stop_ids for t in c) for c in comps]))


def verifier_scores(texts: list[str], data_rows: list[dict], reward) -> list[float]:
    """One score per completion text against its data row (data_rows[i] belongs to texts[i]): the weighted
    sum of the --reward terms (lightrl.rewards.combined; "math" is 1.0 / 0.0, "code" the fraction of tests
    passed)."""
    return reward_score(reward, texts, data_rows)


def _rewards(comps, data_rows, tokenizer, cfg, row):
    """(verifier scores, shaping terms: format and overlong, when configured); the reward is their sum.
    data_rows[i] is the data row that completion comps[i] answers.

    Kept apart because the row's reward_map and keep filter act on the scores alone."""
    texts = tokenizer.batch_decode(comps, skip_special_tokens=True)
    scores = verifier_scores(texts, data_rows, cfg.reward)
    shaping = [0.0] * len(scores)
    buffer = row.overlong_buffer_tokens(cfg.max_new_tokens)
    for i, (text, ids) in enumerate(zip(texts, comps)):
        if cfg.format_weight:
            shaping[i] += cfg.format_weight * format_reward(text)
        if row.overlong_penalty and buffer:
            shaping[i] += overlong_penalty(len(ids), cfg.max_new_tokens, buffer, row.overlong_penalty)
    return scores, shaping


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


def update_policy(policy, optimizer, batch: StepBatch, scale, cfg: Config, row) -> tuple[dict, bool, str | None]:
    """Old / reference log-probs without gradient, then cfg.updates_per_batch optimizer steps on batch.
    Returns (metrics of the first update, where the batch is on-policy; whether the optimizer
    stepped; why it stopped early (a non-finite loss or gradient norm) or None)."""
    # With one update per batch the policy that sampled is the one being updated: old == current log-probs,
    # so the loss runs on-policy (ratio 1 with gradient) and the extra forward pass is skipped.
    if row.old_logp_from_engine:
        batch.extras["old_logp"] = batch.extras["rollout_logp"]
    old_logp = row.needs_old_logp and cfg.updates_per_batch > 1 and "old_logp" not in batch.extras
    if row.selects_by_entropy:
        scale, logp = entropy_scale(policy, batch, scale, cfg, row)
        if old_logp:
            batch.extras["old_logp"] = logp
    elif old_logp:
        batch.extras["old_logp"] = policy.logprobs(policy.model, batch, cfg.micro_batch)
    if row.kl_in_loss or row.pairwise:
        batch.extras["ref_logp"] = policy.logprobs(policy.ref_model, batch, cfg.micro_batch)
    metrics, sign = {}, batch.advantages
    for i in range(cfg.updates_per_batch):
        if row.pairwise:
            pair_metrics = dpo_coefficients(policy, batch, sign, scale, cfg, row)
            if i == 0:
                metrics.update(pair_metrics)
        optimizer.zero_grad(set_to_none=True)
        loss, loss_metrics, entropy = _backward(policy, batch, scale, cfg, row)
        if i == 0:
            metrics.update(entropy=entropy, **loss_metrics)
        grad_norm = dist.full(torch.nn.utils.clip_grad_norm_(policy.model.parameters(),
                                                             cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        if not (math.isfinite(loss) and torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)  # weights and optimizer state stay untouched
            return metrics, i > 0, f"non-finite loss ({loss}) or gradient norm ({grad_norm.item()})"
        optimizer.step()
        if i == 0:
            metrics.update(loss=loss, grad_norm=grad_norm.item())
    return metrics, True, None


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


def _backward(policy, batch: StepBatch, scale, cfg: Config, row) -> tuple[float, dict, float]:
    """The whole batch's loss gradient, one micro-batch at a time (each loss is already its share).
    Returns (loss, loss metrics over the batch, policy entropy on the first micro-batch)."""
    loss_total, calls, entropy = 0.0, [], None
    for mb, real in tqdm(dist.micro(batch, cfg.micro_batch), desc="update", leave=False,
                         disable=not show_bars(cfg.progress)):
        hidden = policy.hidden(policy.model, mb)
        if not real:  # this rank has fewer micro-batches than another: a zero gradient keeps FSDP in step
            (hidden.sum() * 0 + policy.weight(policy.model).sum() * 0).backward()
            continue
        loss, metrics = fused_policy_loss(
            hidden, policy.weight(policy.model), mb.targets, mb.extras.get("old_logp"), mb.extras.get("ref_logp"),
            mb.extras.get("advantages", mb.advantages), mb.mask, mb.seq_index, row, temperature=cfg.temperature,
            scale=scale, backend=cfg.backend)
        if entropy is None:
            entropy = policy.entropy(hidden, mb)
        loss.backward()
        loss_total += loss.item()
        calls.append((metrics, mb.tokens))
    if dist.active():  # the whole batch's loss and metrics; entropy: the mean of the ranks' first micro-batches
        return (dist.total(loss_total), dist.loss_metrics(merge_metrics(calls), sum(t for _, t in calls)),
                dist.total(entropy or 0.0) / dist.world())
    return loss_total, merge_metrics(calls), entropy


def evaluate(engine, policy, eval_data_rows: list[dict], step: int, cfg: Config) -> dict:
    """avg@k accuracy on the held-out data rows."""
    t0 = time.time()
    rows, first = dist.shard_rows(eval_data_rows)  # under torchrun, each rank evaluates its part
    comps = engine.generate([policy.encode(r["question"]) for r in rows], cfg.eval_k,
                            temperature=cfg.eval_temperature, top_p=1.0, seed=cfg.seed + 7919 * (step + 1),
                            max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens,
                            first_seq=None if first is None else first * cfg.eval_k,
                            desc="eval")
    texts = policy.tokenizer.batch_decode(comps, skip_special_tokens=True)
    scores = verifier_scores(texts, [r for r in rows for _ in range(cfg.eval_k)], cfg.reward)
    return {"eval_accuracy": dist.total(sum(scores)) / dist.total(len(scores)), "eval_time": time.time() - t0}


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0
