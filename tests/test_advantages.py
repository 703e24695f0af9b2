"""group_advantages: hand-computed values, edge cases and parity across backends."""
import math

import pytest
import torch

from lightrl.algos import ALGOS, get_algo
from lightrl.kernels import group_advantages, token_advantages

BACKENDS = ["torch", "triton", "reference"]


def run_all(rewards, group, row, lengths=None, shaping=None):
    out = {b: group_advantages(rewards, group, row, lengths=lengths, shaping=shaping, backend=b) for b in BACKENDS}
    for b in ("torch", "triton"):
        torch.testing.assert_close(out[b][0], out["reference"][0], rtol=1e-6, atol=1e-6, msg=b)
        assert torch.equal(out[b][1], out["reference"][1]), b
    adv, keep = out["torch"]
    assert adv.dtype == torch.float32 and keep.dtype == torch.bool and torch.isfinite(adv).all()
    return adv, keep


R = torch.tensor([1., 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0])


@pytest.mark.interpret
def test_hand_computed_rows():
    # grpo: (r - mean) / (unbiased std + 1e-4); group [1,0,0,1]: mean .5, std sqrt(1/3).
    adv, keep = run_all(R, 4, ALGOS["grpo"])
    s = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv[:4].tolist() == pytest.approx([s, -s, -s, s])
    assert adv[4:12].abs().max() == 0 and keep.all()
    s2 = 0.5  # group [0,1,0,0]: mean .25, unbiased variance (3 * .0625 + .5625) / 3 = .25
    assert adv[12:].tolist() == pytest.approx([-0.25 / (s2 + 1e-4), 0.75 / (s2 + 1e-4)] + [-0.25 / (s2 + 1e-4)] * 2)
    # raft: positives only, advantage = reward.
    adv, keep = run_all(R, 4, ALGOS["raft"])
    assert keep.tolist() == (R > 0).tolist() and adv.tolist() == R.tolist()
    # reinforce: +-1, no baseline; reinforce-rej drops the all-correct and all-wrong groups.
    adv, _ = run_all(R, 4, ALGOS["reinforce"])
    assert adv.tolist() == (2 * R - 1).tolist()
    adv, keep = run_all(R, 4, ALGOS["reinforce-rej"])
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4
    assert adv.tolist() == [1, -1, -1, 1] + [0] * 8 + [-1, 1, -1, -1]
    _, keep = run_all(R, 4, ALGOS["reinforce-remove-all-wrong"])
    assert keep.tolist() == [True] * 8 + [False] * 4 + [True] * 4
    _, keep = run_all(R, 4, ALGOS["reinforce-remove-all-correct"])
    assert keep.tolist() == [True] * 4 + [False] * 4 + [True] * 8
    # dr-grpo / grpo-mean-only: r - mean.
    adv, _ = run_all(R, 4, ALGOS["dr-grpo"])
    assert adv[12:].tolist() == [-0.25, 0.75, -0.25, -0.25]
    # rloo: r - mean of the others = G/(G-1) (r - mean).
    adv, _ = run_all(R, 4, ALGOS["rloo"])
    assert adv[12:].tolist() == pytest.approx([-1 / 3, 1, -1 / 3, -1 / 3])
    # dapo: mixed groups only, group-normalized.
    adv, keep = run_all(R, 4, ALGOS["dapo"])
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4 and adv[:4].tolist() == pytest.approx([s, -s, -s, s])


@pytest.mark.interpret
def test_gfpo_top_k_by_length_and_reward_per_token():
    rewards = torch.tensor([1., 1, 0, 1, 0, 1, 1, 0])
    lengths = torch.tensor([30, 10, 5, 10, 50, 40, 20, 25])
    row = get_algo("gfpo", top_k=2)
    adv, keep = run_all(rewards, 4, row, lengths)
    # Shortest two per group; the tie (10, 10) goes to the earlier sample.
    assert keep.tolist() == [False, True, True, False, False, False, True, True]
    # Statistics over the kept set only: group 0 kept [1, 0] -> +-0.5 / (std .7071 + eps).
    s = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert adv.tolist() == pytest.approx([0, s, -s, 0, 0, 0, s, -s])
    row = get_algo("gfpo", top_k=2, top_k_by="reward_per_token")
    _, keep = run_all(rewards, 4, row, lengths)
    # Highest reward / length: group 0: 1/10 (idx 1, idx 3 tie -> idx 1), then 1/10 (idx 3).
    assert keep.tolist() == [False, True, False, True, False, True, True, False]
    with pytest.raises(ValueError, match="needs lengths"):
        group_advantages(rewards, 4, row)


@pytest.mark.interpret
def test_edge_cases_no_nan():
    # A group of one: zero advantage under any baseline (nothing to compare with).
    for name in ("grpo", "rloo", "dr-grpo"):
        adv, keep = run_all(torch.tensor([1., 0, 1]), 1, ALGOS[name])
        assert adv.tolist() == [0, 0, 0] and keep.all()
    # All rewards equal: std 0 -> advantage 0, no NaN.
    adv, _ = run_all(torch.ones(8), 4, ALGOS["grpo"])
    assert adv.abs().max() == 0
    # Every group filtered: keep all False, all-zero advantages.
    for name in ("reinforce-rej", "dapo"):
        adv, keep = run_all(torch.tensor([1., 1, 0, 0]), 2, ALGOS[name])
        assert not keep.any() and adv.abs().max() == 0
    adv, keep = run_all(torch.zeros(4), 2, ALGOS["raft"])
    assert not keep.any() and adv.abs().max() == 0
    adv, keep = run_all(torch.zeros(4), 2, get_algo("grpo", scale="batch_std"))
    assert adv.abs().max() == 0


@pytest.mark.interpret
@pytest.mark.parametrize("name", list(ALGOS))
def test_group_index_equals_group_size(name):
    torch.manual_seed(0)
    rewards = (torch.rand(24) > 0.5).float()
    rewards[8:12] = 1.0
    lengths = torch.randint(1, 40, (24,))
    row = ALGOS[name].with_overrides(top_k=2) if ALGOS[name].keep == "top_k" else ALGOS[name]
    adv, keep = run_all(rewards, 4, row, lengths)
    # The same groups, given as shuffled ids: the same result per sample.
    perm = torch.randperm(24)
    ids = torch.tensor([7, 3, 11, 0, 5, 9]).repeat_interleave(4)
    adv2, keep2 = run_all(rewards[perm], ids[perm], row, lengths[perm])
    torch.testing.assert_close(adv2, adv[perm])
    assert torch.equal(keep2, keep[perm])
    # Uneven group sizes through an index (one group of one).
    run_all(rewards[:7], torch.tensor([0, 0, 0, 1, 1, 1, 2]), row, lengths[:7])


@pytest.mark.interpret
def test_batch_std_scale():
    rewards = torch.tensor([1., 0, 0, 0, 1, 1, 0, 1])
    adv, _ = run_all(rewards, 4, get_algo("dr-grpo", scale="batch_std"))
    centered = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25])
    torch.testing.assert_close(adv, centered / (centered.std() + 1e-4))


def test_bad_group_arguments():
    with pytest.raises(ValueError, match="divide the number of rewards"):
        group_advantages(torch.ones(6), 4, ALGOS["grpo"])
    with pytest.raises(ValueError, match="group index must be int64"):
        group_advantages(torch.ones(4), torch.zeros(4, dtype=torch.int32), ALGOS["grpo"])


@pytest.mark.interpret
def test_shaping_is_added_after_the_reward_map_and_filters_use_scores():
    # reinforce (pm1, no baseline): advantage = 2 score - 1 + shaping, the shaping not doubled.
    scores = torch.tensor([1., 0, 1, 0])
    shaping = torch.tensor([-0.25, -0.5, 0.0, 0.1])
    adv, _ = run_all(scores, 4, ALGOS["reinforce"], shaping=shaping)
    assert adv.tolist() == pytest.approx([0.75, -1.5, 1.0, -0.9])
    # dapo keeps mixed groups by accuracy (DAPO filters on accuracy): an all-correct group whose
    # overlong penalties differ is dropped, an all-wrong one too; a mixed group is normalized
    # over its shaped rewards.
    scores = torch.tensor([1., 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0])
    shaping = torch.tensor([0, -0.5, 0, 0, 0, -0.3, -1, 0, -0.5, 0, 0, -1])
    adv, keep = run_all(scores, 4, ALGOS["dapo"], shaping=shaping)
    assert keep.tolist() == [False] * 8 + [True] * 4 and adv[:8].abs().max() == 0
    t = torch.tensor([0.5, 0.0, 1.0, -1.0])
    assert adv[8:].tolist() == pytest.approx(((t - t.mean()) / (t.std() + 1e-4)).tolist())
    # raft: positives by score; advantage = mapped score + shaping.
    adv, keep = run_all(scores[8:], 4, ALGOS["raft"], shaping=shaping[8:])
    assert keep.tolist() == [True, False, True, False] and adv.tolist() == pytest.approx([0.5, 0, 1.0, 0])
    # gfpo by reward per token ranks the shaped reward.
    lengths = torch.tensor([2, 4, 2, 4])
    row = get_algo("gfpo", top_k=1, top_k_by="reward_per_token", scale="none", baseline="none")
    _, keep = run_all(torch.ones(4), 4, row, lengths=lengths, shaping=torch.tensor([-0.5, 0, 0, 0]))
    assert keep.tolist() == [False, False, True, False]


def token_formula(adv, lens, mask, kl, row):
    """REINFORCE++'s per-token advantages from the paper's definition, one token at a time."""
    out, t0 = [], 0
    for s, n in enumerate(lens):
        for t in range(t0, t0 + n):
            rtg = sum(float(kl[i]) for i in range(t, t0 + n) if mask[i]) if row.kl_per_token else 0.0
            out.append(float(adv[s]) - row.kl_coef * rtg if mask[t] else 0.0)
        t0 += n
    if row.whiten:
        vals = [a for a, m in zip(out, mask) if m]
        mean = sum(vals) / len(vals)
        std = (sum((a - mean) ** 2 for a in vals) / (len(vals) - 1)) ** 0.5
        out = [(a - mean) / (std + row.std_eps) if m else 0.0 for a, m in zip(out, mask)]
    return torch.tensor(out)


def test_token_advantages_hand_computed():
    # Two sequences [2 tokens, 3 tokens], advantages [1, 0], KL per token 0.1 .. 0.5, beta 0.5.
    row = get_algo("reinforce++", kl_coef=0.5, whiten=False)
    seq = torch.tensor([0, 0, 1, 1, 1])
    kl = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    got, returns = token_advantages(torch.tensor([1.0, 0.0]), seq, torch.ones(5, dtype=torch.bool), row, kl=kl)
    assert torch.equal(got, returns)  # no critic: values 0
    assert got.tolist() == pytest.approx([1 - 0.5 * 0.3, 1 - 0.5 * 0.2, -0.5 * 1.2, -0.5 * 0.9, -0.5 * 0.5])
    # Whitened: mean 0 and unbiased std 1 (up to std_eps) over the mask tokens, 0 elsewhere.
    mask = torch.tensor([True, False, True, True, True])
    got, _ = token_advantages(torch.tensor([1.0, 0.0]), seq, mask, ALGOS["reinforce++"], kl=kl)
    assert got[1] == 0 and float(got[mask].mean()) == pytest.approx(0, abs=1e-6)
    assert float(got[mask].std()) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("name", ["reinforce++", "reinforce++-baseline"])
def test_token_advantages_match_formula_on_ragged_batches(name):
    g = torch.Generator().manual_seed(3)
    lens = [4, 0, 7, 1, 5, 3]
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    mask = torch.rand(seq.numel(), generator=g) > 0.25
    kl = torch.rand(seq.numel(), generator=g)
    adv = torch.randn(len(lens), generator=g)
    for row in (ALGOS[name], ALGOS[name].with_overrides(whiten=False)):
        got, _ = token_advantages(adv, seq, mask, row, kl=kl)
        torch.testing.assert_close(got, token_formula(adv, lens, mask, kl, row), rtol=1e-5, atol=1e-6)
    # reinforce++-baseline has its KL in the loss: advantages are the sequence's, whitened.
    assert ALGOS["reinforce++-baseline"].kl_in_loss and not ALGOS["reinforce++"].kl_in_loss


def test_token_advantages_errors():
    seq = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="pass kl"):
        token_advantages(torch.zeros(2), seq, torch.ones(3, dtype=torch.bool), ALGOS["reinforce++"])
    with pytest.raises(ValueError, match="mask must be bool"):
        token_advantages(torch.zeros(2), seq, torch.ones(3), ALGOS["reinforce++-baseline"])
    with pytest.raises(ValueError, match="kl_per_token"):
        get_algo("grpo", kl_per_token=True)


def test_token_advantages_with_a_critic_match_gae_by_hand():
    # PPO: reward on the last mask token, -beta * k1 on every mask token, GAE over the critic's values.
    row = get_algo("ppo", gae_gamma=0.9, gae_lambda=0.8, kl_coef=0.1, whiten=False)
    g = torch.Generator().manual_seed(7)
    lens = [3, 0, 5, 2]
    seq = torch.repeat_interleave(torch.arange(4), torch.tensor(lens))
    n = seq.numel()
    mask = torch.tensor([True, True, False, True, True, True, False, True, True, False])
    kl, values, adv = torch.rand(n, generator=g), torch.randn(n, generator=g), torch.tensor([1.0, 0.5, 0.0, 1.0])
    want_a, want_r = [0.0] * n, [0.0] * n
    t0 = 0
    for s, ln in enumerate(lens):
        toks = [t for t in range(t0, t0 + ln) if mask[t]]
        rewards = [-0.1 * float(kl[t]) + (float(adv[s]) if t == toks[-1] else 0.0) for t in toks]
        vals = [float(values[t]) for t in toks] + [0.0]
        a = 0.0
        for j in reversed(range(len(toks))):
            a = rewards[j] + 0.9 * vals[j + 1] - vals[j] + 0.9 * 0.8 * a
            want_a[toks[j]], want_r[toks[j]] = a, a + vals[j]
        t0 += ln
    for backend in ("torch", "triton", "reference"):
        got_a, got_r = token_advantages(adv, seq, mask, row, kl=kl, values=values, backend=backend)
        torch.testing.assert_close(got_a, torch.tensor(want_a), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_r, torch.tensor(want_r), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass values"):
        token_advantages(adv, seq, mask, row, kl=kl)
