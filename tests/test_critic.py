"""The critic: value clipping against its formula, its place in the loop, exact resume, and PPO on the demo."""
import functools
import os

import pytest
import torch
from safetensors.torch import load_file

from lightrl.config import Config
from lightrl.critic import value_loss
from lightrl.logs import read_metrics
from lightrl.train import train
from tests.configs import small_config


small = functools.partial(small_config, algo="ppo")


def test_value_loss_clipping_formula():
    v = torch.tensor([1.0, 0.0, 2.0, -1.0, 5.0], requires_grad=True)
    old = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    ret = torch.tensor([2.0, 1.0, 0.0, -3.0, 0.0])
    mask = torch.tensor([True, True, True, True, False])
    loss, clipped = value_loss(v, old, ret, mask, 0.5, tokens=8)
    # token: (V - R)^2 vs (clip(V, old +- .5) - R)^2, the larger counts:
    # 0: 1 vs 2.25 (clipped); 1: 1 vs 1; 2: 4 vs 2.25; 3: 4 vs 6.25 (clipped); 4: masked out.
    assert float(loss.detach()) == pytest.approx(0.5 * (2.25 + 1 + 4 + 6.25) / 8)
    assert clipped == 2
    loss.backward()
    # Where the clipped term wins, V gets no gradient (clip is flat there).
    assert v.grad.tolist() == pytest.approx([0.0, -1 / 8, 2 / 8, 0.0, 0.0])
    unclipped, none = value_loss(v.detach(), old, ret, mask, None, tokens=4)
    assert float(unclipped) == pytest.approx(0.5 * (1 + 1 + 4 + 4) / 4) and none == 0


def test_ppo_trains_the_critic_and_resumes_exactly(warm_model, tmp_path):
    kw = dict(model=warm_model, steps=4, save_every=2, updates_per_batch=2, critic_lr=1e-3)
    full = train(small(tmp_path, "full", **kw))
    part = train(small(tmp_path, "part", **{**kw, "steps": 2}))
    train(small(tmp_path, "again", **{**kw, "resume": part}))
    a = read_metrics(os.path.join(full, "metrics.jsonl"))
    b = read_metrics(os.path.join(part, "metrics.jsonl"))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a[0]["value_mean"] == 0 and a[-1]["value_mean"] != 0  # the head starts at 0, then learns
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "loss", "grad_norm", "critic_loss", "critic_grad_norm", "value_mean",
                    "critic_lr", "kl_mean"):
            assert ra[key] == rb[key], (ra["step"], key)
    for name in ("critic/model.safetensors", "model.safetensors"):
        fa = load_file(os.path.join(full, "checkpoints", "step_000004", name))
        fb = load_file(os.path.join(part, "checkpoints", "step_000004", name))
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), name
    critic = load_file(os.path.join(full, "checkpoints", "step_000004", "critic", "model.safetensors"))
    assert "head.weight" in critic and "decoder.embed_tokens.weight" in critic and "lm_head.weight" not in critic


def test_critic_flags_need_a_critic_row(tmp_path):
    with pytest.raises(ValueError, match="--critic-model is set but algo 'grpo' has no critic"):
        train(small(tmp_path, "x", algo="grpo", critic_model="/nowhere"))


@pytest.mark.slow
def test_ppo_raises_the_demo_reward(tmp_path):
    """The embedded demo's settings with --algo ppo: the reward goes from <= 0.3 to >= 0.8."""
    run = train(Config(algo="ppo", out_dir=str(tmp_path), run_name="ppo", progress=False))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    start = sum(r["reward_mean"] for r in rows[:3]) / 3
    end = sum(r["reward_mean"] for r in rows[-10:]) / 10
    print(f"ppo on the demo: reward {start:.3f} (first 3 steps) -> {end:.3f} (last 10 steps)")
    assert start <= 0.3 and end >= 0.8 and rows[-1]["critic_loss"] < rows[0]["critic_loss"] * 2


def test_resume_without_the_critic_files_is_refused_before_the_run(warm_model, tmp_path):
    from lightrl.preflight import preflight
    grpo = train(small(tmp_path, "grpo", algo="grpo", model=warm_model, steps=1))
    with pytest.raises(ValueError, match=r"critic/model.safetensors is missing: algo 'ppo' has a critic"):
        preflight(small(tmp_path, "x", model=warm_model, steps=2, resume=grpo))


def test_critic_model_gives_the_starting_weights(warm_model, tmp_path, monkeypatch):
    # --critic-model: the value model's decoder comes from that checkpoint, not from the policy.
    import lightrl.critic
    seen = []
    real = lightrl.critic.ValueModel.__init__

    def init(self, decoder):
        seen.append({k: v.clone() for k, v in decoder.state_dict().items()})
        real(self, decoder)

    monkeypatch.setattr(lightrl.critic.ValueModel, "__init__", init)
    train(small(tmp_path, "cm", model="tiny", warm_start_steps=5, critic_model=warm_model, steps=1))
    want = load_file(os.path.join(warm_model, "model.safetensors"))
    assert seen and all(torch.equal(v, want["model." + k]) for k, v in seen[0].items())
