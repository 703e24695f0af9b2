"""The training loop, read top to bottom: rollout -> reward -> advantage -> update -> log / eval / checkpoint.

`train(cfg)` is the whole trainer. It never looks at an algorithm's name, only at the
fields of its row (lightrl.algos.AlgoRow):
  sample_factor / refill       how many completions to draw and whether to draw more prompts
                               until enough groups survive the filter (DAPO dynamic sampling);
  keep / baseline / scale      group_advantages turns rewards into per-sequence advantages and
                               a keep mask; dropped sequences never reach the update;
  ratio (needs_old_logp)       old log-probs (of the weights that sampled the batch) are computed
                               before the first update when they can differ from the current ones
                               (several updates per batch); otherwise the loss is on-policy;
  kl_coef (needs_ref)          a frozen reference copy gives reference log-probs; kl_in_reward
                               moves the KL into the reward before advantages;
  overlong_*, aggregate, ...   used by the reward rules and fused_policy_loss.
Only completion tokens go through the loss: the decoder's final hidden states at
completion positions and the lm_head weight go straight into fused_policy_loss, which
never builds [tokens x vocab] logits.
"""
from __future__ import annotations

import copy
import math
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from lightrl import checkpoint
from lightrl.config import ROLLOUT_SEEDS_PER_STEP, Config, save_config, validate
from lightrl.data import PromptSampler, load_rows, prompt_text
from lightrl.kernels import LossScale, fused_policy_loss, group_advantages, linear_logprobs
from lightrl.kernels.policy_loss_torch import kl_terms
from lightrl.logs import MetricsLog
from lightrl.rewards.code import code_reward
from lightrl.rewards.math import get_stats, score_batch
from lightrl.rewards.rules import format_reward, overlong_penalty


def train(cfg: Config) -> str:
    """Run RL as configured; returns the run directory."""
    row = validate(cfg)  # every config error surfaces here, before any model is loaded
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    engine_name = cfg.engine
    if engine_name == "auto":
        engine_name = "vllm" if device.type == "cuda" and _has_vllm() else "hf"
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: CUDA is not available here; use --device cpu")
    if engine_name == "vllm" and device.type != "cuda":
        raise ValueError("--engine vllm needs a CUDA device; use --engine hf on CPU")
    amp_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "float32": None,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()

    # ---- run directory (new, or the one being resumed) -------------------------------------
    ckpt = checkpoint.find(cfg.resume) if cfg.resume else None
    if cfg.resume and ckpt is None:
        raise ValueError(f"--resume {cfg.resume}: no complete checkpoint there (checkpoints/latest missing)")
    if ckpt:
        run_dir = os.path.dirname(os.path.dirname(ckpt))
    else:
        name = cfg.run_name or f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = os.path.join(cfg.out_dir, name)
        if checkpoint.find(run_dir):
            raise ValueError(f"{run_dir} already holds checkpoints: continue it with --resume {run_dir}, "
                             "or pick another --run-name")
        os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.json"))
    print(f"lightrl: run directory {os.path.abspath(run_dir)} (algo {cfg.algo}, engine {engine_name}, {device})")

    # ---- data ---------------------------------------------------------------------------------
    rows, bad_rows = load_rows(cfg.data, cfg.question_field, cfg.answer_field, skip_bad_rows=cfg.skip_bad_rows,
                               seed=cfg.seed, reward=cfg.reward, tests_field=cfg.tests_field)
    eval_rows = []
    if cfg.eval_data:
        eval_rows, bad_eval = load_rows(cfg.eval_data, cfg.question_field, cfg.answer_field,
                                        skip_bad_rows=cfg.skip_bad_rows, seed=cfg.seed, reward=cfg.reward,
                                        tests_field=cfg.tests_field)
        bad_rows += bad_eval
        eval_rows = eval_rows[:cfg.eval_limit] if cfg.eval_limit else eval_rows
    if bad_rows:
        print(f"lightrl: skipped {bad_rows} bad data rows (--skip-bad-rows)")

    # ---- policy, reference, optimizer -----------------------------------------------------------
    torch.manual_seed(cfg.seed)
    tokenizer, model, init_path = _load_policy(cfg, run_dir, ckpt, rows, device)
    check_plain_lm_head(model, cfg.model)
    instruction = "" if cfg.model == "tiny" else cfg.instruction
    encode = _prompt_encoder(tokenizer, instruction, cfg.max_prompt_tokens)
    if device.type == "cuda" and cfg.liger:
        _apply_liger(model)
    model.train()  # from_pretrained returns eval mode; gradient checkpointing only acts in train mode
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ref_model = None
    if row.needs_ref:  # the frozen starting policy (after the tiny model's warm start)
        ref_model = _from_pretrained(init_path, device) if ckpt else copy.deepcopy(model)
        ref_model.requires_grad_(False).eval()
        if amp_dtype is not None:  # only ever run under autocast: half-precision storage is enough
            ref_model.to(amp_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))
    sampler = PromptSampler(len(rows), cfg.seed)
    start_step, bad_in_a_row = 0, 0
    if ckpt:
        state = checkpoint.load_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        checkpoint.set_rng_state(state["rng"])
        start_step, bad_in_a_row = state["step"], state["bad_in_a_row"]
        print(f"lightrl: resumed from {ckpt} at step {start_step}")

    # ---- rollout engine, logger ---------------------------------------------------------------
    stop_ids = _stop_ids(tokenizer, model)
    if engine_name == "vllm":
        from lightrl.rollout import VLLMEngine
        engine = VLLMEngine(init_path, tokenizer, stop_ids=stop_ids,
                            dtype="bfloat16" if amp_dtype is not None else "float32",
                            gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed, sleep=cfg.vllm_sleep,
                            max_model_len=cfg.max_prompt_tokens + max(cfg.max_new_tokens, cfg.eval_max_new_tokens))
        if ckpt:
            engine.sync_weights(model)
    else:
        from lightrl.rollout import HFEngine
        engine = HFEngine(model, tokenizer, batch_size=cfg.micro_batch, stop_ids=stop_ids, progress=cfg.progress)
    log = MetricsLog(run_dir, cfg, resume_step=start_step)
    weight = model.get_output_embeddings().weight  # tied models: the same Parameter as the input embedding
    group_n = cfg.group_size * row.sample_factor
    loss_constant = float(cfg.max_new_tokens) if row.aggregate == "token_sum_norm" else None
    # With one update per batch the policy that sampled is the one being updated: old == current log-probs,
    # so the loss runs on-policy (ratio 1 with gradient) and the extra forward pass is skipped.
    use_old_logp = row.needs_old_logp and cfg.updates_per_batch > 1

    def forward_hidden(net, batch):
        """Final (post-norm) hidden states [N, D] at the positions that predict completion tokens."""
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net.get_decoder()(input_ids=batch["ids"], attention_mask=batch["attn"], use_cache=False)
        hidden = out.last_hidden_state[batch["rows"], batch["cols"]]
        return hidden if amp_dtype is None else hidden.to(amp_dtype)  # the final norm may return fp32

    def token_logprobs(net, batch):
        """Log-probs [N] f32 of the batch's completion tokens under net (policy or reference)."""
        return linear_logprobs(forward_hidden(net, batch), _w(net.get_output_embeddings().weight, amp_dtype),
                               batch["targets"], temperature=cfg.temperature, backend=cfg.backend)

    def evaluate(step: int) -> dict:
        """avg@k accuracy on the held-out rows."""
        t0 = time.time()
        comps = engine.generate([encode(r["question"]) for r in eval_rows], cfg.eval_k,
                                temperature=cfg.eval_temperature, top_p=1.0, seed=cfg.seed + 7919 * (step + 1),
                                max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens, desc="eval")
        texts = tokenizer.batch_decode(comps, skip_special_tokens=True)
        scores = verifier_scores(texts, [r for r in eval_rows for _ in range(cfg.eval_k)], cfg.reward)
        return {"eval_accuracy": sum(scores) / len(scores), "eval_time": time.time() - t0}

    # ---- the loop -----------------------------------------------------------------------------
    bar = tqdm(range(start_step, cfg.steps), desc="steps", initial=start_step, total=cfg.steps,
               disable=not cfg.progress)
    for step in bar:
        t_step = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        get_stats(reset=True)
        m = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "bad_rows": bad_rows}

        # 1. rollout + 2. reward: groups of group_n completions per prompt; refill rows draw more
        #    prompts until enough groups keep at least one sample.
        groups, sampled, rounds, all_rewards, all_scores = [], 0, 0, [], []
        while True:
            idx = sampler.take(cfg.prompts_per_step - len(groups) if row.refill and groups else cfg.prompts_per_step)
            prompts = [encode(rows[i]["question"]) for i in idx]
            comps = engine.generate(prompts, group_n, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_new_tokens=cfg.max_new_tokens,
                                    seed=cfg.seed * 1_000_003 + step * ROLLOUT_SEEDS_PER_STEP + rounds)
            scores, shaping = _rewards(comps, [rows[i] for i in idx for _ in range(group_n)], tokenizer, cfg, row)
            sampled += len(comps)
            all_rewards += [s + x for s, x in zip(scores, shaping)]
            all_scores += scores
            cut = lambda xs, g: xs[g * group_n:(g + 1) * group_n]  # noqa: E731
            new = [{"prompt": prompts[g], "comps": cut(comps, g), "scores": cut(scores, g),
                    "shaping": cut(shaping, g)} for g in range(len(idx))]
            if not row.refill:
                groups = new
                break
            _, keep = _advantages(scores, shaping, [len(c) for c in comps], group_n, row, device, cfg.backend)
            groups += [grp for g, grp in enumerate(new) if keep[g * group_n:(g + 1) * group_n].any()]
            rounds += 1
            if len(groups) >= cfg.prompts_per_step or rounds > cfg.max_refills:
                groups = groups[:cfg.prompts_per_step]
                break
        t_rollout = time.time() - t_step
        flat_comps = _flat(groups, "comps")
        lengths = [len(c) for c in flat_comps]
        truncated = [len(c) >= cfg.max_new_tokens and c[-1] not in stop_ids for c in flat_comps]
        m.update(reward_mean=_mean(all_rewards), accuracy=_mean(all_scores), samples=sampled, refill_rounds=rounds,
                 groups=len(groups), completion_len_mean=_mean(lengths), completion_len_max=max(lengths, default=0),
                 truncated_frac=_mean(truncated), empty_frac=_mean([all(t in stop_ids for t in c) for c in flat_comps]))

        # 3. advantages over the final batch; only kept sequences go on to the update.
        batch = _to_batch(groups, truncated, cfg.mask_truncated)
        scores_t = torch.tensor(_flat(groups, "scores"), dtype=torch.float32)
        shaping_t = torch.tensor(_flat(groups, "shaping"), dtype=torch.float32)
        skip_reason, nonfinite = None, not bool(torch.isfinite(scores_t + shaping_t).all())
        if nonfinite:
            skip_reason = "non-finite reward"
        reward_kl_mean = None
        if row.kl_in_reward and skip_reason is None:
            kl = _sequence_kl(model, ref_model, batch, token_logprobs, cfg.micro_batch, row.kl_estimator, device)
            shaping_t = shaping_t - row.kl_coef * kl
            # The loss sees no ref_logp here, so its kl_mean would be 0: log this KL's token mean instead.
            reward_kl_mean = kl.sum().item() / max(sum(len(s["comp"]) for s in batch if s["counts"]), 1)
        adv, keep = _advantages(scores_t, shaping_t, lengths, group_n, row, device, cfg.backend) if groups \
            else (torch.zeros(0), torch.zeros(0, dtype=torch.bool))
        m["kept_frac"] = keep.float().mean().item() if keep.numel() else 0.0
        if skip_reason is None and not keep.any():
            skip_reason = "every group filtered (no kept sample)" + (" after refills" if row.refill else "")
        seqs = [i for i in range(len(keep)) if keep[i]]
        if skip_reason is None and not any(batch[i]["counts"] and batch[i]["comp"] for i in seqs):
            skip_reason = "no completion token to train on (all kept completions empty or masked as truncated)"
        micro = [_micro_batch(batch, seqs[i:i + cfg.micro_batch], device) for i in range(0, len(seqs), cfg.micro_batch)]
        for mb in micro:
            mb["adv"] = adv[mb["seq_ids"]].to(device)

        # 4. update: old / reference log-probs without gradient, then updates_per_batch optimizer steps.
        t_update = time.time()
        engine.sleep()
        totals = {"tokens": sum(int(mb["mask"].sum()) for mb in micro),
                  "seqs": sum(int(mb["nonempty"]) for mb in micro)}
        with torch.no_grad():
            for mb in micro:
                if use_old_logp:
                    mb["old_logp"] = token_logprobs(model, mb)
                if row.kl_in_loss:
                    mb["ref_logp"] = token_logprobs(ref_model, mb)
        stepped = False
        for update in range(cfg.updates_per_batch if skip_reason is None else 0):
            optimizer.zero_grad(set_to_none=True)

            def loss_of(mb):
                hidden = forward_hidden(model, mb)
                out = fused_policy_loss(
                    hidden, _w(weight, amp_dtype), mb["targets"], mb.get("old_logp"), mb.get("ref_logp"), mb["adv"],
                    mb["mask"], mb["seq_index"], row, temperature=cfg.temperature, scale=LossScale(constant=loss_constant),
                    backend=cfg.backend)
                if update == 0 and mb is micro[0]:  # entropy estimated on the first micro-batch (no grad)
                    with torch.no_grad():
                        _, ent = linear_logprobs(hidden.detach(), _w(weight, amp_dtype).detach(), mb["targets"],
                                                 temperature=cfg.temperature, return_entropy=True,
                                                 backend=cfg.backend)
                        m["entropy"] = (ent[mb["mask"]].mean().item() if mb["mask"].any() else 0.0)
                return out

            loss_total, metrics = accumulate_gradients(
                tqdm(micro, desc="update", leave=False, disable=not cfg.progress), row, totals, loss_of)
            if update == 0:  # like the loss: the first update, where the batch is on-policy
                m.update({LOSS_METRIC_NAMES.get(k, k): v for k, v in metrics.items()})
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                       else float("inf"))
            if not (math.isfinite(loss_total) and torch.isfinite(grad_norm)):
                nonfinite = True
                skip_reason = f"non-finite loss ({loss_total}) or gradient norm ({grad_norm.item()})"
                optimizer.zero_grad(set_to_none=True)  # weights and optimizer state stay untouched
                break
            optimizer.step()
            stepped = True
            if update == 0:
                m.update(loss=loss_total, grad_norm=grad_norm.item())
        if reward_kl_mean is not None:
            m["kl_mean"] = reward_kl_mean
        if stepped:
            scheduler.step()
            engine.sync_weights(model)
        bad_in_a_row = bad_in_a_row + 1 if nonfinite else 0
        if skip_reason is not None:
            tqdm.write(f"lightrl: step {step + 1} skipped {'the rest of ' if stepped else ''}its update: {skip_reason}")
        m["skipped"] = int(skip_reason is not None)
        t_end = time.time()

        # 5. log, evaluate, checkpoint.
        done = step + 1
        m.update(step_time=t_end - t_step, rollout_time=t_rollout, update_time=t_end - t_update,
                 tokens_per_s=(sum(lengths) + totals["tokens"] * cfg.updates_per_batch) / max(t_end - t_step, 1e-9),
                 peak_mem_gb=_peak_memory_gb(device), verifier_timeouts=get_stats()["n_timeouts"])
        if eval_rows and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            m.update(evaluate(done))
        log.write(m)
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['accuracy']:.3f}")
        if bad_in_a_row >= cfg.max_bad_steps:
            raise RuntimeError(f"stopping: {bad_in_a_row} consecutive steps had non-finite rewards or losses "
                               f"(last: {skip_reason}); the last good checkpoint is in {run_dir}/checkpoints")
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            state = {"step": done, "bad_in_a_row": bad_in_a_row, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                     "rng": checkpoint.rng_state()}
            checkpoint.save(run_dir, done, model, tokenizer, state, cfg.keep_checkpoints)
    bar.close()
    log.close()
    print(f"lightrl: done. Outputs in {os.path.abspath(run_dir)}: metrics.jsonl, curves.png, TensorBoard events "
          f"(tensorboard --logdir {run_dir}), checkpoints/ (latest: {os.path.join(run_dir, 'checkpoints', 'latest')})")
    return run_dir


# ---- helpers (in the order the loop uses them) ---------------------------------------------------

# fused_policy_loss's metrics, renamed where the loop logs a different quantity under the same name.
LOSS_METRIC_NAMES = {"kept_frac": "nonzero_adv_token_frac", "entropy_mean": "entropy_loss_term"}


def accumulate_gradients(micro, row, totals: dict, loss_of) -> tuple[float, dict]:
    """Backward of the whole batch's loss, one micro-batch at a time.

    micro: micro-batches from _micro_batch (each with "mask" [N] bool and "nonempty", its count of
    sequences with a mask token); totals: {"tokens", "seqs"} of the same over the whole batch;
    loss_of(mb) -> fused_policy_loss(...) on mb alone. fused_policy_loss aggregates within its
    micro-batch, so each loss is scaled by that micro-batch's share of the batch's denominator: its
    mask tokens for token_mean, its non-empty sequences for every per-sequence aggregate (their
    denominators are S' or S' * loss_constant, and a constant loss_constant is the same in every
    micro-batch). The gradients then sum to the whole batch's.
    Returns (loss float, metrics: floats, token-weighted means over micro-batches; ratio_max the max).
    """
    loss_total, sums, ratio_max = 0.0, {}, 0.0
    for mb in micro:
        loss, metrics = loss_of(mb)
        tokens = int(mb["mask"].sum())
        share = (tokens / max(totals["tokens"], 1) if row.aggregate == "token_mean"
                 else int(mb["nonempty"]) / max(totals["seqs"], 1))
        (loss * share).backward()
        loss_total += loss.item() * share
        for k, v in metrics.items():
            if k == "ratio_max":
                ratio_max = max(ratio_max, v.item())
            else:
                sums[k] = sums.get(k, 0.0) + v.item() * tokens
    out = {k: v / max(totals["tokens"], 1) for k, v in sums.items()}
    if sums:
        out["ratio_max"] = ratio_max
    return loss_total, out


def _has_vllm() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def _from_pretrained(path: str, device):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def _load_policy(cfg: Config, run_dir: str, ckpt: str | None, rows: list[dict], device):
    """(tokenizer, model in fp32 on device, path of the starting weights for the reference / vLLM)."""
    from transformers import AutoTokenizer
    if cfg.model == "tiny":
        from lightrl import tiny
        init_path = os.path.join(run_dir, "warm_start")
        if ckpt is None:  # build, warm-start and save the starting policy once per run
            tokenizer = tiny.build_tokenizer()
            model = tiny.build_model(tokenizer, seed=cfg.seed).to(device)
            tiny.warm_start(model, tokenizer, rows, steps=cfg.warm_start_steps, lr=cfg.warm_start_lr,
                            seed=cfg.seed, progress=cfg.progress)
            model.save_pretrained(init_path)
            tokenizer.save_pretrained(init_path)
            return tokenizer, model, init_path
    else:
        init_path = cfg.model
    source = ckpt or init_path
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer, _from_pretrained(source, device), init_path


def check_plain_lm_head(model, name: str) -> None:
    """The loss computes logits as hidden @ lm_head.weight.T / temperature: refuse models whose logits
    are more than that (an lm_head bias, Gemma-2's soft-capping, Cohere's / Granite's logit scaling),
    since their log-probs, ratios and gradients would silently be wrong."""
    problems = []
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        problems.append("its lm_head has a bias")
    text_cfg = model.config.get_text_config()
    if getattr(text_cfg, "final_logit_softcapping", None):
        problems.append(f"final_logit_softcapping={text_cfg.final_logit_softcapping}")
    for attr in ("logit_scale", "logits_scaling"):
        value = getattr(text_cfg, attr, None)
        if value is not None and value != 1:
            problems.append(f"{attr}={value}")
    if problems:
        raise ValueError(f"--model {name}: {', '.join(problems)}; lightrl's fused loss takes logits as "
                         "hidden @ lm_head.weight.T only, so its log-probs would be wrong for this model "
                         "(Llama, Qwen2/2.5/3 and Mistral-style heads are fine)")


def _stop_ids(tokenizer, model) -> list[int]:
    """Tokens that end a completion: the tokenizer's EOS and the model's generation EOS ids (chat models
    end a turn with their own token, e.g. <|im_end|>)."""
    ids = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos]
    return sorted({i for i in ids if i is not None})


def _prompt_encoder(tokenizer, instruction: str, max_tokens: int):
    templated = bool(getattr(tokenizer, "chat_template", None))

    def encode(question: str) -> list[int]:
        ids = tokenizer(prompt_text(tokenizer, question, instruction), add_special_tokens=not templated)["input_ids"]
        return ids[-max_tokens:]
    return encode


def _apply_liger(model) -> None:
    """liger-kernel's RMSNorm, RoPE and SwiGLU for architectures it knows (its loss kernels are not used)."""
    import inspect
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model.config.model_type)
    if fn is None:
        print(f"lightrl: liger-kernel has no kernels for model type {model.config.model_type!r}; running without")
        return
    wanted = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    params = inspect.signature(fn).parameters
    fn(model=model, **{k: v for k, v in wanted.items() if k in params})
    print(f"lightrl: liger-kernel RMSNorm/RoPE/SwiGLU applied to {model.config.model_type}")


def verifier_scores(texts: list[str], rows: list[dict], reward: str) -> list[float]:
    """One score in [0, 1] per completion text against its data row (rows[i] belongs to texts[i]):
    reward "math" checks row["answer"] (1.0 / 0.0); "code" runs row["tests"] in the sandbox
    (fraction passed)."""
    if reward == "code":
        # Each call is its own sandboxed subprocess, mostly waiting: threads overlap them; map keeps order.
        with ThreadPoolExecutor(max_workers=min(8, len(texts)) or 1) as pool:
            return list(pool.map(code_reward, texts, [r["tests"] for r in rows]))
    return list(score_batch([r["answer"] for r in rows], texts))


def _rewards(comps, rows, tokenizer, cfg, row):
    """(verifier scores, shaping terms: format and overlong, when configured); the reward is their sum.
    rows[i] is the data row that completion comps[i] answers.

    Kept apart because the row's reward_map and keep filter act on the scores alone."""
    texts = tokenizer.batch_decode(comps, skip_special_tokens=True)
    scores = verifier_scores(texts, rows, cfg.reward)
    shaping = [0.0] * len(scores)
    buffer = row.overlong_buffer_tokens(cfg.max_new_tokens)
    for i, (text, ids) in enumerate(zip(texts, comps)):
        if cfg.format_weight:
            shaping[i] += cfg.format_weight * format_reward(text)
        if row.overlong_penalty and buffer:
            shaping[i] += overlong_penalty(len(ids), cfg.max_new_tokens, buffer, row.overlong_penalty)
    return scores, shaping


def _advantages(scores, shaping, lengths, group_n: int, row, device, backend: str):
    """group_advantages on the training device (backend "triton" takes no CPU tensors there); (adv, keep) on CPU."""
    f32 = lambda xs: torch.as_tensor(xs, dtype=torch.float32).to(device)  # noqa: E731
    adv, keep = group_advantages(f32(scores), group_n, row, lengths=torch.as_tensor(lengths).to(device),
                                 shaping=f32(shaping), backend=backend)
    return adv.cpu(), keep.cpu()


def _flat(groups, key):
    return [x for g in groups for x in g[key]]


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0


def _to_batch(groups, truncated, mask_truncated: bool) -> list[dict]:
    """One entry per sampled sequence: prompt ids, completion ids, whether its tokens count."""
    seqs = []
    for g in groups:
        for c in g["comps"]:
            seqs.append({"prompt": g["prompt"], "comp": c, "counts": not (mask_truncated and truncated[len(seqs)])})
    return seqs


def _micro_batch(batch: list[dict], seq_ids: list[int], device) -> dict:
    """Right-padded ids [B, L] and the flat completion-token view [N] fused_policy_loss wants."""
    items = [batch[i] for i in seq_ids]
    width = max(len(s["prompt"]) + len(s["comp"]) for s in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    rows, cols, targets, seq_index, mask = [], [], [], [], []
    nonempty = 0
    for b, s in enumerate(items):
        full = s["prompt"] + s["comp"]
        ids[b, :len(full)] = torch.tensor(full)
        attn[b, :len(full)] = 1
        p, n = len(s["prompt"]), len(s["comp"])
        rows += [b] * n
        cols += range(p - 1, p + n - 1)  # position t predicts token t + 1
        targets += s["comp"]
        seq_index += [b] * n
        mask += [s["counts"]] * n
        nonempty += int(s["counts"] and n > 0)
    to = lambda xs, dt: torch.tensor(xs, dtype=dt, device=device)  # noqa: E731
    return {"ids": ids.to(device), "attn": attn.to(device), "rows": to(rows, torch.long), "cols": to(cols, torch.long),
            "targets": to(targets, torch.long), "seq_index": to(seq_index, torch.long),
            "mask": to(mask, torch.bool), "nonempty": nonempty, "seq_ids": torch.tensor(seq_ids, dtype=torch.long)}


def _w(weight, amp_dtype):
    """The lm_head weight in the hidden states' dtype (a differentiable cast under autocast)."""
    return weight if amp_dtype is None else weight.to(amp_dtype)


@torch.no_grad()
def _sequence_kl(model, ref_model, batch, token_logprobs, micro_batch: int, estimator: str, device) -> torch.Tensor:
    """Per-sequence sum over mask tokens of the KL(pi || ref) estimator, [B] f32 (kl_in_reward).

    token_logprobs(net, mb) -> log-probs [N] of mb's completion tokens under net."""
    out = torch.zeros(len(batch))
    for i in range(0, len(batch), micro_batch):
        mb = _micro_batch(batch, list(range(i, min(i + micro_batch, len(batch)))), device)
        k, _ = kl_terms(token_logprobs(model, mb), token_logprobs(ref_model, mb), mb["mask"], estimator)
        out.index_add_(0, mb["seq_index"].cpu() + i, k.cpu())
    return out


def _peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
