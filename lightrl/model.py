"""The policy: device and rollout engine choice, model and tokenizer loading, the reference copy,
and the two forward passes the trainer needs (hidden states and token log-probs)."""
from __future__ import annotations

import copy
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lightrl import dist
from lightrl.config import Config
from lightrl.data import prompt_text
from lightrl.errors import UserError
from lightrl.kernels import linear_logprobs
from lightrl.kernels.policy_loss_torch import kl_terms
from lightrl.logs import logger, show_bars

REFERENCE = "reference"  # checkpoint subdirectory of a refreshed reference's weights


def setup(cfg: Config):
    """(device, engine name "hf" or "vllm", autocast dtype or None for fp32) for cfg (lightrl.preflight has
    refused impossible pairs); sets the CPU thread count and silences transformers' progress bars
    unless bars are shown."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not show_bars(cfg.progress):
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    engine_name = cfg.engine
    if engine_name == "auto":
        engine_name = "vllm" if device.type == "cuda" and _has_vllm() else "hf"
    amp_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "float32": None,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    return device, engine_name, amp_dtype


@dataclass
class Policy:
    """The model being trained with its tokenizer, and what the loop asks of it.

    ref_model: the frozen starting policy (None unless the algorithm row needs reference
    log-probs); init_path: the starting weights on disk (reference on resume, vLLM);
    encode(question) -> prompt ids; stop_ids: tokens that end a completion.
    """
    tokenizer: object
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    init_path: str
    encode: Callable[[str], list[int]]
    stop_ids: list[int]
    amp_dtype: torch.dtype | None
    temperature: float
    backend: str

    def weight(self, net) -> torch.Tensor:
        """net's lm_head weight [V, D] in the hidden states' dtype (a differentiable cast under autocast)."""
        w = net.get_output_embeddings().weight  # tied models: the same Parameter as the input embedding
        if hasattr(w, "full_tensor"):
            raise RuntimeError("Policy.weight: the lm_head is still sharded; call Policy.hidden first (a sharded "
                               "model's root forward gathers it and keeps it gathered for the loss)")
        return w if self.amp_dtype is None else w.to(self.amp_dtype)

    def hidden(self, net, mb) -> torch.Tensor:
        """Final (post-norm) hidden states [n, D] of net at the positions that predict mb's completion tokens."""
        device_type = mb.ids.device.type
        with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = _decoder_output(net, mb)
        hidden = out.last_hidden_state[mb.seq_index, mb.cols]
        return hidden if self.amp_dtype is None else hidden.to(self.amp_dtype)  # the final norm may return fp32

    @torch.no_grad()
    def logprobs(self, net, batch, micro_batch: int, return_entropy: bool = False):
        """Log-probs [N] f32 of every completion token of a StepBatch under net (policy or reference);
        with return_entropy, (log-probs, entropies [N] f32) from the same pass. Under torchrun the
        filler micro-batches that keep FSDP ranks in step (lightrl.dist.micro) run but are left out."""
        outs = []
        for mb, real in dist.micro(batch, micro_batch):
            out = linear_logprobs(self.hidden(net, mb), self.weight(net), mb.targets, temperature=self.temperature,
                                  return_entropy=return_entropy, backend=self.backend)
            if real:
                outs.append(out if return_entropy else (out,))
        empty = torch.zeros(0, device=batch.ids.device)
        logp = torch.cat([empty] + [o[0] for o in outs])
        return (logp, torch.cat([empty] + [o[1] for o in outs])) if return_entropy else logp

    @torch.no_grad()
    def token_kl(self, batch, micro_batch: int, estimator: str) -> torch.Tensor:
        """The KL(pi || ref) estimator [N] f32 of every completion token, 0 outside the mask (kl_in_reward)."""
        logp, ref_logp = (self.logprobs(net, batch, micro_batch) for net in (self.model, self.ref_model))
        return kl_terms(logp, ref_logp, batch.mask, estimator)[0]

    def sequence_kl(self, batch, micro_batch: int, estimator: str) -> torch.Tensor:
        """Per-sequence sums [S] f32 over mask tokens of the KL(pi || ref) estimator (kl_in_reward)."""
        return batch.seq_sum(self.token_kl(batch, micro_batch, estimator))

    @torch.no_grad()
    def refresh_reference(self) -> None:
        """The reference becomes a copy of the current policy (iterative DPO's new iteration). Under
        torchrun each rank copies its shards: the two models are sharded alike."""
        for net in (self.model, self.ref_model):
            dist.reshard(net)  # every parameter is its shard (a root may still be gathered)
        for p, ref in zip(self.model.parameters(), self.ref_model.parameters(), strict=True):
            dist.local(ref).copy_(dist.local(p))

    def save_reference(self, ckpt_dir: str) -> None:
        """Write the reference to ckpt_dir/reference/ (rows that refresh it: a resume needs it). Under
        torchrun every rank calls it (collective): the weights are gathered for rank 0 to write."""
        weights = dist.full_state_dict(self.ref_model) if dist.is_sharded(self.ref_model) else None
        if dist.is_main():
            self.ref_model.save_pretrained(os.path.join(ckpt_dir, REFERENCE), safe_serialization=True,
                                           state_dict=weights)

    @torch.no_grad()
    def entropy(self, hidden, mb) -> float:
        """Mean policy entropy over mb's mask tokens (0.0 without any), from hidden states of mb."""
        _, ent = linear_logprobs(hidden.detach(), self.weight(self.model).detach(), mb.targets,
                                 temperature=self.temperature, return_entropy=True, backend=self.backend)
        return ent[mb.mask].mean().item() if mb.mask.any() else 0.0


def _decoder_output(net, mb):
    """The decoder's output (last_hidden_state post-norm) for mb. A sharded model is called through its
    root, whose FSDP hooks gather the embeddings and lm_head and keep them gathered for the loss;
    logits_to_keep=[] leaves its logits empty. An AdaptersOff reference runs its peft model, adapters off."""
    if isinstance(net, AdaptersOff):
        with net.peft_model.disable_adapter():
            return _decoder_output(net.peft_model, mb)
    if not dist.is_sharded(net):
        return net.get_decoder()(input_ids=mb.ids, attention_mask=mb.attn, use_cache=False)
    box = []
    hook = net.get_decoder().register_forward_hook(lambda _mod, _args, out: box.append(out))
    try:
        net(input_ids=mb.ids, attention_mask=mb.attn, use_cache=False,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=mb.ids.device))
    finally:
        hook.remove()
    return box[0]


def load(cfg: Config, row, run_dir: str, ckpt: str | None, data_rows: list[dict], device, amp_dtype) -> Policy:
    """The policy in fp32 on device, in train mode, checked and patched as cfg asks; with a reference
    copy when row.needs_ref. ckpt: the checkpoint being resumed (None for a new run)."""
    tokenizer, model, init_path = _load_weights(cfg, run_dir, ckpt, data_rows, device)
    check_plain_lm_head(model, cfg.model)
    stop_ids = _stop_ids(tokenizer, model)
    if device.type == "cuda" and cfg.liger:
        _apply_liger(model)
    if cfg.lora_r:
        model = with_lora(model, cfg, ckpt)
    model.train()  # from_pretrained returns eval mode; gradient checkpointing only acts in train mode
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ref_model = None
    if row.needs_ref and cfg.lora_r:  # the base itself: adapters switched off, no second copy
        if row.ref_refresh:
            raise UserError("--lora-r with a row that refreshes its reference (iterative-dpo) is not supported: "
                            "the reference is the base model itself; run that row without LoRA")
        ref_model = AdaptersOff(model)
    elif row.needs_ref:  # the frozen starting policy (after the tiny model's warm start)
        ref_model = _from_pretrained(_reference_path(ckpt, row, init_path), device) if ckpt else copy.deepcopy(model)
        ref_model.requires_grad_(False).eval()
        if amp_dtype is not None:  # only ever run under autocast: half-precision storage is enough
            ref_model.to(amp_dtype)
    instruction = "" if cfg.model == "tiny" else cfg.instruction
    return Policy(tokenizer=tokenizer, model=model, ref_model=ref_model, init_path=init_path,
                  encode=_prompt_encoder(tokenizer, instruction, cfg.max_prompt_tokens),
                  stop_ids=stop_ids, amp_dtype=amp_dtype, temperature=cfg.temperature,
                  backend=cfg.backend)


def with_lora(model, cfg: Config, ckpt: str | None):
    """model (the base, fp32) frozen, with trainable peft LoRA adapters on cfg.lora_targets: new ones,
    or ckpt's when resuming. The lm_head (and a tied embedding) stays frozen."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise UserError("--lora-r needs peft: pip install 'lightrl[lora]'") from None
    if ckpt:
        return PeftModel.from_pretrained(model, ckpt, is_trainable=True)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = sorted(set(cfg.lora_targets) - names)
    if missing:
        raise UserError(f"--lora-targets {', '.join(missing)}: no such linear module in {cfg.model}; it has "
                        f"{', '.join(sorted(names))}")
    # task_type: a causal-LM peft model, whose adapter_config.json names no base class (under torchrun
    # the base's class is FSDP's subclass of it, which nothing could load).
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))


class AdaptersOff:
    """The reference policy of a LoRA run: the policy's own modules (sharded with it under torchrun)
    with its adapters disabled for each forward (_decoder_output), so no second copy of the weights."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def get_output_embeddings(self):
        return self.peft_model.get_output_embeddings()


def save_merged(policy, path: str, weights: dict | None = None) -> None:
    """The LoRA policy merged into its base (a plain transformers model) and the tokenizer, in path.

    weights: the peft model's whole state dict (under torchrun rank 0's dist.full_state_dict, since
    its model holds shards; tied duplicates may be left out), else the policy's own. A copy of the
    peft model is built on the meta device, takes these tensors, and peft merges it; safe_merge
    writes each merged weight into a new tensor, so the tensors passed in are left as they were.
    """
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    peft_model, live = policy.model, policy.model.get_base_model()
    weights = peft_model.state_dict() if weights is None else weights
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(copy.deepcopy(live.config))
        twin = get_peft_model(base, copy.deepcopy(peft_model.peft_config[peft_model.active_adapter]))
    base.generation_config = copy.deepcopy(live.generation_config)  # the checkpoint's own (EOS ids, sampling)
    missing = twin.load_state_dict(weights, strict=False, assign=True).missing_keys
    base.tie_weights()  # a tied lm_head left out of weights is the embedding again
    if any(p.is_meta for p in twin.parameters()):
        raise RuntimeError(f"save_merged: weights lack {sorted(missing)}")
    merged = twin.merge_and_unload(safe_merge=True)
    merged.save_pretrained(path, safe_serialization=True)
    policy.tokenizer.save_pretrained(path)


def rollout_engine(cfg: Config, policy: Policy, engine_name: str, resumed: bool, logprobs: bool = False):
    """The engine that samples completions: vLLM (weights synced from the policy on resume) or HF generate.
    logprobs: the row asks for the sampling log-probs (rollout correction)."""
    if engine_name == "vllm":
        from lightrl.rollout import VLLMEngine
        engine = VLLMEngine(policy.init_path, policy.tokenizer, stop_ids=policy.stop_ids,
                            dtype="bfloat16" if policy.amp_dtype is not None else "float32",
                            gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed, sleep=cfg.vllm_sleep,
                            logprobs=logprobs,
                            max_model_len=cfg.max_prompt_tokens + max(cfg.max_new_tokens, cfg.eval_max_new_tokens))
        if resumed:
            engine.sync_weights(policy.model)
        return engine
    from lightrl.rollout import HFEngine
    return HFEngine(policy.model, policy.tokenizer, batch_size=cfg.micro_batch, stop_ids=policy.stop_ids,
                    progress=show_bars(cfg.progress))


def reset_peak_memory(device) -> None:
    """Start a new peak for peak_memory_gb (CUDA; the CPU figure is the process's lifetime peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device) -> float:
    """Peak memory of this process on device: CUDA allocations, or on CPU the resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


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


def _reference_path(ckpt: str, row, init_path: str) -> str:
    """Where a resume finds the reference: the starting weights, or for rows that refresh it
    (ref_refresh) the copy saved with the checkpoint."""
    if not row.ref_refresh:
        return init_path
    path = os.path.join(ckpt, REFERENCE)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise UserError(f"{path}/model.safetensors is missing: this row refreshes its reference (ref_refresh), "
                        "so a resume needs the reference saved with the checkpoint; resume a checkpoint of this run")
    return path


def _has_vllm() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def _from_pretrained(path: str, device):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def _load_weights(cfg: Config, run_dir: str, ckpt: str | None, data_rows: list[dict], device):
    """(tokenizer, model in fp32 on device, path of the starting weights for the reference / vLLM)."""
    from transformers import AutoTokenizer
    if cfg.model == "tiny":
        from lightrl import tiny
        init_path = os.path.join(run_dir, "warm_start")
        if ckpt is None:  # build, warm-start and save the starting policy once per run
            tokenizer = tiny.build_tokenizer()
            model = tiny.build_model(tokenizer, seed=cfg.seed).to(device)
            tiny.warm_start(model, tokenizer, data_rows, steps=cfg.warm_start_steps, lr=cfg.warm_start_lr,
                            seed=cfg.seed, progress=show_bars(cfg.progress))
            if dist.is_main():  # every rank warm-starts alike; one writes
                model.save_pretrained(init_path)
                tokenizer.save_pretrained(init_path)
            dist.barrier()
            return tokenizer, model, init_path
    else:
        init_path = cfg.model
    source = ckpt if ckpt and not cfg.lora_r else init_path  # a LoRA checkpoint holds adapters only
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer, _from_pretrained(source, device), init_path


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
        logger.info(f"liger-kernel has no kernels for model type {model.config.model_type!r}; running without")
        return
    wanted = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    params = inspect.signature(fn).parameters
    fn(model=model, **{k: v for k, v in wanted.items() if k in params})
    logger.info(f"liger-kernel RMSNorm/RoPE/SwiGLU applied to {model.config.model_type}")


def merged_weights(model):
    """(name, tensor) pairs of what a rollout engine must load to sample like model, under the Hugging Face
    model's own names (model.layers.0.self_attn.q_proj.weight, ...; a tied lm_head once, as the embedding).
    A plain model: every parameter. A peft LoRA model: only the linear layers its adapters change, each
    base weight + peft's delta of every active adapter (LoraLayer.get_delta_weight, what merge_and_unload
    adds); embeddings, norms and lm_head stay what the engine loaded. Tensors keep the model's dtype and
    device, detached; FSDP2 shards (DTensors) are gathered whole (a collective: every rank iterates).
    Lazy: one merged tensor at a time."""
    if not hasattr(model, "get_base_model"):  # not a peft model
        for name, p in model.named_parameters():
            yield name, dist.full(p.detach())
        return
    from peft.tuners.lora import LoraLayer
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        with torch.no_grad():
            weight = dist.full(module.get_base_layer().weight.detach())
            for adapter in module.active_adapters:
                if adapter in module.lora_A and adapter not in module.merged_adapters:
                    weight = weight + dist.full(module.get_delta_weight(adapter)).to(weight.dtype)
        yield f"{name}.weight", weight
