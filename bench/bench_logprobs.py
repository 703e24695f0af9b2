"""Fused linear log-probs, forward + backward: lightrl.kernels.linear_logprobs against eager
PyTorch (materialised logits), torch.compile of eager, liger-kernel's fused linear cross
entropy, lightrl's torch backend on CUDA (lightrl_torch; on CPU it is the lightrl row), and the limit: the three N x D x V GEMMs (logits, d hidden, d weight) timed in
the same process. Prints a table and writes JSON to bench/results/.

Every candidate computes L = sum_i g_i logp_i with a fixed random g and back-propagates
to hidden and weight. Timing (median of round-robin rounds) and peak memory (a fresh
subprocess per candidate) are measured as bench/common.py describes.
"""
import argparse

import torch

from bench import common

CANDIDATES = ("limit", "eager", "compile", "liger", "lightrl", "lightrl_torch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, "logprobs", CANDIDATES)


def _inputs(args, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    dtype = common.DTYPES[args.dtype]
    # Scales give logits of a few units, like a trained LM head.
    hidden = torch.randn(args.n, args.d, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.v, args.d, generator=gen) / args.d ** 0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, args.v, (args.n,), generator=gen).to(device)
    grad = torch.randn(args.n, generator=gen).to(device)
    return hidden, weight, targets, grad


def _eager_logp(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def _make_step(name, inputs):
    """A callable that runs one forward+backward of candidate `name`, or raises with the reason it cannot."""
    hidden, weight, targets, grad = inputs
    if name == "limit":
        return common.gemm_limit_step(hidden, weight)
    if name == "eager":
        fn = _eager_logp
    elif name == "compile":
        fn = torch.compile(_eager_logp)
    elif name == "liger":
        if hidden.device.type != "cuda":
            raise RuntimeError("n/a (needs CUDA)")
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        loss = LigerFusedLinearCrossEntropyLoss(reduction="none")

        def fn(h, w, t):
            return -loss(w, h, t)  # per-token cross entropy = -logp
    elif name in ("lightrl", "lightrl_torch"):
        from lightrl.kernels import linear_logprobs
        if name == "lightrl_torch" and hidden.device.type != "cuda":
            raise RuntimeError("n/a (needs CUDA)")
        backend = "auto" if name == "lightrl" else "torch"

        def fn(h, w, t):
            return linear_logprobs(h, w, t, backend=backend)
    else:
        raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")

    def step():
        (fn(hidden, weight, targets) * grad).sum().backward()
        hidden.grad = weight.grad = None
    return step


def main(args) -> None:
    common.run("logprobs", "linear_logprobs fwd+bwd", args, _inputs, _make_step,
               shape={"n": args.n, "d": args.d, "v": args.v})
