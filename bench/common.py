"""What the kernel benchmarks share: options, timing, peak memory, the table and the JSON.

A kernel benchmark supplies its candidates (name -> one forward + backward step) and calls
run(); bench_verifier uses only versions() and write_json().

Time: every candidate runs once as a warm-up (and compilation), then --repeat rounds go
over all candidates in turn, so load from other processes falls on them alike; the
median is reported.
Peak memory: the extra memory one step needs over its inputs, after the warm-up step. On
CUDA in the same process: torch.cuda.max_memory_allocated counts live tensors exactly, and
a fresh process would compile every torch.compile candidate again. On CPU each candidate
runs in a fresh subprocess (`python -m bench NAME --memory-child CANDIDATE`): the peak
resident set (VmHWM, reset through /proc/self/clear_refs), with glibc's mmap threshold
fixed so that freed blocks leave the resident set.
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "triton", "transformers", "liger-kernel")
CPU_MEMORY_METHOD = ("fresh subprocess (MALLOC_MMAP_THRESHOLD_=65536), VmHWM after a warm-up step and a "
                     "/proc/self/clear_refs reset, minus VmRSS")
CUDA_MEMORY_METHOD = "in process, torch.cuda.max_memory_allocated during one step after the warm-up, minus memory_allocated"


def add_arguments(parser: argparse.ArgumentParser, bench: str, candidates) -> None:
    """The options every kernel benchmark has: shape, dtype, device, timing, candidates, output."""
    parser.add_argument("--n", type=int, default=4096, help="tokens N")
    parser.add_argument("--d", type=int, default=512, help="hidden size D")
    parser.add_argument("--v", type=int, default=32000, help="vocabulary size V")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds after one warm-up (median reported)")
    parser.add_argument("--only", default=",".join(candidates), help=f"comma-separated subset of {','.join(candidates)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--out", default=None, help=f"JSON path (default bench/results/{bench}-<device>-<date>.json)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions(packages=PACKAGES) -> dict:
    """Installed version of each distribution, None where it is missing."""
    found = {}
    for pkg in packages:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def device_tag(device: torch.device) -> str:
    """'cpu', or the GPU's name as a file-name part ('nvidia-h100-80gb-hbm3')."""
    return "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_json(result: dict, bench: str, tag: str, out=None) -> Path:
    """Writes result to `out`, default bench/results/<bench>-<tag>-<UTC date>.json; returns the path."""
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    path = Path(out) if out else RESULTS / f"{bench}-{tag}-{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def gemm_limit_step(hidden, weight):
    """The limit of a fused log-prob forward + backward: the three N x D x V GEMMs alone
    (logits, d hidden, d weight), with the logits standing in for d logits."""
    h, w = hidden.detach(), weight.detach()

    def step():
        logits = h @ w.t()
        logits @ w
        logits.t() @ h
    return step


def _status_kb(field):
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _cuda_peak_mb(step) -> float:
    """Extra peak CUDA memory (MB) of one step of an already warmed-up candidate."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _memory_child(step, device) -> None:
    """Runs in a fresh process (CPU): prints the extra peak memory (MB) of one step over its inputs."""
    step()  # warm-up: lazy initialisation and compilation are not the step's memory
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status_kb("VmRSS")
    step()
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") - base) / 1024}))


def _peak_memory_mb(bench, name, options, device) -> float:
    cmd = [sys.executable, "-m", "bench", bench, "--memory-child", name, "--device", device.type]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    # A fixed mmap threshold makes glibc map and unmap every large block, so the resident
    # set follows live tensors (its adaptive threshold would keep freed blocks of up to
    # 32 MB resident and add noise of that size).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(rows) -> str:
    lines = [f"{'name':<14} {'time ms':>10} {'peak MB':>10} {'x limit':>8} {'x eager':>8}  note"]
    for r in rows:
        lines.append(f"{r['name']:<14} {_fmt(r.get('median_ms'), '10.1f'):>10} {_fmt(r.get('peak_mb'), '10.1f'):>10} "
                     f"{_fmt(r.get('x_limit'), '8.2f'):>8} {_fmt(r.get('x_eager'), '8.2f'):>8}  {r.get('note', '')}")
    return "\n".join(lines)


def _reason(exc) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if msg.startswith("n/a") else f"n/a ({type(exc).__name__}: {msg[:120]})"


def run(bench: str, title: str, args, make_inputs, make_step, shape: dict, settings: dict | None = None) -> dict:
    """Times and measures the candidates in args.only, prints the table and writes the JSON.

    make_inputs(args, device) builds the inputs once; make_step(name, inputs) returns a
    callable running one forward + backward of candidate `name` on them, or raises
    RuntimeError("n/a (why)") where the candidate cannot run here. shape (n, d, v, ...) and
    settings (e.g. the algorithm) are recorded in the JSON and passed on to the memory
    subprocesses. Candidate "limit" is the x limit column's denominator, "eager" the x eager
    column's. Returns the JSON dict (empty in a memory subprocess).
    """
    settings = settings or {}
    device = resolve_device(args.device)
    options = {**shape, "dtype": args.dtype, **settings}
    if args.memory_child:
        _memory_child(make_step(args.memory_child, make_inputs(args, device)), device)
        return {}
    inputs = make_inputs(args, device)
    rows, steps = [], {}
    for name in [c.strip() for c in args.only.split(",") if c.strip()]:
        row = {"name": name, "times_ms": []}
        rows.append(row)
        try:
            step = make_step(name, inputs)
            t0 = time.perf_counter()
            step()  # warm-up (and compilation)
            sync(device)
            row["warmup_s"] = time.perf_counter() - t0
            steps[name] = step
        except Exception as exc:  # a candidate that cannot run here is reported, not fatal
            row["note"] = _reason(exc)
    by = {r["name"]: r for r in rows}
    if "lightrl" in steps:
        from lightrl.kernels.backend import resolve_backend
        by["lightrl"]["note"] = f"backend={resolve_backend('auto', device)}"
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        for row in rows:
            if row["name"] in steps:
                sync(device)
                t0 = time.perf_counter()
                steps[row["name"]]()
                sync(device)
                row["times_ms"].append((time.perf_counter() - t0) * 1e3)
    load_after = os.getloadavg()
    for row in rows:
        if row["times_ms"]:
            row["median_ms"] = statistics.median(row["times_ms"])
            if not args.no_memory:
                try:
                    row["peak_mb"] = (_cuda_peak_mb(steps[row["name"]]) if device.type == "cuda"
                                      else _peak_memory_mb(bench, row["name"], options, device))
                except Exception as exc:
                    row["note"] = (row.get("note", "") + f" memory n/a: {exc}").strip()
    limit_ms = by.get("limit", {}).get("median_ms")
    eager_ms = by.get("eager", {}).get("median_ms")
    for row in rows:
        if "median_ms" in row:
            row["x_limit"] = row["median_ms"] / limit_ms if limit_ms else None
            row["x_eager"] = row["median_ms"] / eager_ms if eager_ms else None
    described = " ".join(f"{k.upper() if len(k) == 1 else k}={v}" for k, v in options.items() if k != "dtype")
    print(f"{title}  {described} {args.dtype} on {device_name(device)} ({os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads; load avg {load_before[0]:.1f} -> {load_after[0]:.1f}); "
          f"median of {args.repeat}")
    print(table(rows))
    eager = by.get("eager", {})
    for row in rows:
        if row["name"].startswith("lightrl") and row.get("x_eager"):
            mem = (f"{row['peak_mb'] / eager['peak_mb']:.3f}x eager"
                   if row.get("peak_mb") is not None and eager.get("peak_mb") else "not measured")
            print(f"{row['name']} vs eager: time {row['x_eager']:.2f}x, peak memory {mem}")
    result = {
        "bench": bench, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": device_name(device), "versions": versions(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_before_after": [load_before[0], load_after[0]],
        "shape": shape, "dtype": args.dtype, **settings, "repeat": args.repeat,
        "timing": "one warm-up each, then round-robin rounds over the candidates in one process; median",
        "memory_method": None if args.no_memory else CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD,
        "candidates": rows,
    }
    print(f"wrote {write_json(result, bench, device_tag(device), args.out)}")
    return result
