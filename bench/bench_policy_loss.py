"""Benchmark: fused_policy_loss forward + backward against eager PyTorch and liger-kernel.

Methods (all compute the same loss of one algorithm row and d hidden, d weight):
  three_gemm    the physical limit: logits, d hidden and d weight GEMMs alone (torch.mm)
  lightrl       fused_policy_loss, backend "auto" (torch on CPU: 3 GEMMs for token-level rows)
  lightrl_torch fused_policy_loss, backend "torch" (CUDA only: on CPU it is the "lightrl" row)
  lightrl_4gemm fused_policy_loss's generic path on the auto backend (forward pass, then backward pass)
  eager         materialised logits, log_softmax, the reference loss, autograd
  liger_chunked liger-kernel's LigerFusedLinearGRPOLoss (compiled on CUDA only)
  liger_triton  liger-kernel's Triton grpo_loss on materialised logits (CUDA only)
Peak memory: each method runs once in its own subprocess, so that the peak is its own: on
CUDA torch.cuda.max_memory_allocated, on CPU the growth of the process's max RSS over the
inputs (the baseline is taken after the inputs exist and one GEMM has warmed the BLAS).
Time: the methods run round-robin in one process (one warm-up each, then --repeats
rounds), so that load from other processes falls on all of them alike; median reported.

    python -m bench policy_loss --n 4096 --d 512 --v 32000 --dtype fp32
writes a Markdown table to stdout and JSON to bench/results/policy_loss_<device>.json.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

METHODS = ["three_gemm", "lightrl", "lightrl_torch", "lightrl_4gemm", "eager", "liger_chunked", "liger_triton"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4096, help="tokens N (batch * completion length)")
    parser.add_argument("--seq-len", type=int, default=256, help="completion length T (N / T sequences)")
    parser.add_argument("--d", type=int, default=512, help="hidden size D")
    parser.add_argument("--v", type=int, default=32000, help="vocabulary size V")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--algo", default="grpo", help="row of lightrl.algos.ALGOS (token-level for liger parity)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/policy_loss_<device>.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def _inputs(args, device):
    from lightrl.algos import get_algo

    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[args.dtype]
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
                row=get_algo(args.algo), t=t)


def _liger_loss_type(row):
    return {"seq_mean_token_mean": "grpo", "token_mean": "bnpo", "token_sum_norm": "dr_grpo"}[row.aggregate]


def _step_fn(method, x, device):
    """A closure running one forward + backward of `method` on fresh leaf tensors."""
    from lightrl.kernels import fused_policy_loss
    from lightrl.kernels import logprobs_torch, policy_loss_torch
    from lightrl.kernels.policy_loss import _impl

    fpl_module = sys.modules["lightrl.kernels.fused_policy_loss"]  # the package binds the name to the function
    row, t = x["row"], x["t"]
    hidden = x["hidden"].detach().requires_grad_(True)
    weight = x["weight"].detach().requires_grad_(True)
    n = hidden.shape[0]
    b = n // t

    def clear():
        hidden.grad = None
        weight.grad = None

    if method == "three_gemm":
        dz = torch.randn(n, weight.shape[0], device=device, dtype=hidden.dtype)

        def step():
            torch.mm(hidden, weight.t())
            torch.mm(dz, weight)
            torch.mm(dz.t(), hidden)
        return step
    if method == "lightrl":
        def step():
            clear()
            loss, _ = fused_policy_loss(hidden, weight, x["targets"], x["old"], x["ref"], x["adv"], x["mask"],
                                        x["seq"], row, loss_constant=t)
            loss.backward()
        return step
    if method == "lightrl_torch":
        if device.type != "cuda":
            return None

        def step():
            clear()
            loss, _ = fused_policy_loss(hidden, weight, x["targets"], x["old"], x["ref"], x["adv"], x["mask"],
                                        x["seq"], row, loss_constant=t, backend="torch")
            loss.backward()
        return step
    if method == "lightrl_4gemm":
        from lightrl.kernels.backend import resolve_backend
        name = resolve_backend("auto", hidden.device)
        if name == "triton":
            from lightrl.kernels import logprobs_triton as lp_impl
        else:
            lp_impl = logprobs_torch

        def step():
            clear()
            loss, _ = fpl_module._FusedPolicyLoss.apply(
                lp_impl, _impl(name), hidden, weight, x["targets"], x["old"], x["ref"], x["adv"][x["seq"]],
                x["mask"], x["seq"], b, row, 1.0, t)
            loss.backward()
        return step
    if method == "eager":
        def step():
            clear()
            logits = hidden.float() @ weight.float().t()
            logp = torch.log_softmax(logits, -1).gather(1, x["targets"][:, None])[:, 0]
            loss, _ = policy_loss_torch.reference_policy_loss(
                logp, x["old"], x["ref"], x["adv"][x["seq"]], x["mask"], x["seq"], None, b, row, t)
            loss.backward()
        return step
    if method == "liger_chunked":
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
    if method == "liger_triton":
        if device.type != "cuda":
            return None
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
    raise SystemExit(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _worker(args):
    """One method in a fresh process: peak memory of one forward + backward."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = _inputs(args, device)
    torch.mm(x["hidden"][:64], x["weight"][:64].t())  # BLAS warm-up before the memory baseline
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step = _step_fn(args.worker, x, device)
    if step is None:
        print(json.dumps({"skipped": "CUDA only"}))
        return
    step()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_extra_mb": peak / 2 ** 20}))


def _timings(args, methods):
    """Median time of each method, run round-robin in this process so that load from
    other processes on the machine falls on every method alike."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = _inputs(args, device)
    steps = {m: _step_fn(m, x, device) for m in methods}
    steps = {m: f for m, f in steps.items() if f is not None}
    times = {m: [] for m in steps}
    for m, f in steps.items():  # warm-up (and compilation where there is any)
        f()
    _sync(device)
    for _ in range(args.repeats):
        for m, f in steps.items():
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[m].append(time.perf_counter() - t0)
    return {m: {"ms_median": 1e3 * statistics.median(t), "ms_min": 1e3 * min(t)} for m, t in times.items()}


def main(args) -> None:
    if args.worker:
        _worker(args)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    methods = [m for m in args.methods.split(",") if m]
    results = {m: {} for m in methods}
    for m in methods:
        cmd = [sys.executable, "-m", "bench.bench_policy_loss", "--worker", m, "--n", str(args.n), "--seq-len",
               str(args.seq_len), "--d", str(args.d), "--v", str(args.v), "--dtype", args.dtype, "--algo", args.algo]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                              env=dict(os.environ))
        if proc.returncode:
            results[m] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            results[m].update(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"memory {m}: {results[m]}", file=sys.stderr)
    timed = _timings(args, [m for m in methods if "peak_extra_mb" in results[m]])
    for m, r in timed.items():
        results[m].update(r)
    limit = results.get("three_gemm", {}).get("ms_median")
    eager = results.get("eager", {})
    for r in results.values():
        if "ms_median" in r and limit:
            r["x_three_gemm"] = r["ms_median"] / limit
        if "peak_extra_mb" in r and eager.get("peak_extra_mb"):
            r["x_eager_memory"] = r["peak_extra_mb"] / eager["peak_extra_mb"]
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "n": args.n, "seq_len": args.seq_len, "d": args.d, "v": args.v,
            "dtype": args.dtype, "algo": args.algo, "repeats": args.repeats,
            "timing": "round-robin in one process, median of repeats after one warm-up",
            "memory": "peak bytes allocated above the inputs" if device == "cuda"
            else "growth of max RSS above the inputs (one process per method)"}
    print(markdown(meta, results))
    out = Path(args.out) if args.out else RESULTS / f"policy_loss_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def markdown(meta, results) -> str:
    lines = [f"fused policy loss fwd+bwd, {meta['algo']}, N={meta['n']} D={meta['d']} V={meta['v']} {meta['dtype']}, "
             f"{meta['device']}", "", "| method | ms (median) | x three-GEMM | peak extra MiB | x eager memory |",
             "|---|---|---|---|---|"]
    for m, r in results.items():
        if "ms_median" not in r:
            lines.append(f"| {m} | {r.get('skipped') or r.get('error')} | | | |")
            continue
        lines.append(f"| {m} | {r['ms_median']:.1f} | {r.get('x_three_gemm', float('nan')):.2f} | "
                     f"{r['peak_extra_mb']:.0f} | {r.get('x_eager_memory', float('nan')):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    main(parser.parse_args())
