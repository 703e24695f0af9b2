"""Fused linear log-probs, forward + backward: lightrl.kernels.linear_logprobs against eager
PyTorch (materialised logits), torch.compile of eager, liger-kernel's fused linear cross
entropy, and the limit: the three N x D x V GEMMs (logits, d hidden, d weight) timed in
the same process. Prints a table and writes JSON to bench/results/.

Every candidate computes L = sum_i g_i logp_i with a fixed random g and back-propagates
to hidden and weight. Timing rounds go over all candidates in turn, so load from other
processes hits them alike; the median is reported. Peak memory is the extra memory one
step needs over its inputs: torch.cuda.max_memory_allocated on CUDA; on CPU, the peak
resident set (VmHWM, reset through /proc/self/clear_refs after a warm-up step) of a fresh
subprocess that runs one candidate, with glibc's mmap threshold fixed so that freed
blocks leave the resident set.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

CANDIDATES = ("limit", "eager", "compile", "liger", "lightrl")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4096, help="tokens N")
    parser.add_argument("--d", type=int, default=512, help="hidden size D")
    parser.add_argument("--v", type=int, default=32000, help="vocabulary size V")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--only", default=",".join(CANDIDATES), help=f"comma-separated subset of {CANDIDATES}")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/logprobs-<device>-<date>.json)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)


def _inputs(args, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[args.dtype]
    # Scales give logits of a few units, like a trained LM head.
    hidden = torch.randn(args.n, args.d, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.v, args.d, generator=gen) / args.d ** 0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, args.v, (args.n,), generator=gen).to(device)
    grad = torch.randn(args.n, generator=gen).to(device)
    return hidden, weight, targets, grad


def _eager_logp(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def _make_step(name, hidden, weight, targets, grad):
    """A callable that runs one forward+backward of candidate `name`, or raises with the reason it cannot."""
    if name == "limit":
        h, w = hidden.detach(), weight.detach()

        def step():
            logits = h @ w.t()
            logits @ w
            logits.t() @ h
        return step
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
    elif name == "lightrl":
        from lightrl.kernels import linear_logprobs

        def fn(h, w, t):
            return linear_logprobs(h, w, t)
    else:
        raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")

    def step():
        (fn(hidden, weight, targets) * grad).sum().backward()
        hidden.grad = weight.grad = None
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_kb(field):
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _memory_child(args, device):
    """Runs in a fresh process: prints the extra peak resident memory (MB) of one step."""
    step = _make_step(args.memory_child, *_inputs(args, device))
    step()  # warm-up: lazy initialisation and compilation are not the step's memory
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status_kb("VmRSS")
    step()
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") - base) / 1024}))


def _peak_memory_mb(name, args, device, step):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, "-m", "bench", "logprobs", "--memory-child", name, "--n", str(args.n), "--d", str(args.d),
           "--v", str(args.v), "--dtype", args.dtype, "--device", "cpu"]
    root = Path(__file__).resolve().parent.parent
    # A fixed mmap threshold makes glibc map and unmap every large block, so the
    # resident set follows live tensors (its adaptive threshold would keep freed
    # blocks of up to 32 MB resident and add noise of that size).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=1800, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _versions():
    found = {}
    for pkg in ("torch", "triton", "transformers", "liger-kernel"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _table(rows):
    lines = [f"{'name':<10} {'time ms':>10} {'peak MB':>10} {'x limit':>8} {'x eager':>8}  note"]
    for r in rows:
        lines.append(f"{r['name']:<10} {_fmt(r.get('median_ms'), '10.1f'):>10} {_fmt(r.get('peak_mb'), '10.1f'):>10} "
                     f"{_fmt(r.get('x_limit'), '8.2f'):>8} {_fmt(r.get('x_eager'), '8.2f'):>8}  {r.get('note', '')}")
    return "\n".join(lines)


def main(args) -> None:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.memory_child:
        return _memory_child(args, device)
    names = [c.strip() for c in args.only.split(",") if c.strip()]
    inputs = _inputs(args, device)
    rows, steps = [], {}
    for name in names:
        row = {"name": name, "times_ms": []}
        rows.append(row)
        try:
            step = _make_step(name, *inputs)
            t0 = time.perf_counter()
            step()  # warm-up (and compilation)
            _sync(device)
            row["warmup_s"] = time.perf_counter() - t0
            steps[name] = step
        except Exception as exc:  # a candidate that cannot run here is reported, not fatal
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            row["note"] = msg if msg.startswith("n/a") else f"n/a ({type(exc).__name__}: {msg[:120]})"
    if "lightrl" in steps:
        from lightrl.kernels.backend import resolve_backend
        next(r for r in rows if r["name"] == "lightrl")["note"] = f"backend={resolve_backend('auto', device)}"
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        for row in rows:
            if row["name"] in steps:
                _sync(device)
                t0 = time.perf_counter()
                steps[row["name"]]()
                _sync(device)
                row["times_ms"].append((time.perf_counter() - t0) * 1e3)
    load_after = os.getloadavg()
    for row in rows:
        if row["times_ms"]:
            row["median_ms"] = statistics.median(row["times_ms"])
        if row["name"] in steps and not args.no_memory:
            try:
                row["peak_mb"] = _peak_memory_mb(row["name"], args, device, steps[row["name"]])
            except Exception as exc:
                row["note"] = (row.get("note", "") + f" memory n/a: {exc}").strip()
    by = {r["name"]: r for r in rows}
    limit_ms = by.get("limit", {}).get("median_ms")
    eager_ms = by.get("eager", {}).get("median_ms")
    for row in rows:
        if row.get("median_ms") is not None:
            row["x_limit"] = row["median_ms"] / limit_ms if limit_ms else None
            row["x_eager"] = row["median_ms"] / eager_ms if eager_ms else None
    print(f"linear_logprobs fwd+bwd  N={args.n} D={args.d} V={args.v} {args.dtype} on {_device_name(device)} "
          f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; load avg {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}); median of {args.repeat}")
    print(_table(rows))
    ours, eager = by.get("lightrl", {}), by.get("eager", {})
    if ours.get("x_eager"):
        mem = (f"{ours['peak_mb'] / eager['peak_mb']:.3f}x eager"
               if ours.get("peak_mb") is not None and eager.get("peak_mb") else "not measured")
        print(f"lightrl vs eager: time {ours['x_eager']:.2f}x, peak memory {mem}")
    result = {
        "bench": "logprobs", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": _device_name(device), "versions": _versions(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_before_after": [load_before[0], load_after[0]],
        "shape": {"n": args.n, "d": args.d, "v": args.v}, "dtype": args.dtype, "repeat": args.repeat,
        "memory_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                          "fresh subprocess (MALLOC_MMAP_THRESHOLD_=65536), VmHWM after a "
                          "/proc/self/clear_refs reset, minus VmRSS"),
        "candidates": rows,
    }
    tag = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", _device_name(device).lower()).strip("-")
    out = Path(args.out) if args.out else RESULTS / f"logprobs-{tag}-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
