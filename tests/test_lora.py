"""LoRA (peft): adapters only in the optimizer, the reference is the base with adapters off, a LoRA
run learns the embedded task, and its merged checkpoint is a plain transformers model."""
import os
import subprocess
import sys

import pytest
import torch

from lightrl import model as lmodel
from lightrl.config import Config
from lightrl.logs import read_metrics

pytest.importorskip("peft")

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_only_adapters_train_and_their_count_is_r_times_in_plus_out():
    from lightrl import tiny
    tok = tiny.build_tokenizer()
    base = tiny.build_model(tok, seed=0)
    expected = sum(4 * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS)
    peft_model = lmodel.with_lora(base, Config(lora_r=4), ckpt=None)
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    # 2 layers x (4 attention projections 96 -> 96, 3 MLP ones between 96 and 192), each r x (in + out)
    assert sum(trainable.values()) == expected == 2 * (4 * 4 * (96 + 96) + 3 * 4 * (96 + 192)) == 13056
    assert all("lora_" in n for n in trainable)
    assert not peft_model.get_output_embeddings().weight.requires_grad  # lm_head (tied embedding) frozen


def test_unknown_target_names_the_modules_there_are():
    from lightrl import tiny
    from lightrl.errors import UserError
    tok = tiny.build_tokenizer()
    with pytest.raises(UserError, match="--lora-targets qkv: no such linear module in tiny; it has down_proj"):
        lmodel.with_lora(tiny.build_model(tok, seed=0), Config(lora_r=4, lora_targets=("qkv",)), ckpt=None)


def test_reference_is_the_base_with_adapters_off(warm_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from lightrl.algos import get_algo
    from lightrl.batch import StepBatch
    cfg = Config(model=warm_model, lora_r=4, instruction="", out_dir=str(tmp_path), threads=1)
    policy = lmodel.load(cfg, get_algo("grpo"), str(tmp_path), None, [], torch.device("cpu"), None)
    assert isinstance(policy.ref_model, lmodel.AdaptersOff)
    with torch.no_grad():  # make the adapters change the policy (lora_B starts at zero)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    prompt = policy.encode("12+7=")
    batch = StepBatch.build([(prompt, [[5, 6, 7], [8, 9]], [1.0, 0.0], [0.0, 0.0])], [True, True],
                            torch.device("cpu"))
    base = lmodel.Policy(policy.tokenizer, AutoModelForCausalLM.from_pretrained(warm_model), None, warm_model,
                         policy.encode, policy.stop_ids, None, policy.temperature, policy.backend)
    ref, want, pol = (policy.logprobs(policy.ref_model, batch, 4), base.logprobs(base.model, batch, 4),
                      policy.logprobs(policy.model, batch, 4))
    assert torch.allclose(ref, want, atol=1e-6)
    assert (pol - want).abs().max() > 1e-3


@pytest.mark.slow
def test_lora_run_learns_and_its_merged_checkpoint_generates_like_the_adapters(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    cmd = [sys.executable, "-m", "lightrl.run", "--no-progress", "--out-dir", str(tmp_path), "--run-name", "l",
           "--lora-r", "8", "--lr", "5e-3", "--steps", "20", "--eval-data", "", "--merge-on-save"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(str(tmp_path / "l" / "metrics.jsonl"))
    first, last = (sum(r["reward_mean"] for r in rs) / len(rs) for rs in (rows[:3], rows[-5:]))
    assert last > first + 0.3, (first, last)
    ckpt = tmp_path / "l" / "checkpoints" / "step_000020"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(ckpt / "merged")).eval()
    adapters = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tmp_path / "l" / "warm_start")),
                                         str(ckpt)).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(merged.generate(input_ids=ids, **kw), adapters.generate(input_ids=ids, **kw))
    resumed = subprocess.run([sys.executable, "-m", "lightrl.run", "--no-progress", "--resume", str(tmp_path / "l"),
                              "--steps", "21"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def _adapters(ckpt) -> dict:
    from safetensors.torch import load_file
    return load_file(str(ckpt / "adapter_model.safetensors"))


@pytest.mark.slow
def test_lora_under_torchrun_equals_one_process_and_its_checkpoint_resumes_anywhere(warm_model, tmp_path):
    import json

    from peft import PeftModel
    from safetensors.torch import load_file
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import AutoModelForCausalLM

    from tests.test_dist import small_args, torchrun
    # grpo: the reference (AdaptersOff, the sharded policy with adapters off) gives the KL term; the
    # gradient clip acts on the sharded adapters' gradients (their norm is above it).
    args = small_args(warm_model, "r", "--algo", "grpo", "--lora-r", "8", "--lr", "5e-3", "--grad-clip", "0.05",
                      "--merge-on-save")
    runs = {}
    for n in (1, 2):
        done = torchrun(n, tmp_path / str(n), *args)
        assert done.returncode == 0, done.stderr[-3000:]
        run = tmp_path / str(n) / "r"
        runs[n] = (read_metrics(str(run / "metrics.jsonl")), [_adapters(run / f"checkpoints/step_00000{s}")
                                                              for s in (1, 2, 3)])
    (m1, a1), (m2, a2) = runs[1], runs[2]
    assert [r["step"] for r in m2] == [1, 2, 3]
    assert any(abs(r["loss"]) > 1e-4 for r in m1) and all(r["kl_mean"] > 0 for r in m1[1:])
    assert all(r["grad_norm"] > 0.05 for r in m1), [r["grad_norm"] for r in m1]
    for a, b in zip(m1, m2):
        for k in ("loss", "reward_mean", "kl_mean", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert sorted(a1[2]) == sorted(a2[2]) and len(a2[2]) == 28  # 2 layers x 7 targets x (lora_A, lora_B)
    # As for full fine-tuning (test_dist), the adapters agree to float rounding after one update
    # (measured: 7e-9); then a few dozen lora_B entries whose gradients sit at AdamW's eps drift
    # (measured after three: 45-61 of 26112 entries beyond 1e-6, at most 1.4e-4 at this lr).
    assert max(float((a1[0][k] - a2[0][k]).abs().max()) for k in a1[0]) < 1e-6
    assert max(float((a1[2][k] - a2[2][k]).abs().max()) for k in a1[2]) < 1e-3
    assert sum(int(((a1[2][k] - a2[2][k]).abs() > 1e-6).sum()) for k in a1[2]) < 0.01 * 26112
    assert max(float(a2[2][k].abs().max()) for k in a2[2] if "lora_B" in k) > 1e-3, "the adapters did not move"

    run = tmp_path / "2" / "r"
    ckpt = run / "checkpoints" / "step_000003"
    # Rank 0 wrote the adapters as one process does: peft's files, the same config and tensor names.
    solo = lmodel.with_lora(AutoModelForCausalLM.from_pretrained(warm_model), Config(lora_r=8), ckpt=None)
    solo.save_pretrained(str(tmp_path / "solo"))
    config, want = (json.loads((d / "adapter_config.json").read_text()) for d in (ckpt, tmp_path / "solo"))
    assert sorted(config.pop("target_modules")) == sorted(want.pop("target_modules")) == sorted(TARGETS)
    assert config == want and config["task_type"] == "CAUSAL_LM" and config.get("auto_mapping") is None
    assert sorted(a2[2]) == sorted(load_file(str(tmp_path / "solo" / "adapter_model.safetensors")))
    assert not (ckpt / "model.safetensors").exists()
    # Only the adapters have optimizer state (each rank's shard of it).
    saved = FileSystemReader(str(ckpt / "optimizer")).read_metadata().state_dict_metadata
    moments = {k.rsplit(".", 1)[0] for k in saved if k.endswith(".exp_avg")}
    assert len(moments) == 28 and all(".lora_A." in k or ".lora_B." in k for k in moments)
    # The merged model is a plain transformers model: it generates what base + adapters generate,
    # and the frozen weights outside the adapted layers are the starting ones, bit for bit.
    merged = AutoModelForCausalLM.from_pretrained(str(ckpt / "merged")).eval()
    adapters = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(warm_model), str(ckpt)).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(merged.generate(input_ids=ids, **kw), adapters.generate(input_ids=ids, **kw))
    start, after = load_file(os.path.join(warm_model, "model.safetensors")), merged.state_dict()
    assert all(torch.equal(after[k], start[k]) for k in start if "_proj" not in k)
    assert max(float((after[k] - start[k]).abs().max()) for k in start if "_proj" in k) > 1e-4

    # --resume with 2 processes from step 2 is exact (adapters and optimizer shards) ...
    done = torchrun(2, tmp_path, "--resume", str(run / "checkpoints" / "step_000002"), "--steps", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_metrics(str(run / "metrics.jsonl"))[-1]["loss"] == m2[-1]["loss"]
    assert all(torch.equal(_adapters(ckpt)[k], a2[2][k]) for k in a2[2])
    # ... and one process without torchrun continues the 2-process checkpoint.
    plain = subprocess.run([sys.executable, "-m", "lightrl.run", "--device", "cpu", "--no-progress", "--resume",
                            str(run), "--steps", "4"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))] == [1, 2, 3, 4]
    assert max(float((_adapters(run / "checkpoints" / "step_000004")[k] - a2[2][k]).abs().max()) for k in a2[2]) > 0
