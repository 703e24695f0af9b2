"""Rollout correction: the weights and masks against their formulas, the engine's sampling log-probs
against a perturbed copy's logits, and an exact no-op when the sampler matches the trainer."""
import copy
import math
import os

import pytest
import torch

import lightrl.advantages
from lightrl import tiny
from lightrl.algos import ALGOS, get_algo
from lightrl.kernels import rollout_weights
from lightrl.logs import read_metrics
from lightrl.rollout import HFEngine
from lightrl.train import train
from tests.configs import small_config as small

OLD = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.0, -0.2])
# log ratios old - rollout: [1.0, -1.0, 0.2, 0.1 (masked), -0.3, 0.9]
ROLL = torch.tensor([-2.0, -1.0, -0.7, -3.1, -0.7, -1.1])
MASK = torch.tensor([True, True, True, False, True, True])
SEQ = torch.tensor([0, 0, 0, 1, 1, 1])


def test_weights_and_masks_by_hand():
    e = math.exp
    w, keep, m = rollout_weights(OLD, ROLL, MASK, SEQ, get_algo("grpo-tis", rollout_is_cap=2.0))
    # e^1 = 2.72 and e^.9 = 2.46 hit the cap 2; the masked token keeps weight 1 (it has no loss term).
    assert w.tolist() == pytest.approx([2.0, e(-1), e(0.2), 1.0, e(-0.3), 2.0])
    assert keep.all() and m["rollout_is_clipped_frac"] == pytest.approx(2 / 5)
    # Sequence products: seq 0: e^(1 - 1 + .2) = e^.2; seq 1: e^(-.3 + .9) = e^.6 (the masked token is out).
    w, _, m = rollout_weights(OLD, ROLL, MASK, SEQ, get_algo("grpo-tis", rollout_is="sequence_truncate",
                                                             rollout_is_cap=1.5))
    assert w.tolist() == pytest.approx([e(0.2)] * 3 + [1.5] * 3)
    assert m["rollout_is_clipped_frac"] == pytest.approx(2 / 5)
    w, keep, m = rollout_weights(OLD, ROLL, MASK, SEQ, get_algo("grpo-tis", rollout_is="token_mask",
                                                                rollout_is_low=0.5, rollout_is_cap=2.0))
    assert w.tolist() == [1.0] * 6
    assert keep.tolist() == [False, False, True, True, True, False]  # e^1, e^-1 = .37 and e^.9 are out
    assert m["rollout_is_masked_frac"] == pytest.approx(3 / 5)
    _, keep, _ = rollout_weights(OLD, ROLL, MASK, SEQ, get_algo("grpo-tis", rollout_is="sequence_mask",
                                                                rollout_is_low=0.5, rollout_is_cap=1.5))
    assert keep.tolist() == [True] * 3 + [False] * 3  # e^.2 in, e^.6 = 1.82 out
    u = torch.tensor([1.0, -1.0, 0.2, -0.3, 0.9])
    assert m["rollout_kl"] == pytest.approx(float((u.exp() - 1 - u).mean()), rel=1e-6)


def test_identical_log_probs_are_an_exact_no_op():
    for mode in ("token_truncate", "sequence_truncate", "token_mask", "sequence_mask"):
        w, keep, m = rollout_weights(OLD, OLD.clone(), MASK, SEQ, get_algo("grpo-tis", rollout_is=mode))
        assert torch.equal(w, torch.ones(6)) and keep.all(), mode
        assert m == {"rollout_kl": 0.0, "rollout_is_clipped_frac": 0.0, "rollout_is_masked_frac": 0.0}


def test_engine_log_probs_of_a_perturbed_copy_give_the_predicted_mismatch():
    torch.manual_seed(0)
    tok = tiny.build_tokenizer()
    model = tiny.build_model(tok, seed=0).eval()
    sampler = copy.deepcopy(model)
    with torch.no_grad():
        for p in sampler.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [tok("12+7=")["input_ids"], tok("3*4=")["input_ids"]]
    engine = HFEngine(sampler, tok, batch_size=8, stop_ids=[tok.eos_token_id], progress=False)
    comps, logprobs = engine.generate(prompts, 3, temperature=0.7, top_p=1.0, max_new_tokens=6, seed=1,
                                      return_logprobs=True)
    assert comps == engine.generate(prompts, 3, temperature=0.7, top_p=1.0, max_new_tokens=6, seed=1)
    old, roll, seq = [], [], []
    with torch.no_grad():
        for i, (c, lp) in enumerate(zip(comps, logprobs)):
            ids = torch.tensor([prompts[i // 3] + c])
            n = len(prompts[i // 3])
            for net, out in ((model, old), (sampler, roll)):
                z = net(input_ids=ids).logits[0, n - 1:n - 1 + len(c)] / 0.7
                out += torch.log_softmax(z.float(), -1).gather(1, torch.tensor(c)[:, None])[:, 0].tolist()
            seq += [i] * len(c)
            # The engine's log-probs are the sampler's at temperature 0.7.
            assert lp == pytest.approx(roll[-len(c):], abs=1e-5)
    old, roll = torch.tensor(old), torch.tensor(roll)
    flat = torch.tensor([x for lp in logprobs for x in lp])
    mask = torch.ones(len(seq), dtype=torch.bool)
    _, _, m = rollout_weights(old, flat, mask, torch.tensor(seq), ALGOS["grpo-tis"])
    u = old - roll
    assert m["rollout_kl"] == pytest.approx(float((u.exp() - 1 - u).mean()), rel=1e-3, abs=1e-7)
    assert m["rollout_kl"] > 1e-4  # the perturbation is visible


def test_grpo_tis_with_the_trainer_as_sampler_trains_exactly_like_grpo(warm_model, tmp_path, monkeypatch):
    real = lightrl.advantages.rollout_weights

    def same_logprobs(old, rollout, *a):
        return real(old, old.clone(), *a)

    monkeypatch.setattr(lightrl.advantages, "rollout_weights", same_logprobs)
    runs = {algo: read_metrics(os.path.join(train(small(tmp_path, algo, algo=algo, model=warm_model, steps=3,
                                                        updates_per_batch=2)), "metrics.jsonl"))
            for algo in ("grpo", "grpo-tis")}
    for a, b in zip(runs["grpo"], runs["grpo-tis"]):
        for key in ("reward_mean", "loss", "grad_norm", "kl_mean", "ratio_mean", "clip_frac_low", "clip_frac_high"):
            assert a[key] == b[key], (a["step"], key)
        assert b["rollout_kl"] == 0 and b["rollout_is_clipped_frac"] == 0


def test_grpo_tis_sees_the_hf_engine_match_the_trainer(warm_model, tmp_path):
    rows = read_metrics(os.path.join(train(small(tmp_path, "tis", algo="grpo-tis", model=warm_model)),
                                     "metrics.jsonl"))
    assert all(0 <= r["rollout_kl"] < 1e-6 and r["rollout_is_masked_frac"] == 0 for r in rows)


def test_old_log_probs_from_the_engine_skip_the_trainer_pass(warm_model, tmp_path, monkeypatch):
    from lightrl.model import Policy
    calls, real = [], Policy.logprobs

    def counted(policy, net, *a, **k):
        calls.append(net is policy.model)
        return real(policy, net, *a, **k)

    monkeypatch.setattr(Policy, "logprobs", counted)
    for flag in (False, True):
        calls.clear()
        run = train(small(tmp_path, f"engine{flag}", algo="raft++", model=warm_model, steps=2, updates_per_batch=2,
                          row={"old_logp_from_engine": str(flag)}))
        rows = read_metrics(os.path.join(run, "metrics.jsonl"))
        updated = [r for r in rows if not r["skipped"]]
        assert updated and all(math.isfinite(r["loss"]) for r in rows)
        # raft++ has no reference: the only trainer pass is the old log-probs', one per updated step.
        assert calls.count(True) == (0 if flag else len(updated))
        if flag:  # the first update's ratio is pi / pi_rollout: 1 up to the HF sampler's rounding
            assert all(abs(r["ratio_mean"] - 1) < 1e-4 for r in updated)
    with pytest.raises(ValueError, match="old_logp_from_engine=True must be False unless the row has a ratio"):
        get_algo("raft", old_logp_from_engine=True)
