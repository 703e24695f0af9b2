"""The one prepared device check: everything a first GPU session should measure, in one command.

    python -m bench gpu               # on a CUDA machine; under 8 minutes on one H100 / H200
    python -m bench gpu --dry-run     # the same code path on CPU at tiny shapes (part of the CPU tests)

Parts, in this order, each a subprocess with its own time cap (the remaining budget bounds
every cap), each writing one JSON into one folder (default bench/results/gpu-<device>-<date>/):
  tests.json                   pytest -m gpu (the GPU test tier), its exit status and summary line
  logprobs-liger.json, policy_loss-liger.json
                               python -m bench logprobs / policy_loss in bf16 at Liger's published
                               shape (N=8192 D=4096 V=131072): the three-GEMM limit, eager,
                               torch.compile, Liger, and both lightrl strategies (Triton four-GEMM,
                               torch chunked three-GEMM)
  train-triton.json, train-torch.json
                               a 20-step embedded training run (python -m lightrl.run) with
                               --backend triton and --backend torch: reward, step and update
                               times, tokens/s, peak memory from metrics.jsonl
  logprobs-qwen2.5-7b.json, policy_loss-qwen2.5-7b.json
                               the same benchmarks at Qwen2.5-7B's head (N=16384 D=3584 V=152064)
  summary.json                 device, versions, every part's exit status and time, the ratios
                               to the limit of the lightrl candidates
The dry run uses CPU, fp32, one tiny shape, one timed round, 2 training steps and
TRITON_INTERPRET=1 for the Triton backend; its numbers mean nothing, it only keeps this
script from rotting (tests/test_bench_smoke.py runs it).
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import common

SHAPES = {"liger": dict(n=8192, d=4096, v=131072), "qwen2.5-7b": dict(n=16384, d=3584, v=152064)}
DRY_SHAPES = {"tiny": dict(n=64, d=32, v=300)}  # one shape: the second would run the same code again
BUDGET_S = 460  # the device check must finish within 8 minutes; the rest is start-up
# Per-part caps on the GPU (seconds; warm-ups include compilation). Parts run in order of value,
# so when the budget runs out it is the second benchmark shape that is cut.
CAPS = {"tests": 60, "train": 75, "logprobs": 100, "policy_loss": 100}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton through the interpreter")
    parser.add_argument("--out-dir", default=None, help="folder for the JSON files "
                        "(default bench/results/gpu-<device>-<date>, or a temporary folder with --dry-run)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per benchmark candidate")


def _run(cmd, part, dry, deadline, env=None):
    """Runs cmd from the repository root within min(its cap, time left); (exit status, seconds, stdout, stderr).
    The dry run's caps are three times longer: 2 shared CPU cores and the interpreter are slow."""
    limit = max(1.0, min(CAPS[part] * (3 if dry else 1), deadline - time.monotonic()))
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=limit,
                             env=dict(os.environ, **(env or {})))
        return out.returncode, time.monotonic() - t0, out.stdout, out.stderr
    except subprocess.TimeoutExpired as exc:
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return "timeout", time.monotonic() - t0, text(exc.stdout), text(exc.stderr) + f"\nkilled after {limit:.0f} s"


def _tail(text, lines=30):
    return "\n".join(text.strip().splitlines()[-lines:])


def _tests(dry, deadline):
    # The dry run collects the tier only: on CPU every gpu test is skipped anyway.
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"] + (["--co"] if dry else [])
    rc, secs, out, err = _run(cmd, "tests", dry, deadline)
    return dict(part="tests", command=" ".join(cmd[2:]), rc=rc, seconds=round(secs, 1), summary=_tail(out, 1),
                output_tail=_tail(out + err))


def _train(dry, deadline, backend):
    # The run directory (checkpoints, curves) is scratch: only the JSON summary is kept.
    run_dir = Path(tempfile.mkdtemp(prefix=f"lightrl-gpu-train-{backend}-"))
    cmd = [sys.executable, "-m", "lightrl.run", "--backend", backend, "--no-progress", "--out-dir",
           str(run_dir.parent), "--run-name", run_dir.name]
    cmd += ["--device", "cpu", "--steps", "2", "--warm-start-steps", "5"] if dry else ["--device", "cuda",
                                                                                       "--steps", "20"]
    env = {"TRITON_INTERPRET": "1"} if dry and backend == "triton" else {}
    rc, secs, out, err = _run(cmd, "train", dry, deadline, env)
    result = dict(part=f"train-{backend}", command=" ".join(cmd[1:]), rc=rc, seconds=round(secs, 1))
    metrics_path = run_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    steps = [m for m in lines if "reward_mean" in m]
    if steps:
        med = lambda key: sorted(m[key] for m in steps)[len(steps) // 2]
        result.update(steps=len(steps), reward_first3=sum(m["reward_mean"] for m in steps[:3]) / len(steps[:3]),
                      reward_last3=sum(m["reward_mean"] for m in steps[-3:]) / len(steps[-3:]),
                      median_step_time_s=med("step_time"), median_update_time_s=med("update_time"),
                      median_tokens_per_s=med("tokens_per_s"), max_peak_mem_gb=max(m["peak_mem_gb"] for m in steps))
    if rc != 0:
        result["output_tail"] = _tail(out + err)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _bench(folder, dry, deadline, bench, shape_name, shape, repeat):
    out_json = folder / f"{bench}-{shape_name}.json"
    cmd = [sys.executable, "-m", "bench", bench, "--n", str(shape["n"]), "--d", str(shape["d"]), "--v",
           str(shape["v"]), "--repeat", str(repeat), "--out", str(out_json)]
    cmd += ["--device", "cpu", "--dtype", "fp32", "--no-memory"] if dry else ["--device", "cuda", "--dtype", "bf16"]
    if bench == "policy_loss":
        cmd += ["--seq-len", "16" if dry else "1024", "--algo", "grpo"]
    rc, secs, out, err = _run(cmd, bench, dry, deadline)
    result = dict(part=f"{bench}-{shape_name}", command=" ".join(cmd[1:]), rc=rc, seconds=round(secs, 1))
    if out_json.exists():
        rows = json.loads(out_json.read_text())["candidates"]
        result["x_limit"] = {r["name"]: r.get("x_limit") for r in rows}
        result["notes"] = {r["name"]: r["note"] for r in rows if r.get("note")}
    if rc != 0:
        result["output_tail"] = _tail(out + err)
    return result


def main(args) -> None:
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("python -m bench gpu needs CUDA; --dry-run runs the same parts on CPU at tiny shapes")
    device = torch.device("cpu" if dry else "cuda")
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    folder = Path(args.out_dir) if args.out_dir else (
        Path(os.environ.get("TMPDIR", "/tmp")) / f"lightrl-gpu-dry-run-{os.getpid()}" if dry
        else common.RESULTS / f"gpu-{common.device_tag(device)}-{date}")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + (BUDGET_S if not dry else 3 * BUDGET_S)
    shapes = list((DRY_SHAPES if dry else SHAPES).items())
    benches = [[lambda b=b, s=s, sh=sh: _bench(folder, dry, deadline, b, s, sh, 1 if dry else args.repeat)
              for b in ("logprobs", "policy_loss")] for s, sh in shapes]
    parts = [lambda: _tests(dry, deadline), *benches[0],
             lambda: _train(dry, deadline, "triton"), lambda: _train(dry, deadline, "torch"),
             *(p for later in benches[1:] for p in later)]
    results = []
    for part in parts:
        result = part()
        results.append(result)
        if not result["part"].startswith(("logprobs", "policy_loss")):  # the benchmarks write their own JSON
            (folder / f"{result['part']}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"{result['part']:<24} rc={result['rc']!s:<8} {result['seconds']:6.1f} s  "
              f"{result.get('summary') or result.get('x_limit') or ''}", flush=True)
    summary = dict(bench="gpu", dry_run=dry, date=datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), device_name=common.device_name(device), versions=common.versions(),
        total_s=round(time.monotonic() - start, 1), parts=results)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {folder} ({summary['total_s']:.0f} s)")
    if any(r["rc"] != 0 for r in results):
        raise SystemExit(f"failed parts: {[r['part'] for r in results if r['rc'] != 0]}")
