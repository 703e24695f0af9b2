"""Fused policy loss, forward + backward: lightrl.kernels.fused_policy_loss against eager
PyTorch and liger-kernel. Prints a table and writes JSON to bench/results/.

Candidates (all compute the same loss of one algorithm row and d hidden, d weight):
  limit         the three N x D x V GEMMs alone (logits, d hidden, d weight)
  lightrl       fused_policy_loss, backend "auto" (torch on CPU: 3 GEMMs for token-level rows)
  lightrl_torch fused_policy_loss, backend "torch" (CUDA only: on CPU it is the "lightrl" row)
  lightrl_4gemm fused_policy_loss's generic path on the auto backend (forward pass, then backward pass)
  eager         materialised logits, log_softmax, the reference loss, autograd
  compile       torch.compile of eager
  liger_chunked liger-kernel's LigerFusedLinearGRPOLoss (compiled on CUDA only)
  liger_triton  liger-kernel's Triton grpo_loss on materialised logits (CUDA only)
Timing (median of round-robin rounds) and peak memory (a fresh subprocess per candidate)
are measured as bench/common.py describes.
"""
import argparse
import sys

import torch

from bench import common

CANDIDATES = ("limit", "lightrl", "lightrl_torch", "lightrl_4gemm", "eager", "compile", "liger_chunked",
              "liger_triton")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, "policy_loss", CANDIDATES)
    parser.add_argument("--seq-len", type=int, default=256, help="completion length T (N / T sequences)")
    parser.add_argument("--algo", default="grpo", help="row of lightrl.algos.ALGOS (token-level for liger parity)")


def _inputs(args, device):
    from lightrl.algos import get_algo

    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = common.DTYPES[args.dtype]
    n, t = args.n, args.seq_len
    if n % t:
        raise SystemExit(f"--n {n} must be a multiple of --seq-len {t}")
    hidden = (torch.randn(n, args.d, generator=g) / args.d ** 0.25).to(device, dtype)
    weight = (torch.randn(args.v, args.d, generator=g) / args.d ** 0.25).to(device, dtype)
    targets = torch.randint(0, args.v, (n,), generator=g).to(device)
    seq = torch.arange(n // t).repeat_interleave(t).to(device)
    mask = (torch.rand(n, generator=g) > 0.1).to(device)
    logp_guess = -torch.rand(n, generator=g).to(device) * 10  # only sets ratio / KL magnitudes
    old = logp_guess + 0.1 * torch.randn(n, generator=g).to(device)
    ref = logp_guess + 0.1 * torch.randn(n, generator=g).to(device)
    adv = torch.randn(n // t, generator=g).to(device)
    return dict(hidden=hidden, weight=weight, targets=targets, seq=seq, mask=mask, old=old, ref=ref, adv=adv,
                row=get_algo(args.algo), t=t, device=device)


def _liger_loss_type(row):
    return {"seq_mean_token_mean": "grpo", "token_mean": "bnpo", "token_sum_norm": "dr_grpo"}[row.aggregate]


def _make_step(name, x):
    """A closure running one forward + backward of candidate `name` on fresh leaf tensors."""
    from lightrl.kernels import LossScale, fused_policy_loss
    from lightrl.kernels import logprobs_torch, policy_loss_torch
    from lightrl.kernels.policy_loss import policy_impl

    fpl_module = sys.modules["lightrl.kernels.fused_policy_loss"]  # the package binds the name to the function
    row, t, device = x["row"], x["t"], x["device"]
    hidden = x["hidden"].detach().requires_grad_(True)
    weight = x["weight"].detach().requires_grad_(True)
    n = hidden.shape[0]
    b = n // t

    def clear():
        hidden.grad = None
        weight.grad = None

    if name == "limit":
        return common.gemm_limit_step(hidden, weight)
    if name == "lightrl":
        def step():
            clear()
            loss, _ = fused_policy_loss(hidden, weight, x["targets"], x["old"], x["ref"], x["adv"], x["mask"],
                                        x["seq"], row, scale=LossScale(constant=t))
            loss.backward()
        return step
    if name == "lightrl_torch":
        if device.type != "cuda":
            raise RuntimeError("n/a (needs CUDA)")

        def step():
            clear()
            loss, _ = fused_policy_loss(hidden, weight, x["targets"], x["old"], x["ref"], x["adv"], x["mask"],
                                        x["seq"], row, scale=LossScale(constant=t), backend="torch")
            loss.backward()
        return step
    if name == "lightrl_4gemm":
        from lightrl.kernels.backend import resolve_backend
        name = resolve_backend("auto", hidden.device)
        if name == "triton":
            from lightrl.kernels import logprobs_triton as lp_impl
        else:
            lp_impl = logprobs_torch

        def step():
            clear()
            loss, _ = fpl_module._FusedPolicyLoss.apply(
                lp_impl, policy_impl(name), hidden, weight, x["targets"], x["old"], x["ref"], x["adv"][x["seq"]],
                x["mask"], x["seq"], b, row, 1.0, t)
            loss.backward()
        return step
    if name in ("eager", "compile"):
        def eager_loss(h, w):
            logp = torch.log_softmax(h.float() @ w.float().t(), -1).gather(1, x["targets"][:, None])[:, 0]
            return policy_loss_torch.reference_policy_loss(
                logp, x["old"], x["ref"], x["adv"][x["seq"]], x["mask"], x["seq"], None, b, row, t)[0]
        loss_fn = eager_loss if name == "eager" else torch.compile(eager_loss)

        def step():
            clear()
            loss_fn(hidden, weight).backward()
        return step
    if name == "liger_chunked":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        loss_fn = LigerFusedLinearGRPOLoss(
            beta=row.kl_coef, compiled=device.type == "cuda", use_ref_model=row.kl_coef > 0, chunk_size=1,
            epsilon_low=row.eps_low, epsilon_high=row.eps_high, loss_type=_liger_loss_type(row),
            max_completion_length=t, importance_sampling_level=row.ratio)
        h3 = hidden.detach().view(b, t, -1).requires_grad_(True)
        args = (x["targets"].view(b, t), x["mask"].view(b, t).float(), x["adv"])

        def step():
            h3.grad = None
            weight.grad = None
            loss, _ = loss_fn(h3, weight, *args, ref_per_token_logps=x["ref"].view(b, t) if row.kl_coef else None,
                              old_per_token_logps=x["old"].view(b, t))
            loss.backward()
        return step
    if name == "liger_triton":
        if device.type != "cuda":
            raise RuntimeError("n/a (needs CUDA)")
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
        # It reads logits for L+1 positions and scores the first L: pad one position per sequence.
        h3 = torch.cat([hidden.detach().view(b, t, -1), hidden.detach().view(b, t, -1)[:, :1]], 1)
        h3.requires_grad_(True)

        def step():
            h3.grad = None
            weight.grad = None
            logits = h3 @ weight.t()
            loss, _ = triton_grpo_loss(logits, x["old"].view(b, t), x["ref"].view(b, t) if row.kl_coef else None,
                                       x["targets"].view(b, t), x["adv"], x["mask"].view(b, t).float(),
                                       temperature=1.0, beta=row.kl_coef, eps_low=row.eps_low,
                                       eps_high=row.eps_high, loss_type=_liger_loss_type(row),
                                       max_completion_length=t, importance_sampling_level=row.ratio, reduce=True)
            loss.backward()
        return step
    raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")


def main(args) -> None:
    common.run("policy_loss", "fused_policy_loss fwd+bwd", args, _inputs, _make_step,
               shape={"n": args.n, "d": args.d, "v": args.v, "seq_len": args.seq_len}, settings={"algo": args.algo})
