"""DPO rows: the pairs a group gives, the loss and gradient through the fused path against DPO's
formula on every backend, the reference refresh, resume, and the demo."""
import math
import functools
import os

import pytest
import torch

from lightrl.algos import ALGOS, get_algo
from lightrl.config import Config
from lightrl.kernels import LossScale, fused_policy_loss, group_advantages, pair_coefficients
from lightrl.logs import read_metrics
from lightrl.train import train
from tests.configs import small_config


small = functools.partial(small_config, algo="online-dpo")

BACKENDS = ["torch", "triton", "reference"]


@pytest.mark.interpret
def test_pairs_of_hand_made_groups():
    # Groups of 4: [wrong, right, right, wrong], [right x4] (no pair), [wrong, wrong, right, wrong].
    scores = torch.tensor([0., 1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0])
    lengths = torch.tensor([5, 9, 3, 2, 4, 4, 4, 4, 7, 1, 6, 1])
    for backend in BACKENDS:
        adv, keep = group_advantages(scores, 4, get_algo("online-dpo", pairs="first"), lengths=lengths,
                                     backend=backend)
        assert adv.tolist() == [-1, 1, 0, 0, 0, 0, 0, 0, -1, 0, 1, 0]  # the first right vs the first wrong
        assert keep.tolist() == [True, True, False, False] + [False] * 4 + [True, False, True, False]
        adv, keep = group_advantages(scores, 4, ALGOS["online-dpo"], lengths=lengths, backend=backend)
        # The rows' rule: shortest right vs shortest wrong; the tie of length 1 goes to the earlier sample.
        assert adv.tolist() == [0, 0, 1, -1, 0, 0, 0, 0, 0, -1, 1, 0]
        assert keep.tolist() == [False, False, True, True] + [False] * 4 + [False, True, True, False]
    with pytest.raises(ValueError, match="needs lengths"):
        group_advantages(scores, 4, ALGOS["online-dpo"])


def dpo_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [4, 6, 3, 5, 7, 2]  # three pairs: sequences (0, 1), (2, 3), (4, 5)
    seq = torch.repeat_interleave(torch.arange(6), torch.tensor(lens))
    n = seq.numel()
    hidden, weight = torch.randn(n, 16, generator=g), torch.randn(40, 16, generator=g) * 0.3
    targets = torch.randint(0, 40, (n,), generator=g)
    ref = torch.log_softmax(hidden @ weight.t() / 0.7, -1).gather(1, targets[:, None])[:, 0]
    ref = (ref + 0.3 * torch.randn(n, generator=g)).detach()
    mask = torch.rand(n, generator=g) > 0.15
    sign = torch.tensor([1.0, -1, -1, 1, 1, -1])
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    return hidden, weight, targets, ref, mask, seq, sign, group


def dpo_formula(logp, ref, mask, seq, sign, group, beta):
    """DPO (Rafailov et al. 2023): mean over pairs of -log sigmoid(beta (D_chosen - D_rejected))."""
    losses = []
    for g in sorted(set(group.tolist())):
        d = {}
        for s in [i for i in range(len(group)) if group[i] == g]:
            d[float(sign[s])] = sum(logp[t] - ref[t] for t in range(len(seq)) if seq[t] == s and mask[t])
        losses.append(-torch.nn.functional.logsigmoid(beta * (d[1.0] - d[-1.0])))
    return sum(losses) / len(losses)


@pytest.mark.interpret
def test_dpo_loss_and_gradient_through_the_fused_path():
    hidden, weight, targets, ref, mask, seq, sign, group = dpo_inputs()
    row = ALGOS["online-dpo"]
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logp = torch.log_softmax(h @ w.t() / 0.7, -1).gather(1, targets[:, None])[:, 0]
    want = dpo_formula(logp, ref, mask, seq, sign, group, 0.1)
    want.backward()
    seqs = 6
    coef, m = pair_coefficients(logp.detach(), ref, mask, seq, sign, group, beta=0.1, seqs=seqs)
    assert m["dpo_loss"] == pytest.approx(float(want.detach()), rel=1e-6) and m["pairs"] == 3
    for backend in BACKENDS:
        hb, wb = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss, _ = fused_policy_loss(hb, wb, targets, None, ref, coef, mask, seq, row, temperature=0.7,
                                    scale=LossScale(seqs=seqs), backend=backend)
        loss.backward()
        torch.testing.assert_close(hb.grad, h.grad, rtol=1e-4, atol=1e-6, msg=backend)
        torch.testing.assert_close(wb.grad, w.grad, rtol=1e-4, atol=1e-6, msg=backend)
    # With the policy equal to the reference every margin is 0: loss log 2, accuracy 0.
    _, m0 = pair_coefficients(ref, ref, mask, seq, sign, group, beta=0.1, seqs=seqs)
    assert m0["dpo_loss"] == pytest.approx(math.log(2)) and m0["dpo_accuracy"] == 0
    with pytest.raises(ValueError, match="exactly two sequences"):
        pair_coefficients(ref, ref, mask, seq, sign, torch.tensor([0, 0, 0, 1, 2, 2]), beta=0.1, seqs=seqs)


def test_dpo_row_validation():
    with pytest.raises(ValueError, match="ratio='token' must be 'none' with pairs='shortest'"):
        get_algo("online-dpo", ratio="token").check_pairs()
    with pytest.raises(ValueError, match="ref_refresh=5 must be 0 without a reference model"):
        get_algo("dapo", ref_refresh=5)
    assert ALGOS["iterative-dpo"].ref_refresh == 20 and ALGOS["online-dpo"].needs_ref


def test_refresh_swaps_the_reference(warm_model, tmp_path):
    # kl_mean is the loss' KL(pi || ref) metric at the start of each step's update.
    rows = {}
    for name, refresh in (("online", 0), ("refresh", 1)):
        run = train(small(tmp_path, name, model=warm_model, steps=3, row={"ref_refresh": str(refresh)}))
        rows[name] = read_metrics(os.path.join(run, "metrics.jsonl"))
        assert all(not r["skipped"] and r["pairs"] > 0 for r in rows[name])
    assert rows["online"][0]["kl_mean"] == rows["refresh"][0]["kl_mean"] == pytest.approx(0, abs=1e-6)
    assert rows["online"][2]["kl_mean"] > 1e-4  # the policy moved away from the starting weights
    assert rows["refresh"][2]["kl_mean"] == pytest.approx(0, abs=1e-6)  # ... but the reference followed it


def test_iterative_dpo_resumes_exactly(warm_model, tmp_path):
    kw = dict(model=warm_model, steps=4, save_every=2, algo="iterative-dpo", row={"ref_refresh": "3"})
    full = train(small(tmp_path, "full", **kw))
    part = train(small(tmp_path, "part", **{**kw, "steps": 2}))
    train(small(tmp_path, "again", **{**kw, "resume": part}))
    a, b = (read_metrics(os.path.join(r, "metrics.jsonl")) for r in (full, part))
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "loss", "grad_norm", "kl_mean", "dpo_loss", "dpo_margin"):
            assert ra[key] == rb[key], (ra["step"], key)
    assert os.path.isfile(os.path.join(part, "checkpoints", "step_000004", "reference", "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("algo, steps", [("online-dpo", 45), ("iterative-dpo", 80)])
def test_dpo_raises_the_demo_reward(algo, steps, tmp_path):
    """The embedded demo's settings: the reward goes from <= 0.3 to >= 0.8. Online DPO is judged at
    step 45: with pairs=first it drifted back to about 0.8 by step 80 (its reference never moves)."""
    run = train(Config(algo=algo, steps=steps, out_dir=str(tmp_path), run_name=algo, progress=False))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    start = sum(r["reward_mean"] for r in rows[:3]) / 3
    end = sum(r["reward_mean"] for r in rows[-10:]) / 10
    print(f"{algo} on the demo: reward {start:.3f} (first 3 steps) -> {end:.3f} (last 10 of {steps} steps)")
    assert start <= 0.3 and end >= 0.8
