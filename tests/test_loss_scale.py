"""LossScale: calls given the whole batch's denominators return shares that sum to the whole batch's loss."""
import pytest
import torch

from lightrl.algos import ALGOS
from lightrl.kernels import LossScale, merge_metrics, policy_loss

AGGREGATES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "token_sum_norm")


def _inputs():
    g = torch.Generator().manual_seed(0)
    lens = [4, 0, 6, 2, 5]  # sequence 1 is empty: it is not one of the S' sequences
    seq = torch.arange(len(lens)).repeat_interleave(torch.tensor(lens))
    n = int(seq.numel())
    logp = -torch.rand(n, generator=g)
    old = logp + 0.3 * torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.25
    adv = torch.randn(len(lens), generator=g)
    return lens, seq, logp, old, mask, adv


@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_shares_sum_to_the_whole_batch(aggregate):
    row = ALGOS["dapo"].with_overrides(aggregate=aggregate)
    lens, seq, logp, old, mask, adv = _inputs()
    whole_lp = logp.clone().requires_grad_(True)
    want, want_m = policy_loss(whole_lp, old, None, adv, mask, seq, row, scale=LossScale(constant=7.0),
                               backend="torch")
    want.backward()
    nonempty = int((torch.zeros(len(lens)).index_add_(0, seq, mask.float()) > 0).sum())
    scale = LossScale(tokens=int(mask.sum()), seqs=nonempty, constant=7.0)
    cut = sum(lens[:3])  # sequences 0-2 | 3-4
    total, grads, calls = 0.0, [], []
    for tok, seqs in ((slice(0, cut), slice(0, 3)), (slice(cut, None), slice(3, None))):
        lp = logp[tok].clone().requires_grad_(True)
        loss, m = policy_loss(lp, old[tok], None, adv[seqs], mask[tok], seq[tok] - seqs.start, row, scale=scale,
                              backend="torch")
        loss.backward()
        total += loss.item()
        grads.append(lp.grad)
        calls.append((m, int(mask[tok].sum())))
    assert total == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(torch.cat(grads), whole_lp.grad, rtol=1e-6, atol=1e-8)
    merged = merge_metrics(calls)
    assert merged["ratio_max"] == pytest.approx(want_m["ratio_max"].item())
    assert merged["ratio_mean"] == pytest.approx(want_m["ratio_mean"].item(), rel=1e-6)
    assert merged["nonzero_adv_token_frac"] == pytest.approx(want_m["kept_frac"].item(), rel=1e-6)


def test_default_scale_is_the_calls_own_and_a_bad_constant_is_refused():
    row = ALGOS["dr-grpo"]
    _, seq, logp, old, mask, adv = _inputs()
    plain, _ = policy_loss(logp, old, None, adv, mask, seq, row, backend="torch")
    own, _ = policy_loss(logp, old, None, adv, mask, seq, row, scale=LossScale(), backend="torch")
    assert plain.item() == own.item() != 0.0
    with pytest.raises(ValueError, match="LossScale.constant must be > 0"):
        policy_loss(logp, old, None, adv, mask, seq, row, scale=LossScale(constant=0.0), backend="torch")
