"""The training loop, read top to bottom: rollout -> reward -> advantage -> update -> log / eval / checkpoint.

Each step is a few named calls: lightrl.rollout.rollout (1. sample and 2. score: one StepBatch),
lightrl.advantages.advantages (3. advantages, keep, the whole batch's LossScale), update_policy
(4. optimizer steps on the kept sequences), then metrics, evaluate and save (5.).
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
(per_token_advantages, rollout_correction, dpo_coefficients, entropy_scale: lightrl.advantages.)
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
from lightrl.advantages import advantages, dpo_coefficients, entropy_scale
from lightrl.batch import StepBatch
from lightrl.config import Config, save_config
from lightrl.data import PromptSampler
from lightrl.errors import RunStopped
from lightrl.kernels import fused_policy_loss, merge_metrics
from lightrl.logs import MetricsLog, logger, show_bars
from lightrl.preflight import Start, preflight
from lightrl.rewards.combined import reward_stats
from lightrl.rewards.math import get_stats
from lightrl.rollout import rollout, verifier_scores


def train(cfg: Config, start: Start | None = None) -> str:
    """Run RL as configured; returns the run directory. start: preflight(cfg), when the caller ran it."""
    started, progress = time.time(), show_bars(cfg.progress)
    start = start or preflight(cfg)  # every config and input error surfaces here, before anything is created
    row, ckpt, run_dir = start.row, start.ckpt, start.run_dir
    data_rows, eval_data_rows, bad_rows = start.rows, start.eval_rows, start.bad_rows
    device, engine_name, amp_dtype = model.setup(cfg)
    if dist.launched():  # torchrun: join the other ranks (lightrl.dist); rank 0's run directory is everyone's
        device = dist.init(device)
        dist.check(cfg.prompts_per_step)
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
        kept, scale, adv_metrics, skip_reason = advantages(policy, batch, critic, cfg, row, finite=not nonfinite)
        m.update(adv_metrics)

        # 4. update
        t_update = time.time()
        engine.sleep()
        stepped = False
        if skip_reason is None:
            update_metrics, stepped, skip_reason = update_policy(policy, optimizer, kept, scale, cfg, row)
            m.update(update_metrics, **adv_metrics)  # with kl_in_reward, the reward's KL is the kl_mean
            nonfinite = skip_reason is not None
            if critic is not None:
                m.update(critic.update(kept, cfg, row))
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
            save(run_dir, done, policy, critic, optimizer, scheduler, sampler, bad_in_a_row, finite=not nonfinite,
                 cfg=cfg, row=row)
    bar.close()
    if log is not None:
        log.close()  # draws curves.png and logs the summary
    dist.close()
    return run_dir


def save(run_dir: str, step: int, policy, critic, optimizer, scheduler, sampler, bad_in_a_row: int, *,
         finite: bool, cfg: Config, row) -> None:
    """The checkpoint after `step` (lightrl.checkpoint): the policy's weights, the trainer state a --resume
    needs, and the row's own models (the critic, the refreshed reference, with --merge-on-save the merged
    LoRA model). finite: the step was finite (no checkpoint is written from a non-finite one)."""
    state = {"step": step, "bad_in_a_row": bad_in_a_row, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": checkpoint.rng_state()}
    writers = [critic.save] if critic is not None else []
    writers += [policy.save_reference] if row.ref_refresh else []
    if dist.active():  # rank 0 writes the whole model, every rank its optimizer shard (and the writers theirs)
        merged = lambda path, w: model.save_merged(policy, os.path.join(path, "merged"), w)  # noqa: E731
        dist.save_checkpoint(run_dir, step, policy.model, policy.tokenizer, state, optimizer, cfg.keep_checkpoints,
                             finite=finite, merged=merged if cfg.merge_on_save else None, collective=writers)
        return
    if cfg.merge_on_save:  # LoRA: base + adapters as one plain model, beside the adapters
        writers.append(lambda path: model.save_merged(policy, os.path.join(path, "merged")))
    checkpoint.save(run_dir, step, policy.model, policy.tokenizer, state, cfg.keep_checkpoints, finite=finite,
                    extra=writers)

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
        grad_norm = dist.clip_grad_norm(policy.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not (math.isfinite(loss) and torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)  # weights and optimizer state stay untouched
            return metrics, i > 0, f"non-finite loss ({loss}) or gradient norm ({grad_norm.item()})"
        optimizer.step()
        if i == 0:
            metrics.update(loss=loss, grad_norm=grad_norm.item())
    return metrics, True, None


def _backward(policy, batch: StepBatch, scale, cfg: Config, row) -> tuple[float, dict, float]:
    """The whole batch's loss gradient, one micro-batch at a time (each loss is already its share).
    Returns (loss, loss metrics over the batch, policy entropy on the first micro-batch; under torchrun,
    on the sequences one process's first micro-batch would hold)."""
    loss_total, calls, entropy = 0.0, [], None
    head = dist.first_micro_seqs(batch, cfg.micro_batch)
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
            first = dataclasses.replace(mb, mask=mb.mask & (mb.seq_index < head))
            entropy = (policy.entropy(hidden, first) if head else 0.0, int(first.mask.sum()))
        loss.backward()
        loss_total += loss.item()
        calls.append((metrics, mb.tokens))
    entropy, entropy_tokens = entropy or (0.0, 0)
    if dist.active():  # the whole batch's loss and metrics
        return (dist.total(loss_total), dist.loss_metrics(merge_metrics(calls), sum(t for _, t in calls)),
                dist.total(entropy * entropy_tokens) / max(dist.total(entropy_tokens), 1))
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

