"""linear_logprobs: per-token log-probs (and entropy) straight from hidden states and the lm_head weight."""
import torch

from lightrl.kernels import logprobs_torch
from lightrl.kernels.backend import resolve_backend
from lightrl.kernels.logprobs_torch import IGNORE_INDEX

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _LinearLogprobs(torch.autograd.Function):
    """One autograd Function for both fused backends: `impl` is the backend module,
    which provides logprobs_forward / logprobs_backward with identical signatures."""

    @staticmethod
    def forward(ctx, impl, hidden, weight, targets, temperature, want_entropy):
        ctx.set_materialize_grads(False)  # an unused output arrives as None: its term is skipped
        logp, entropy, lse = impl.logprobs_forward(hidden, weight, targets, temperature, want_entropy)
        if entropy is None:
            entropy = lse.new_zeros(0)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.impl, ctx.temperature = impl, temperature
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        if entropy.numel() == 0:
            grad_entropy = None
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        grad_hidden, grad_weight = ctx.impl.logprobs_backward(
            hidden, weight, targets, ctx.temperature, lse, entropy, grad_logp, grad_entropy,
            want_grad_weight=ctx.needs_input_grad[2])
        return None, grad_hidden, grad_weight, None, None, None


def logprob_impl(name):
    """The backend module (logprobs_triton or logprobs_torch) providing logprobs_forward / logprobs_backward."""
    if name == "triton":
        from lightrl.kernels import logprobs_triton  # imported late: only where Triton can run
        return logprobs_triton
    return logprobs_torch


def check_logprob_inputs(hidden, weight, targets, temperature):
    """Validate shapes, dtypes, devices, temperature and target ids of a log-prob call; raise naming the bad input."""
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, D] and weight [V, D]; got hidden {tuple(hidden.shape)}, "
                         f"weight {tuple(weight.shape)} (flatten batch and sequence dims into N first)")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden is [N, D={hidden.shape[1]}] but weight is [V, D={weight.shape[1]}]; "
                         "the hidden size D must match")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must be [N={hidden.shape[0]}], got {tuple(targets.shape)}")
    if hidden.dtype not in _DTYPES or hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight must share one dtype of {_DTYPES}; got hidden {hidden.dtype}, "
                        f"weight {weight.dtype} (cast one to the other)")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 token ids, got {targets.dtype} (use targets.long())")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(f"hidden, weight and targets must be on one device; got {hidden.device}, "
                         f"{weight.device}, {targets.device}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    v = weight.shape[0]
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= v))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{i}] = {int(targets[i])} is outside the vocabulary [0, {v}); "
                         f"use {IGNORE_INDEX} to mark tokens without a target")


def linear_logprobs(hidden, weight, targets, *, temperature=1.0, return_entropy=False, backend="auto"):
    """log softmax(hidden @ weight.T / temperature)[i, targets[i]] without building the [N, V] logits.

    hidden [N, D], weight [V, D]: same dtype (fp32, bf16 or fp16), same device.
    targets [N] int64 in [0, V), or -100 for "no target" (logp 0, entropy 0, no gradient).
    Returns logp [N] fp32, or (logp, entropy) [N] fp32 each when return_entropy.
    Differentiable w.r.t. hidden and weight, through the entropy too.
    backend: "auto" (triton on CUDA, torch elsewhere), "triton", "torch", or "reference"
    (materialises the logits; for tests).
    """
    check_logprob_inputs(hidden, weight, targets, temperature)
    name = resolve_backend(backend, hidden.device)
    temperature = float(temperature)
    if name == "reference":
        return logprobs_torch.reference_linear_logprobs(hidden, weight, targets, temperature, return_entropy)
    logp, entropy = _LinearLogprobs.apply(logprob_impl(name), hidden, weight, targets, temperature, return_entropy)
    return (logp, entropy) if return_entropy else logp
