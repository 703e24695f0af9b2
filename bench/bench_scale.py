"""Data-parallel scaling: the same run (same global batch, seeds and steps) under torchrun with
1, 2, ... processes; per-step time, update time, tokens/s over all ranks, peak memory per
process, and the update phase's scaling efficiency T(1) / (N x T(N)).

    python -m bench scale --procs 1,2 --device cpu
writes bench/results/scale-<device>-<date>.json. On CPU (gloo) the processes share the
machine's cores, so the figures show the overhead of sharding and all-reduces, not a
speed-up; with N GPUs (--device cuda --procs 1,2,4,8) the efficiency is the number to watch
(goal: >= 0.9 for the update phase). Each run is a fresh `torchrun --standalone` of
`python -m lightrl.run` on the tiny model; the first step (warm-up) is left out of the medians.
Every process count runs full fine-tuning and LoRA (--lora-r; 0 = full fine-tuning only); each
kind's efficiency is against its own one-process run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    parser.add_argument("--steps", type=int, default=6, help="RL steps per run (the first is a warm-up)")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="global prompts per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank of the LoRA runs (0 = skip them)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/scale-<device>-<date>.json)")


def _run(n: int, args, out_dir: str, lora_r: int) -> dict:
    """n processes under torchrun; lora_r 0: full fine-tuning."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
    lora = ["--lora-r", str(lora_r)] if lora_r else []
    cmd = [sys.executable, *torchrun, "-m", "lightrl.run", *lora, "--device", args.device, "--no-progress",
           "--out-dir", out_dir, "--run-name", "r", "--eval-data", "", "--warm-start-steps", "100",
           "--steps", str(args.steps), "--save-every", "0",
           "--prompts-per-step", str(args.prompts_per_step), "--group-size", str(args.group_size),
           "--micro-batch", str(args.micro_batch)]
    done = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    setup = f"x{n} lora r={lora_r}" if lora_r else f"x{n} full"
    if done.returncode != 0:
        raise RuntimeError(f"{setup} failed:\n{done.stderr[-2000:]}")
    with open(os.path.join(out_dir, "r", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][1:]  # step 1: warm-up
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"setup": setup, "procs": n, "lora_r": lora_r, "step_s": med("step_time"), "rollout_s": med("rollout_time"),
            "update_s": med("update_time"),
            "tokens_per_s": med("tokens_per_s"), "peak_mem_gb_per_process": max(r["peak_mem_gb"] for r in rows),
            "loss_last": rows[-1].get("loss"), "reward_mean_last": rows[-1]["reward_mean"]}


def main(args) -> None:
    procs = [int(p) for p in args.procs.split(",")]
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for lora_r in sorted({0, args.lora_r}):
            runs = [_run(n, args, os.path.join(tmp, f"{n}-{lora_r}"), lora_r) for n in procs]
            base = next((r for r in runs if r["procs"] == 1), None)
            for r in runs:
                r["update_efficiency"] = base["update_s"] / (r["procs"] * r["update_s"]) if base else None
            results += runs
    print(f"{'setup':<16} {'step s':>8} {'rollout s':>10} {'update s':>9} {'tok/s':>9} {'peak GB/proc':>13} "
          f"{'update eff':>10}")
    for r in results:
        eff = "-" if r["update_efficiency"] is None else f"{r['update_efficiency']:.2f}"
        print(f"{r['setup']:<16} {r['step_s']:>8.3f} {r['rollout_s']:>10.3f} {r['update_s']:>9.3f} "
              f"{r['tokens_per_s']:>9.0f} {r['peak_mem_gb_per_process']:>13.3f} {eff:>10}")
    result = {"bench": "scale", "device": args.device, "versions": common.versions(), "cpu_count": os.cpu_count(),
              "load_avg_before_after": [load_before[0], os.getloadavg()[0]],
              "settings": {k: getattr(args, k) for k in ("steps", "prompts_per_step", "group_size", "micro_batch")},
              "lora_r": args.lora_r, "runs": results}
    path = common.write_json(result, "scale", "cpu" if args.device == "cpu" else "cuda", args.out)
    print(f"wrote {path}")
