"""torchrun: N processes (gloo on CPU, FSDP2) train like one process with the same global batch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lightrl import dist
from lightrl.logs import read_metrics


def torchrun(n: int, out_dir, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node n -m lightrl.run ARGS` (CPU) in a subprocess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "lightrl.run", "--device", "cpu", "--no-progress", "--out-dir", str(out_dir), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def small_args(model: str, name: str, *extra: str) -> list[str]:
    # 4 prompts x 4 completions, micro-batches of 4: each of 2 ranks samples whole chunks of the
    # 1-process step, so both see the same completions.
    return ["--model", model, "--instruction", "", "--eval-data", "", "--run-name", name, "--steps", "3",
            "--prompts-per-step", "4", "--group-size", "4", "--micro-batch", "4", "--max-new-tokens", "6",
            "--save-every", "1", "--keep-checkpoints", "3", *extra]


CASES = {  # one row per loss aggregate; reinforce-rej filters groups, so ranks keep different counts
    "seq_mean_token_mean": ["--algo", "grpo"],  # with the reference policy's KL
    "token_mean": ["--algo", "reinforce-rej"],
    "seq_mean_token_sum": ["--algo", "rloo"],
    "token_sum_norm": ["--algo", "dr-grpo"],
}


@pytest.mark.slow
@pytest.mark.parametrize("aggregate", list(CASES))
def test_two_processes_equal_one(aggregate, warm_model, tmp_path):
    runs = {}
    for n in (1, 2):
        done = torchrun(n, tmp_path / str(n), *small_args(warm_model, "r", *CASES[aggregate]))
        assert done.returncode == 0, done.stderr[-3000:]
        run = tmp_path / str(n) / "r"
        runs[n] = (read_metrics(str(run / "metrics.jsonl")),
                   [load_file(str(run / f"checkpoints/step_00000{s}/model.safetensors")) for s in (1, 3)])
        assert json.loads((run / "config.json").read_text())["prompts_per_step"] == 4
    (m1, w1), (m2, w2) = runs[1], runs[2]
    assert [r["step"] for r in m2] == [1, 2, 3]
    assert any(abs(r["loss"]) > 1e-4 for r in m1), "no learning signal: the comparison would be vacuous"
    for a, b in zip(m1, m2):
        assert a["samples"] == b["samples"] == 16 and a["groups"] == b["groups"]
        for k in ("loss", "reward_mean", "accuracy", "kept_frac", "completion_len_mean", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
    # After one update the weights agree to float rounding (measured: 3e-8). Later steps drift apart
    # by up to ~3e-5 in a few dozen q/k weights whose gradients sit at AdamW's eps (1e-8), where the
    # update g / (sqrt(v) + eps) is linear in g: one process resumed from the two step-1 states
    # (3e-8 apart) ends step 2 6.8e-6 apart too, so that is the optimizer's sensitivity, not the ranks'.
    (first1, last1), (first2, last2) = w1, w2
    assert sorted(last1) == sorted(last2)
    assert max(float((first1[k] - first2[k]).abs().max()) for k in first1) < 1e-6
    assert max(float((last1[k] - last2[k]).abs().max()) for k in last1) < 1e-4
    start = load_file(os.path.join(warm_model, "model.safetensors"))
    assert max(float((last1[k] - start[k]).abs().max()) for k in last1) > 1e-3, "the weights did not move"


@pytest.mark.slow
def test_refill_rows_run_per_rank(warm_model, tmp_path):
    # DAPO refills per rank: the ranks draw different numbers of prompts, their micro-batch counts
    # differ (fillers); two updates per batch take old log-probs through the sharded model too.
    done = torchrun(2, tmp_path, *small_args(warm_model, "dapo", "--algo", "dapo", "--updates-per-batch", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(str(tmp_path / "dapo" / "metrics.jsonl"))
    assert len(rows) == 3 and all(r["samples"] >= 16 and r["groups"] <= 4 for r in rows)
    assert any(r["refills"] > 0 for r in rows) and all(r["skipped"] or r["grad_norm"] > 0 for r in rows)


def test_prompts_must_split_over_ranks(tmp_path):
    done = torchrun(2, tmp_path, "--run-name", "odd", "--steps", "1", "--prompts-per-step", "3",
                    "--warm-start-steps", "0", timeout=120)
    assert done.returncode != 0
    assert "--prompts-per-step 3 does not split over 2 processes; pass a multiple of 2" in done.stderr


def test_single_process_functions_pass_through():
    # Without torchrun nothing is reduced: the plain path's numbers stay exactly as they were.
    assert not dist.active() and dist.world() == 1 and dist.is_main()
    m = {"reward_mean": 0.25, "samples": 16}
    assert dist.step_metrics(m, samples=16, seqs=16) is m
    assert dist.total(2.5) == 2.5 and dist.any_true(False) is False and dist.all_true(True) is True
    assert dist.shard_rows([1, 2, 3]) == ([1, 2, 3], None)


@pytest.mark.slow
def test_resume_with_two_processes_is_exact_and_one_process_loads_it(warm_model, tmp_path):
    args = lambda name, *extra: small_args(warm_model, name, "--algo", "grpo", *extra)  # noqa: E731
    assert torchrun(2, tmp_path, *args("full")).returncode == 0
    assert torchrun(2, tmp_path, *args("part", "--steps", "2")).returncode == 0
    done = torchrun(2, tmp_path, "--resume", str(tmp_path / "part"), "--steps", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    full, part = (read_metrics(str(tmp_path / n / "metrics.jsonl")) for n in ("full", "part"))
    assert [r["loss"] for r in part] == [r["loss"] for r in full]
    ckpt = tmp_path / "part" / "checkpoints" / "step_000003"
    # The optimizer state is in torch.distributed.checkpoint shards, one file per rank, under the manifest.
    assert sorted(p.name for p in (ckpt / "optimizer").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert "optimizer/.metadata" in json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "optimizer" not in torch.load(ckpt / "trainer_state.pt", weights_only=False)
    w_full = load_file(str(tmp_path / "full" / "checkpoints" / "step_000003" / "model.safetensors"))
    w_part = load_file(str(ckpt / "model.safetensors"))
    assert all(bool((w_full[k] == w_part[k]).all()) for k in w_full)
    # The checkpoint is a plain transformers model, and a run without torchrun continues it
    # (the shards load into one process's optimizer).
    from transformers import AutoModelForCausalLM
    loaded = AutoModelForCausalLM.from_pretrained(str(ckpt)).state_dict()
    assert all(bool((loaded[k] == w_part[k]).all()) for k in w_part)
    plain = subprocess.run([sys.executable, "-m", "lightrl.run", "--device", "cpu", "--no-progress",
                            "--resume", str(tmp_path / "part"), "--steps", "4"], capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert [r["step"] for r in read_metrics(str(tmp_path / "part" / "metrics.jsonl"))] == [1, 2, 3, 4]


def _children(pid: int) -> list[int]:
    return [int(c) for t in os.listdir(f"/proc/{pid}/task")
            for c in open(f"/proc/{pid}/task/{t}/children").read().split()]


def _environ(pid: int) -> dict:
    return dict(kv.split("=", 1) for kv in open(f"/proc/{pid}/environ").read().split("\0") if "=" in kv)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the ranks through Linux /proc")
def test_a_killed_rank_stops_the_job_naming_it(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "lightrl.run", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path), "--run-name", "k",
           "--steps", "500", "--warm-start-steps", "20", "--prompts-per-step", "4", "--group-size", "4",
           "--micro-batch", "4", "--eval-data", ""]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "k" / "metrics.jsonl"
    try:
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
            time.sleep(0.2)  # training has begun: both ranks are in the step loop
        assert job.poll() is None, job.stderr.read()[-3000:]
        victim = next(c for c in _children(job.pid) if _environ(c).get("RANK") == "1")
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and time.time() - killed < 60
    # torchrun's summary names the rank that died first and how.
    root_cause = err[err.index("Root Cause"):]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "SIGKILL" in root_cause
