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
    return _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)], out_dir, args, timeout)


def plain(out_dir, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m lightrl.run ARGS` (CPU, no torchrun) in a subprocess."""
    return _run([], out_dir, args, timeout)


def _run(launcher: list[str], out_dir, args, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, "-m", "lightrl.run", "--device", "cpu", "--no-progress", "--out-dir",
           str(out_dir), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def small_args(model: str, name: str, *extra: str, prompts: int = 4, group: int = 4, micro: int = 4) -> list[str]:
    # 4 prompts x 4 completions, micro-batches of 4: each of 2 ranks samples whole chunks of the
    # 1-process step, so both see the same completions.
    return ["--model", model, "--instruction", "", "--eval-data", "", "--run-name", name, "--steps", "3",
            "--prompts-per-step", str(prompts), "--group-size", str(group), "--micro-batch", str(micro),
            "--max-new-tokens", "6", "--save-every", "1", "--keep-checkpoints", "3", *extra]


CASES = {  # one row per loss aggregate; reinforce-rej filters groups, so ranks keep different counts
    "seq_mean_token_mean": ["--algo", "grpo"],  # with the reference policy's KL
    "token_mean": ["--algo", "reinforce-rej"],
    "seq_mean_token_sum": ["--algo", "rloo"],
    "token_sum_norm": ["--algo", "dr-grpo"],
}


@pytest.mark.slow
@pytest.mark.parametrize("aggregate", list(CASES))
def test_two_processes_equal_one(aggregate, warm_model, tmp_path):
    # 2 prompts x 8 completions, micro-batches of 8: each rank holds one group, which is one of the plain
    # run's micro-batches (a filtered group leaves that rank a zero-gradient filler), so every float sum
    # is the plain run's, in its order: the same samples (rollout chunks are seeded by their place in the
    # step), the same micro-batch gradients, their sum across ranks (a + b, as one process accumulates
    # them), the grad norm from f64 squares (lightrl.dist.clip_grad_norm). Measured: bitwise equal weights.
    # With two micro-batches per rank the sums run in another order, ((g0 + g2) + (g1 + g3)) against
    # (((g0 + g1) + g2) + g3): the step-1 weights then differ by 8e-7, and after 3 steps by 1e-4 in a few
    # k_proj weights whose step-1 gradients (1e-9 .. 1e-8) sit at AdamW's eps (1e-8), where it scales
    # rounding noise up to a step of lr's size; that is fp32 addition order, not a reduction bug.
    args = small_args(warm_model, "r", *CASES[aggregate], prompts=2, group=8, micro=8)
    runs = {}
    for n, done in (1, plain(tmp_path / "1", *args)), (2, torchrun(2, tmp_path / "2", *args)):
        assert done.returncode == 0, done.stderr[-3000:]
        run = tmp_path / str(n) / "r"
        runs[n] = (read_metrics(str(run / "metrics.jsonl")),
                   [load_file(str(run / f"checkpoints/step_00000{s}/model.safetensors")) for s in (1, 2, 3)])
        assert json.loads((run / "config.json").read_text())["prompts_per_step"] == 2
    (m1, w1), (m2, w2) = runs[1], runs[2]
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3]
    assert any(abs(r["loss"]) > 1e-4 for r in m1), "no learning signal: the comparison would be vacuous"
    for a, b in zip(m1, m2):
        assert a["samples"] == b["samples"] == 16 and a["groups"] == b["groups"] and not a["skipped"]
        for k in ("loss", "reward_mean", "accuracy", "kept_frac", "completion_len_mean", "grad_norm", "entropy"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
    for step, (one, two) in enumerate(zip(w1, w2), 1):
        assert sorted(one) == sorted(two)
        assert max(float((one[k] - two[k]).abs().max()) for k in one) == 0.0, f"weights differ after step {step}"
    start = load_file(os.path.join(warm_model, "model.safetensors"))
    assert max(float((w1[-1][k] - start[k]).abs().max()) for k in start) > 1e-3, "the weights did not move"


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
    assert dist.shard_rows([1, 2, 3]) == ([1, 2, 3], None) and dist.first_micro_seqs(None, 8) == 8


def test_a_step_samples_the_same_split_over_ranks_or_not(warm_model):
    # Rollout chunks are seeded by their place in the step: the plain call's samples are the
    # concatenation of what two ranks draw for their halves (first_seq: each half's first sequence).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightrl.rollout import HFEngine
    model, tok = AutoModelForCausalLM.from_pretrained(warm_model), AutoTokenizer.from_pretrained(warm_model)
    engine = HFEngine(model, tok, batch_size=4, stop_ids=[tok.eos_token_id], progress=False)
    prompts = [tok(q)["input_ids"] for q in ("3+4=", "9+9=", "1+8=", "5+0=")]
    sample = lambda ps, first: engine.generate(ps, 4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=5,  # noqa: E731
                                               first_seq=first)
    whole = sample(prompts, None)
    assert sample(prompts[:2], 0) + sample(prompts[2:], 8) == whole
    assert sample(prompts[2:], 0) != whole[8:], "the halves' samples do not depend on their place"


def test_clip_grad_norm_is_torchs_from_f64_squares():
    def params():
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n)) for n in (3, 50, 7)]
        for p in ps:
            p.grad = torch.randn_like(p) * 3
        return ps
    ours, torchs = params(), params()
    norm = dist.clip_grad_norm(ours, 2.0)
    assert norm.dtype == torch.float32 and norm > 2
    assert float(norm) == pytest.approx(float(torch.nn.utils.clip_grad_norm_(torchs, 2.0)), rel=1e-6)
    for a, b in zip(ours, torchs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    clipped = [p.grad.clone() for p in ours]
    assert float(dist.clip_grad_norm(ours, float("inf"))) == pytest.approx(2.0, rel=1e-5)  # inf: measured only
    assert all(torch.equal(p.grad, g) for p, g in zip(ours, clipped))


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
