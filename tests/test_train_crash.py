"""kill -9 at random moments of a real training process, then --resume: same metrics as an uninterrupted run."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lightrl.logs import read_metrics

KEYS = ["reward_mean", "accuracy", "loss", "grad_norm", "kl_mean", "entropy", "completion_len_mean"]


def _args(model: str, out: str, name: str) -> list[str]:
    return [sys.executable, "-m", "lightrl.run", "--model", model, "--data", "arithmetic", "--eval-data", "",
            "--instruction", "", "--steps", "8", "--prompts-per-step", "4", "--group-size", "4",
            "--max-new-tokens", "6", "--save-every", "1", "--keep-checkpoints", "2", "--threads", "1",
            "--no-progress", "--out-dir", out, "--run-name", name]


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(warm_model, tmp_path):
    model = warm_model
    out = str(tmp_path / "runs")
    t0 = time.time()
    subprocess.run(_args(model, out, "reference"), check=True, capture_output=True, timeout=300)
    reference = read_metrics(os.path.join(out, "reference", "metrics.jsonl"))
    assert len(reference) == 8
    step_time = sum(r["step_time"] for r in reference) / len(reference)

    rng = random.Random(0)
    landed = []  # the step of the checkpoint each kill left behind
    t0 = time.time()
    for k in range(3):
        name = f"killed{k}"
        proc = subprocess.Popen(_args(model, out, name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A random moment inside training: after a random number of logged steps, a random fraction
        # of a step later (which can fall in a rollout, an update or a checkpoint write).
        target, metrics = rng.randint(1, 6), os.path.join(out, name, "metrics.jsonl")
        while len(read_metrics(metrics)) < target and proc.poll() is None and time.time() - t0 < 600:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, step_time))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run = os.path.join(out, name)
        pointer = os.path.join(run, "checkpoints", "latest")
        resume = ["--resume", run] if os.path.exists(pointer) else []
        if resume:  # `latest` always names a complete checkpoint
            with open(pointer) as f:
                ckpt = os.path.join(run, "checkpoints", f.read().strip())
            assert os.path.exists(os.path.join(ckpt, "trainer_state.pt"))
            load_file(os.path.join(ckpt, "model.safetensors"))
        landed.append(int(ckpt.rsplit("_", 1)[1]) if resume else 0)
        subprocess.run(_args(model, out, name) + resume, check=True, capture_output=True, timeout=300)
        rows = read_metrics(os.path.join(run, "metrics.jsonl"))
        assert [r["step"] for r in rows] == list(range(1, 9)), name
        for ra, rb in zip(reference, rows):
            for key in KEYS:
                assert ra[key] == rb[key], (name, ra["step"], key)
        final_ref = load_file(os.path.join(out, "reference", "checkpoints", "step_000008", "model.safetensors"))
        final = load_file(os.path.join(run, "checkpoints", "step_000008", "model.safetensors"))
        assert all(torch.equal(final_ref[n], final[n]) for n in final_ref)
    print(f"kills landed after checkpoints {landed}")
    assert all(s < 8 for s in landed) and any(s > 0 for s in landed)
