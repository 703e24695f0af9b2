"""torchrun with the other sharded models: PPO's critic and iterative DPO's refreshed reference train
like one process on the same global batch, are saved whole by rank 0, and resume exactly."""
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from lightrl.kernels.advantage_torch import whiten
from lightrl.logs import read_metrics
from tests.test_dist import small_args, torchrun

ROWS = {  # (flags, the model's checkpoint subdirectory, its metrics)
    "ppo": (["--algo", "ppo"], "critic", ("critic_loss", "critic_grad_norm", "critic_clip_frac", "value_mean",
                                          "kl_mean")),
    # The reference is refreshed after step 2, so step 3 and a resume at step 2 depend on the refresh.
    "iterative-dpo": (["--algo", "iterative-dpo", "--set", "ref_refresh=2"], "reference",
                      ("dpo_loss", "dpo_margin", "dpo_accuracy")),
}


def _files(ckpt) -> dict:
    """{path: state dict} of every safetensors file of a checkpoint (its model's, critic's, reference's)."""
    return {os.path.relpath(os.path.join(root, n), ckpt): load_file(os.path.join(root, n))
            for root, _dirs, names in os.walk(ckpt) for n in names if n.endswith(".safetensors")}


def _max_diff(a: dict, b: dict) -> float:
    """The largest difference between two state dicts' tensors (the same names in both)."""
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(ROWS))
def test_two_processes_equal_one_and_resume_exactly(algo, warm_model, tmp_path):
    flags, model_dir, keys = ROWS[algo]
    runs = {}
    for n in (1, 2):
        done = torchrun(n, tmp_path / str(n), *small_args(warm_model, "r", *flags))
        assert done.returncode == 0, done.stderr[-3000:]
        run = tmp_path / str(n) / "r"
        runs[n] = (read_metrics(str(run / "metrics.jsonl")),
                   *(_files(run / "checkpoints" / f"step_00000{s}") for s in (1, 3)))
    (m1, first1, f1), (m2, first2, f2) = runs[1], runs[2]
    assert [r["step"] for r in m2] == [1, 2, 3]
    assert all(r["grad_norm"] > 1e-3 and abs(r[keys[0]]) > 1e-4 for r in m1), \
        "no learning signal: the comparison would be vacuous"
    for a, b in zip(m1, m2):
        for k in ("reward_mean", "grad_norm", *keys):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
        # PPO's loss, on-policy with whitened advantages, is 0 up to float rounding (~5e-8).
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a["step"], "loss")
    # Rank 0 writes the critic's / reference's whole weights where one process writes them.
    assert sorted(f2) == sorted(f1) == sorted(["model.safetensors", f"{model_dir}/model.safetensors"])
    # After one update the weights agree to float rounding (measured: 1e-6); later a few k_proj weights
    # whose gradients sit at AdamW's eps amplify the reordered sums (measured: 2e-4 after 3 DPO steps;
    # see test_dist).
    assert max(_max_diff(first1[name], first2[name]) for name in first1) < 1e-5
    assert max(_max_diff(f1[name], f2[name]) for name in f1) < 1e-3

    # The 2-process run again from its step-2 checkpoint (named in `latest`, as after a crash in
    # step 3): the same numbers and weights, bit for bit.
    run = tmp_path / "2" / "r"
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    done = torchrun(2, tmp_path / "2", "--resume", str(run), "--steps", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_metrics(str(run / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for k in ("loss", "reward_mean", "grad_norm", *keys):
        assert resumed[2][k] == m2[2][k], k
    again = _files(run / "checkpoints" / "step_000003")
    assert sorted(again) == sorted(f2) and all(_max_diff(again[name], f2[name]) == 0 for name in f2)
    if algo == "iterative-dpo":  # the refresh after step 2 copied the policy's shards into the reference's
        step2 = _files(run / "checkpoints" / "step_000002")
        assert _max_diff(step2["reference/model.safetensors"], step2["model.safetensors"]) == 0
        return
    # The critic's optimizer: every rank's shard, under the manifest. One process resumes the
    # checkpoint: its critic's values (0 for a new critic, whose head starts at 0) are the loaded one's.
    ckpt = run / "checkpoints" / "step_000003"
    assert sorted(os.listdir(ckpt / "critic" / "optimizer")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert "critic/optimizer/.metadata" in (ckpt / "manifest.json").read_text()
    plain = subprocess.run([sys.executable, "-m", "lightrl.run", "--device", "cpu", "--no-progress",
                            "--resume", str(run), "--steps", "4"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and m2[0]["value_mean"] == 0 and rows[3]["value_mean"] != 0


def test_whitening_split_over_ranks_equals_the_whole_batch():
    # Two threads stand for two ranks; reduce sums a tensor over both, like dist.total_tensor.
    a, mask = torch.randn(13, generator=torch.Generator().manual_seed(0)), torch.arange(13) % 3 != 0
    parts, box, meet = [(a[:4], mask[:4]), (a[4:], mask[4:])], [None, None], threading.Barrier(2)
    out = [None, None]

    def reduce(t, rank):
        box[rank] = t
        meet.wait()
        total = box[0] + box[1]
        meet.wait()
        return total

    def rank(r):
        out[r] = whiten(*parts[r], 1e-6, reduce=lambda t: reduce(t, r))
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    whole = whiten(a, mask, 1e-6)
    assert torch.allclose(torch.cat(out), whole, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(whiten(*parts[1], 1e-6), whole[4:], atol=1e-3)  # each rank alone differs
