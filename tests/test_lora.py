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
