"""Steps 1 and 2 of the loop: `rollout` samples the step's groups and scores them (`rewards`) into one
StepBatch; the engines it samples with turn prompts (token ids) into n completions each (token ids).

hf   transformers `generate` on the policy model itself (any device; the default
     without CUDA). Nothing to sync: it samples from the weights being trained.
vllm vLLM colocated on the training GPU (optional extra `pip install lightrl[vllm]`).
     Sleep mode frees its memory while the trainer updates; after every optimizer
     step the new weights are loaded into it (with LoRA: only the merged layers the
     adapters change). This path needs CUDA; the CPU tests check its weight sync
     against a stand-in vLLM (tests/test_vllm_sync.py).

Both return completions as lists of token ids, ending at (and including) the first
stop token (EOS, or the end-of-turn token of chat models) when one was produced, in
prompt-major order: prompt 0's n samples, then prompt 1's, and so on.
"""
from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from lightrl import dist
from lightrl.batch import StepBatch
from lightrl.config import ROLLOUT_SEEDS_PER_STEP, Config
from lightrl.kernels import group_advantages
from lightrl.rewards.combined import score as reward_score
from lightrl.rewards.rules import format_reward, overlong_penalty


def rollout(engine, policy, sampler, data_rows, step: int, cfg: Config, row) -> tuple[StepBatch, dict]:
    """Groups of group_size * sample_factor scored completions for prompts_per_step prompts; refill
    rows draw more prompts, round by round, until that many groups keep a sequence (at most
    max_refills more rounds). Under torchrun "prompts" are this rank's share and every rank joins every
    round (lightrl.dist.take). Returns (the step's batch, rollout metrics; rewards over every sample,
    refills the rounds drawn after the first)."""
    group_n, target = cfg.group_size * row.sample_factor, dist.local_prompts(cfg.prompts_per_step)
    groups, sampled, refills, all_rewards, all_scores = [], 0, 0, [], []
    while True:
        idx, first = dist.take(sampler, target - len(groups))  # first: this rank's first group in the round
        prompts = [policy.encode(data_rows[i]["question"]) for i in idx]
        want = {"return_logprobs": True} if row.needs_rollout_logp else {}
        comps = engine.generate(prompts, group_n, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens,
                                seed=cfg.seed * 1_000_003 + step * ROLLOUT_SEEDS_PER_STEP + refills,
                                first_seq=None if first is None else first * group_n, **want)
        comps, logprobs = comps if want else (comps, None)
        scores, shaping = rewards(comps, [data_rows[i] for i in idx for _ in range(group_n)], policy.tokenizer,
                                   cfg, row)
        sampled += len(comps)
        all_rewards += [s + x for s, x in zip(scores, shaping)]
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
    return batch, dict(reward_mean=_mean(all_rewards), accuracy=_mean(all_scores), samples=sampled,
                       refills=refills, groups=len(groups), completion_len_mean=_mean(batch.comp_lens),
                       completion_len_max=max(batch.comp_lens, default=0), truncated_frac=_mean(truncated),
                       empty_frac=_mean([all(t in policy.stop_ids for t in c) for c in comps]))


def verifier_scores(texts: list[str], data_rows: list[dict], reward) -> list[float]:
    """One score per completion text against its data row (data_rows[i] belongs to texts[i]): the weighted
    sum of the --reward terms (lightrl.rewards.combined; "math" is 1.0 / 0.0, "code" the fraction of tests
    passed)."""
    return reward_score(reward, texts, data_rows)


def rewards(comps, data_rows, tokenizer, cfg, row):
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


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0


class HFEngine:
    """Sampling with `model.generate` on left-padded batches of at most `batch_size` sequences."""

    def __init__(self, model, tokenizer, batch_size: int, stop_ids: list[int], progress: bool = True):
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress
        self.stop_ids = stop_ids

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, first_seq: int | None = None, desc: str = "rollout",
                 return_logprobs: bool = False):
        """n completions per prompt; temperature 0 = greedy. Seeded, so reruns (and resumes) repeat.
        Each chunk of batch_size sequences is seeded by its place in the whole step, first_seq being
        this call's first (under torchrun, this rank's share's place; None: 0, the whole step), so
        that one process and any number of torchrun ranks draw the same samples for a chunk.
        return_logprobs: also the sampling log-prob of every completion token (a list of floats per
        completion), from the scores after the same processors the sampler used (temperature, top-p)."""
        from transformers import GenerationConfig
        flat = [p for p in prompts for _ in range(n)]
        pad = self.tokenizer.pad_token_id
        sample = temperature > 0
        # The model's own generation defaults (Qwen ships top_k=20, repetition_penalty=1.05, ...) would
        # change the sampling distribution the loss assumes; transformers fills every field of a passed
        # config that is left at its global default from model.generation_config, so that is swapped
        # out for the call.
        gen_cfg = GenerationConfig(do_sample=sample, temperature=temperature if sample else None,
                                   top_p=top_p if sample else None, top_k=0 if sample else None,
                                   max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=self.stop_ids)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # peft: LoRA
        out, logprobs, saved = [], [], base.generation_config
        base.generation_config = gen_cfg
        for start in tqdm(range(0, len(flat), self.batch_size), desc=desc, leave=False, disable=not self.progress):
            chunk = flat[start:start + self.batch_size]
            # CPU generator state is global in transformers' sampling; seeded per chunk for exact resumes.
            torch.manual_seed(chunk_seed(seed, (first_seq or 0) + start))
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, width - len(p):] = torch.tensor(p)
                attn[i, width - len(p):] = 1
            # synced_gpus=False: transformers would otherwise keep FSDP ranks stepping together, but under
            # torchrun each rank generates on its own gathered copy (lightrl.dist.unsharded).
            gen = self.model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                      generation_config=gen_cfg, synced_gpus=False,
                                      output_scores=return_logprobs, return_dict_in_generate=return_logprobs)
            new = (gen.sequences if return_logprobs else gen)[:, width:]
            for row in new.tolist():
                out.append(cut_at_stop(row, self.stop_ids))
            if return_logprobs:
                # scores[t] [B, V]: the processed logits of step t (-inf outside the top-p nucleus).
                lp = torch.stack([torch.log_softmax(s.float(), -1) for s in gen.scores], 1)
                lp = lp.gather(2, new[:, :lp.shape[1], None]).squeeze(2).tolist()
                logprobs += [row[:len(c)] for row, c in zip(lp, out[-len(lp):])]
        base.generation_config = saved
        self.model.train(was_training)
        return (out, logprobs) if return_logprobs else out

    def sync_weights(self, model) -> None:
        """Nothing to do: generation runs on the trained model."""

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass


def chunk_seed(seed: int, first_seq: int) -> int:
    """A seed for the sequences from first_seq on, unrelated to every other (seed, first_seq)."""
    import numpy as np
    return int(np.random.SeedSequence([seed, first_seq]).generate_state(1, np.uint64)[0] >> 1)


def cut_at_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    """ids up to and including the first stop token (all of them when there is none)."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i + 1]
    return ids


class VLLMEngine:
    """vLLM on the same GPU as the trainer (colocated).

    The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the weights sync_weights
    sends (tensors on this GPU) reach its worker by reference: no copy, no serialization, and no
    transport of vLLM's weight-transfer engines (NCCL needs a second process, CUDA IPC handles cannot
    be opened by the process that made them). `gpu_memory_utilization` bounds its share of the GPU.
    With sleep mode, level-1 sleep drops the KV cache and moves its weights to CPU during updates.
    """

    def __init__(self, model_path: str, tokenizer, *, stop_ids: list[int], dtype: str, gpu_memory_utilization: float,
                 max_model_len: int, seed: int, sleep: bool, logprobs: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("--engine vllm needs vLLM: pip install 'lightrl[vllm]' (CUDA only), "
                              "or use --engine hf") from None
        self.tokenizer, self.use_sleep, self.stop_ids = tokenizer, sleep, stop_ids
        # generation_config="vllm": ignore the checkpoint's sampling defaults (see HFEngine).
        # logprobs: sampled tokens' log-probs after temperature / top-p (vLLM's default is the raw logits').
        extra = {"logprobs_mode": "processed_logprobs"} if logprobs else {}
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_sleep_mode=sleep, enable_prefix_caching=True, generation_config="vllm", **extra)
        self.asleep = False
        self.reload_api = has_reload_api()

    def generate(self, prompts: list[list[int]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, first_seq: int | None = None, desc: str = "rollout",
                 return_logprobs: bool = False):
        """As HFEngine.generate; first_seq (torchrun) gives each rank's call its own seed;
        return_logprobs needs the engine built with logprobs=True."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        self.wake()
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, top_k=-1,
                                repetition_penalty=1.0, max_tokens=max_new_tokens,
                                seed=seed if first_seq is None else chunk_seed(seed, first_seq),
                                stop_token_ids=self.stop_ids, logprobs=0 if return_logprobs else None)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        comps = [cut_at_stop(list(c.token_ids), self.stop_ids) for o in outputs for c in o.outputs]
        if not return_logprobs:
            return comps
        # logprobs=0: each step's dict holds the sampled token's entry.
        logprobs = [[step[t].logprob for step, t in zip(c.logprobs, ids)]
                    for c, ids in zip((c for o in outputs for c in o.outputs), comps)]
        return comps, logprobs

    def sync_weights(self, model) -> None:
        """Load the policy's current weights into the engine: lightrl.model.merged_weights (every weight;
        with LoRA only the merged layers its adapters change), by Hugging Face name. Where the installed
        vLLM has its weight-reload API (RELOAD_API) through that; older ones through each worker's
        model.load_weights, run by LLM.collective_rpc."""
        from lightrl.model import merged_weights
        self.wake()
        weights = whole_layers(merged_weights(model), model)
        if self.reload_api:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        else:
            self.llm.collective_rpc(_load_weights, args=(weights,))
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if self.use_sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


# vLLM's weight-reload API (layerwise reloading, vLLM >= 0.18): LLM.collective_rpc("reload_weights",
# kwargs={"weights_iterator": ...}) loads (name, tensor) pairs in place, through the model's own
# load_weights, and re-runs any per-layer processing (quantization, repacking) once a layer has all
# its weights. Its module is the feature check.
RELOAD_API = "vllm.model_executor.model_loader.reload"

# HF projections that vLLM loads into one fused layer (qkv_proj, gate_up_proj in its Llama, Qwen2/3,
# Mistral models).
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def has_reload_api() -> bool:
    """Whether the installed vLLM has its weight-reload API (RELOAD_API)."""
    import importlib
    try:
        importlib.import_module(RELOAD_API)
    except ImportError:
        return False
    return True


def whole_layers(weights, model):
    """weights ((HF name, tensor) pairs), then model's other current parameters of every vLLM layer they
    touch: a LoRA-changed projection's bias, and the projections vLLM fuses with it (LoRA on q_proj and
    v_proj leaves k_proj as it was). The reload API rebuilds a layer from the parts it is sent, so each
    gets all of its parts; a plain model's weights already are every parameter."""
    sent = set()
    for name, tensor in weights:
        sent.add(name)
        yield name, tensor
    if not hasattr(model, "get_base_model"):
        return
    layers = set()
    for name in sent:
        prefix, _, proj = name.rpartition(".")[0].rpartition(".")
        layers |= {f"{prefix}.{p}" for p in next((g for g in FUSED if proj in g), (proj,))}
    params = {n.replace(".base_layer.", "."): p for n, p in model.get_base_model().named_parameters()
              if "lora_" not in n}
    for name in sorted(params):
        if name not in sent and name.rpartition(".")[0] in layers:
            yield name, dist.full(params[name].detach())


def _load_weights(worker, weights) -> None:
    """Run on each vLLM worker by LLM.collective_rpc (vLLM before RELOAD_API): its model's load_weights."""
    worker.model_runner.model.load_weights(weights)
