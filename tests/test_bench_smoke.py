"""The kernel benchmarks at tiny shapes: the table, the limit and eager columns, the n/a rows,
the peak-memory subprocesses and the JSON stay in working order."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(name, tmp_path, *options):
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "bench", name, "--n", "64", "--d", "32", "--v", "300", "--repeat", "2",
           "--device", "cpu", "--out", str(out), *options]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "x limit" in run.stdout and "x eager" in run.stdout and "n/a (needs CUDA)" in run.stdout
    result = json.loads(out.read_text())
    assert result["versions"]["torch"] and result["cpu_count"] >= 1 and len(result["load_avg_before_after"]) == 2
    return result, {r["name"]: r for r in result["candidates"]}


def _check_measured(rows, names):
    for name in names:
        assert len(rows[name]["times_ms"]) == 2 and rows[name]["median_ms"] > 0
        assert rows[name]["peak_mb"] >= 0
    assert rows["limit"]["x_limit"] == 1.0


def test_bench_logprobs_tiny(tmp_path):
    result, rows = _bench("logprobs", tmp_path, "--only", "limit,eager,liger,lightrl")
    assert result["shape"] == {"n": 64, "d": 32, "v": 300} and result["dtype"] == "fp32"
    _check_measured(rows, ("limit", "eager", "lightrl"))
    assert rows["eager"]["x_eager"] == 1.0
    assert "median_ms" not in rows["liger"] and rows["liger"]["note"] == "n/a (needs CUDA)"


def test_bench_policy_loss_tiny(tmp_path):
    result, rows = _bench("policy_loss", tmp_path, "--seq-len", "16", "--algo", "dapo",
                          "--only", "limit,lightrl,lightrl_torch")
    assert result["shape"] == {"n": 64, "d": 32, "v": 300, "seq_len": 16} and result["algo"] == "dapo"
    _check_measured(rows, ("limit", "lightrl"))
    assert rows["lightrl"]["x_eager"] is None  # no eager row asked for
    assert "median_ms" not in rows["lightrl_torch"] and rows["lightrl_torch"]["note"] == "n/a (needs CUDA)"


@pytest.mark.slow
def test_bench_gpu_dry_run(tmp_path):
    """python -m bench gpu --dry-run: every part of the device check runs on CPU and writes its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it where needed
    run = subprocess.run([sys.executable, "-m", "bench", "gpu", "--dry-run", "--out-dir", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["versions"]["torch"]
    parts = {p["part"]: p for p in summary["parts"]}
    assert set(parts) == {"tests", "train-triton", "train-torch", "logprobs-tiny", "policy_loss-tiny"}
    assert all(p["rc"] == 0 for p in parts.values())
    assert "collected" in parts["tests"]["summary"]
    for backend in ("triton", "torch"):
        train = json.loads((tmp_path / f"train-{backend}.json").read_text())
        assert train["steps"] == 2 and train["median_step_time_s"] > 0 and 0 <= train["reward_last3"] <= 1
    for bench in ("logprobs", "policy_loss"):
        rows = {r["name"]: r for r in json.loads((tmp_path / f"{bench}-tiny.json").read_text())["candidates"]}
        assert rows["limit"]["x_limit"] == 1.0 and rows["lightrl"]["median_ms"] > 0
        assert rows["lightrl_torch"]["note"] == "n/a (needs CUDA)"
        assert parts[f"{bench}-tiny"]["x_limit"]["lightrl"] == rows["lightrl"]["x_limit"]
def test_bench_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "bench", "scale", "--procs", "1,2", "--steps", "2", "--prompts-per-step", "4",
           "--group-size", "4", "--micro-batch", "8", "--lora-r", "4", "--out", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "update eff" in run.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [r["setup"] for r in runs] == ["x1 full", "x2 full", "x1 lora r=4", "x2 lora r=4"]
    assert runs[0]["update_efficiency"] == runs[2]["update_efficiency"] == 1.0
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_gb_per_process"] > 0 for r in runs)
