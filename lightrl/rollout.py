"""Rollout engines: prompts (token ids) -> n sampled completions each (token ids).

hf   transformers `generate` on the policy model itself (any device; the default
     without CUDA). Nothing to sync: it samples from the weights being trained.
vllm vLLM colocated on the training GPU (optional extra `pip install lightrl[vllm]`).
     Sleep mode frees its memory while the trainer updates; after every optimizer
     step the new weights are loaded into it. This path needs CUDA and is not
     exercised by the CPU test suite.

Both return completions as lists of token ids, ending at (and including) the first
stop token (EOS, or the end-of-turn token of chat models) when one was produced, in
prompt-major order: prompt 0's n samples, then prompt 1's, and so on.
"""
from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm


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

    The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so new weights can be
    handed to its model object directly; `gpu_memory_utilization` bounds its share of the GPU.
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
        """Load the trainer's current weights into the engine (vLLM's model.load_weights)."""
        self.wake()
        params = ((name, p.detach()) for name, p in model.state_dict().items())
        runner_model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        runner_model.load_weights(params)
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
