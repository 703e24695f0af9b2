"""The training loop on the tiny model: every algorithm row, exact resume, checkpoints, bad steps, the demo."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lightrl.advantages
import lightrl.rollout
from lightrl.algos import ALGOS
from lightrl.logs import read_metrics
from lightrl.model import Policy
from lightrl.train import train
from tests.configs import small_config as small

# Metrics that depend only on seeds and arithmetic (not on wall-clock time).
DETERMINISTIC = ["reward_mean", "accuracy", "loss", "grad_norm", "kl_mean", "entropy", "completion_len_mean",
                 "kept_frac", "clip_frac_low", "clip_frac_high", "ratio_mean", "eval_accuracy"]


def finite_numbers(row: dict) -> bool:
    return all(math.isfinite(v) for v in row.values() if isinstance(v, (int, float)))


@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_algo_runs_two_steps(algo, warm_model, tmp_path):
    # Two updates per batch: rows with a ratio then use old log-probs and can clip.
    run = train(small(tmp_path, algo, algo=algo, model=warm_model, updates_per_batch=2))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(finite_numbers(r) for r in rows)
    updated = [r for r in rows if not r["skipped"]]
    assert updated and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in updated)
    assert all(0 <= r["reward_mean"] <= 1 and r["samples"] >= 4 * 4 for r in rows)


def _k3_per_sequence(model, ref_model, batch, temperature):
    """KL(pi || ref) k3 estimate summed over each sequence's counted tokens, from full logits."""
    def logp(net, mb):
        z = net(input_ids=mb.ids, use_cache=False).logits[0, mb.cols].float() / temperature
        return torch.log_softmax(z, -1).gather(1, mb.targets[:, None])[:, 0]
    out = []
    with torch.no_grad():
        for mb in batch.micro(1):  # one sequence at a time: no padding
            u = logp(ref_model, mb) - logp(model, mb)
            out.append(float((torch.exp(u) - 1 - u).sum()) if mb.mask.all() else 0.0)
    return torch.tensor(out)


def test_kl_in_reward_and_entropy_bonus(warm_model, tmp_path, monkeypatch):
    # group_advantages gets the verifier's scores, and as shaping the rule terms minus kl_coef * (sequence KL).
    seen = []
    real_rewards, real_kl, real_adv = lightrl.rollout.rewards, Policy.sequence_kl, lightrl.advantages.group_advantages

    def rewards(*a, **k):
        out = real_rewards(*a, **k)
        seen.append({"scores": torch.tensor(out[0]), "shaping": torch.tensor(out[1])})
        return out

    def sequence_kl(policy, batch, *a):
        seen[-1]["kl"] = _k3_per_sequence(policy.model, policy.ref_model, batch, 0.7)
        return real_kl(policy, batch, *a)

    def group_advantages(r, *a, **k):
        seen[-1]["got"] = (r.clone(), k["shaping"].clone())
        return real_adv(r, *a, **k)

    monkeypatch.setattr(lightrl.rollout, "rewards", rewards)
    monkeypatch.setattr(Policy, "sequence_kl", sequence_kl)
    monkeypatch.setattr(lightrl.advantages, "group_advantages", group_advantages)
    run = train(small(tmp_path, "klr", algo="grpo", model=warm_model, steps=3, temperature=0.7,
                      row={"kl_in_reward": "true", "entropy_coef": "0.01", "kl_coef": "0.5"}))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert all(finite_numbers(r) and not r["skipped"] for r in rows)
    assert rows[0]["entropy_loss_term"] > 0
    assert len(seen) == 3 and seen[0]["kl"].abs().max() < 1e-5  # step 1: the policy is the reference
    assert seen[-1]["kl"].max() > 1e-3  # later the policy has moved (the entropy bonus alone moves it)
    for s, r in zip(seen, rows):
        torch.testing.assert_close(s["got"][0], s["scores"], rtol=0, atol=0)
        torch.testing.assert_close(s["got"][1], s["shaping"] - 0.5 * s["kl"], rtol=0, atol=1e-4)
        # kl_mean reports this KL (per token), not the loss' (which has no ref_logp with kl_in_reward)
        assert r["kl_mean"] == pytest.approx(float(s["kl"].sum()) / (r["completion_len_mean"] * r["samples"]),
                                             rel=1e-3, abs=1e-7)
    assert rows[-1]["kl_mean"] > 0


def test_resume_continues_exactly(tmp_path):
    kw = dict(model="tiny", warm_start_steps=20, steps=4, save_every=2, eval_data="arithmetic-test", eval_limit=8,
              eval_every=2, algo="grpo")
    full = train(small(tmp_path, "full", **kw))
    # The interrupted run stops after step 2 (its checkpoint), then --resume carries on to step 4.
    part = train(small(tmp_path, "part", **{**kw, "steps": 2}))
    train(small(tmp_path, "ignored", **{**kw, "resume": part}))
    a = read_metrics(os.path.join(full, "metrics.jsonl"))
    b = read_metrics(os.path.join(part, "metrics.jsonl"))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in DETERMINISTIC:
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    assert not os.path.exists(os.path.join(tmp_path, "ignored"))
    fa = load_file(os.path.join(full, "checkpoints", "step_000004", "model.safetensors"))
    fb = load_file(os.path.join(part, "checkpoints", "step_000004", "model.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_checkpoint_loads_with_transformers_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightrl.data import load_rows
    from lightrl.rewards.math import score_batch
    from lightrl.rollout import HFEngine
    run = train(small(tmp_path, "ck", model="tiny", warm_start_steps=60, steps=2, eval_data="arithmetic-test",
                      eval_limit=16))
    ckpt = os.path.join(run, "checkpoints", "step_000002")
    with open(os.path.join(run, "checkpoints", "latest")) as f:
        assert f.read().strip() == "step_000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    rows = load_rows("arithmetic-test")[0][:16]
    comps = HFEngine(model, tok, batch_size=16, stop_ids=[tok.eos_token_id], progress=False).generate(
        [tok(r["question"])["input_ids"] for r in rows], 1, temperature=0.0, top_p=1.0, max_new_tokens=6, seed=0)
    texts = tok.batch_decode(comps, skip_special_tokens=True)
    assert all(len(c) >= 1 for c in comps) and any(t.startswith("\\boxed{") for t in texts)
    # Greedy accuracy of the reloaded model equals the run's final evaluation of the same prompts.
    acc = sum(score_batch([r["answer"] for r in rows], texts)) / len(rows)
    assert acc == read_metrics(os.path.join(run, "metrics.jsonl"))[-1]["eval_accuracy"]
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
    assert state["step"] == 2 and state["optimizer"]["state"] and "sampler" in state and "rng" in state


def test_nan_reward_skips_the_optimizer_step(warm_model, tmp_path, monkeypatch):
    real = lightrl.rollout.rewards
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        rewards, scores = real(*args)
        if calls["n"] == 2:
            rewards[0] = float("nan")
        return rewards, scores
    monkeypatch.setattr(lightrl.rollout, "rewards", poisoned)
    # What each save call is handed (the non-finite step 2 writes no checkpoint, so it is captured here).
    real_save, handed = lightrl.checkpoint.save, {}

    def save(run_dir, step, model, tokenizer, state, keep, finite=True, **kw):
        handed[step] = ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(state["optimizer"]))
        return real_save(run_dir, step, model, tokenizer, state, keep, finite=finite, **kw)
    monkeypatch.setattr(lightrl.checkpoint, "save", save)
    run = train(small(tmp_path, "nan", model=warm_model, steps=3, save_every=1, keep_checkpoints=5))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["skipped"] for r in rows] == [0, 1, 0]
    (w1, s1), (w2, s2) = handed[1], handed[2]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    for k, v in s1["state"].items():
        assert all(torch.equal(v[n], s2["state"][k][n]) for n in v)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["latest", "step_000001", "step_000003"]


def test_consecutive_bad_steps_stop_the_run(warm_model, tmp_path, monkeypatch):
    monkeypatch.setattr(lightrl.rollout, "rewards", lambda comps, *a: ([float("inf")] * len(comps), [0.0] * len(comps)))
    with pytest.raises(RuntimeError, match="2 consecutive steps"):
        train(small(tmp_path, "inf", model=warm_model, steps=5, max_bad_steps=2))


def test_every_group_filtered_is_skipped_not_divided_by_zero(warm_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lightrl.rollout, "rewards", lambda comps, *a: ([0.0] * len(comps), [0.0] * len(comps)))
    run = train(small(tmp_path, "raft", algo="raft", model=warm_model))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["skipped"] for r in rows] == [1, 1] and all(finite_numbers(r) for r in rows)
    assert "every group filtered" in capsys.readouterr().err
    run = train(small(tmp_path, "dapo", algo="dapo", model=warm_model, max_refills=2))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["refills"] for r in rows] == [2, 2] and [r["skipped"] for r in rows] == [1, 1]


@pytest.mark.slow
def test_embedded_default_run_raises_the_reward(tmp_path):
    """`python -m lightrl.run` with no arguments: warm start, then grpo lifts the reward from <= 0.3 to >= 0.8."""
    out = subprocess.run([sys.executable, "-m", "lightrl.run", "--no-progress"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dirs = [os.path.join(tmp_path, "runs", d) for d in os.listdir(os.path.join(tmp_path, "runs"))]
    assert len(run_dirs) == 1 and os.path.abspath(run_dirs[0]) in out.stdout
    # Piped stdout: a plain line every 10 steps (and step 1), then the summary naming the last checkpoint.
    assert [line.split(" | ")[0] for line in out.stdout.splitlines() if line.startswith("lightrl: step ")] == \
        ["lightrl: step 1/80"] + [f"lightrl: step {s}/80" for s in range(10, 81, 10)]
    assert "lightrl: done: 80 steps" in out.stdout and "checkpoints/step_000080 (the latest)" in out.stdout
    rows = read_metrics(os.path.join(run_dirs[0], "metrics.jsonl"))
    start = sum(r["reward_mean"] for r in rows[:3]) / 3
    end = sum(r["reward_mean"] for r in rows[-10:]) / 10
    print(f"embedded default: reward {start:.3f} (first 3 steps) -> {end:.3f} (last 10 steps)")
    assert start <= 0.3 and end >= 0.8
    assert rows[-1]["eval_accuracy"] >= 0.8
    for name in ("config.json", "curves.png", "checkpoints/latest"):
        assert os.path.exists(os.path.join(run_dirs[0], name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dirs[0]))
    with open(os.path.join(run_dirs[0], "config.json")) as f:
        assert json.load(f)["algo"] == "grpo"


def test_mask_truncated_leaves_nothing_to_train_and_says_so(warm_model, tmp_path, capsys):
    # Two new tokens cannot hold "\boxed{N}<eos>": every completion is truncated.
    run = train(small(tmp_path, "trunc", model=warm_model, max_new_tokens=2, mask_truncated=True))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["truncated_frac"] for r in rows] == [1.0, 1.0] and [r["skipped"] for r in rows] == [1, 1]
    assert "no completion token to train on" in capsys.readouterr().err
    run = train(small(tmp_path, "trunc-kept", model=warm_model, max_new_tokens=2))
    assert [r["skipped"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))] == [0, 0]


def test_hf_engine_ignores_the_checkpoints_sampling_defaults(warm_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightrl.rollout import HFEngine
    model, tok = AutoModelForCausalLM.from_pretrained(warm_model), AutoTokenizer.from_pretrained(warm_model)
    prompts = [tok(q)["input_ids"] for q in ("3+4=", "9+9=")]

    def sample():
        return HFEngine(model, tok, batch_size=8, stop_ids=[tok.eos_token_id], progress=False).generate(
            prompts, 4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)
    plain = sample()
    model.generation_config.top_k, model.generation_config.repetition_penalty = 1, 5.0
    assert sample() == plain and model.generation_config.top_k == 1


def test_file_data_chat_template_and_bad_rows(warm_model, tmp_path):
    """The real-model path: a chat template, a JSONL file with a bad row skipped, math500 evaluation."""
    from transformers import AutoTokenizer
    model_dir = str(tmp_path / "chat")
    tok = AutoTokenizer.from_pretrained(warm_model)
    tok.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}="
    tok.save_pretrained(model_dir)
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(warm_model).save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "3+4", "answer": "7"}\n{"question": "", "answer": "1"}\n'
                    '{"question": "5+5", "answer": "#### 10"}\n')
    run = train(small(tmp_path, "file", model=model_dir, data=str(data), instruction="", skip_bad_rows=True,
                      eval_data="math500", eval_limit=2, max_prompt_tokens=16))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["bad_rows"] for r in rows] == [1, 1] and all(finite_numbers(r) for r in rows)
    assert rows[0]["accuracy"] > 0 and "eval_accuracy" in rows[-1]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(small(tmp_path, "file", model=model_dir, data=str(data), skip_bad_rows=True))


@pytest.mark.gpu
def test_backend_triton_on_cuda_runs_every_op_on_the_gpu(tmp_path):
    # --backend triton: advantages too must get CUDA tensors (the Triton path refuses CPU ones).
    for algo in ("dapo", "grpo"):
        run = train(small(tmp_path, f"triton-{algo}", algo=algo, model="tiny", warm_start_steps=20, device="cuda",
                          backend="triton"))
        rows = read_metrics(os.path.join(run, "metrics.jsonl"))
        assert [r["step"] for r in rows] == [1, 2] and all(finite_numbers(r) for r in rows)


@pytest.mark.parametrize("updates", [1, 2])
def test_entropy_selected_tokens_train(updates, warm_model, tmp_path):
    # The policy gradient acts on the batch's top 20% of tokens by entropy (fewer where advantages are 0).
    run = train(small(tmp_path, f"ent{updates}", algo="grpo-mean-only", model=warm_model, steps=2,
                      updates_per_batch=updates, row={"entropy_top_frac": "0.2"}))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert all(finite_numbers(r) and not r["skipped"] for r in rows)
    assert all(0 < r["nonzero_adv_token_frac"] <= 0.35 and r["grad_norm"] > 0 for r in rows)
    full = read_metrics(os.path.join(train(small(tmp_path, f"all{updates}", algo="grpo-mean-only",
                                                     model=warm_model, steps=1, updates_per_batch=updates)),
                                     "metrics.jsonl"))
    assert full[0]["nonzero_adv_token_frac"] > 2 * rows[0]["nonzero_adv_token_frac"]
