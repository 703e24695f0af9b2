"""Peer parity with liger-kernel's LigerFusedLinearGRPOLoss (chunked torch ops, runs on CPU).

Where the definitions coincide, lightrl's fused_policy_loss and liger's loss agree on
the loss, d hidden, d weight, the KL mean and the clip fraction. Definitional
differences found (liger-kernel 0.8.5, chunked_loss/grpo_loss.py):

1. Sequence means ("grpo", "dr_grpo"): liger divides by the batch size B, counting rows
   with no mask token; lightrl divides by the sequences with at least one mask token
   (S'). Equal when every sequence has a token (as in these tests).
2. Dr.GRPO: liger sum / (B * max_completion_length); lightrl sum / (S' * loss_constant).
3. CISPO: liger caps the ratio at epsilon_high itself (e.g. 5.0) and has no lower bound;
   lightrl clips to [1 - eps_low, 1 + eps_high], so liger's epsilon_high = E is
   lightrl's eps_high = E - 1 with eps_low = 1. Liger's clip metric counts capped tokens
   with A > 0 only; lightrl's clip_frac_high counts capped tokens with A != 0 (the
   weight of both is changed).
4. Clamps: liger exponentiates log-ratios unclamped (token ratio, sequence ratio, k3);
   lightrl clamps |log ratio| <= 20 (no gradient beyond). Equal inside the clamp.
5. KL: liger has only k3, always in the loss; lightrl has k1/k2/k3 and the
   straight-through forms, in the loss or in the reward. With beta > 0 and no
   ref_per_token_logps liger silently uses the policy itself (KL 0); lightrl raises.
6. The "dapo"/"cispo" normalizer: liger may use num_items_in_batch (tokens across
   gradient-accumulation steps and processes); lightrl's token_mean divides by the mask
   tokens of the call; the training loop rescales across micro-batches.
7. Advantages: liger takes one per sequence; lightrl also takes one per token.
8. Extras on one side only: liger has SAPO, VESPO, LUSPO, delta (INTELLECT-2 ratio cap),
   the vLLM IS correction and bias-corrected KL; lightrl has dual-clip, an entropy term,
   and no-ratio (on-policy log-likelihood) rows.
9. GSPO: both use the GSPO-token gradient (liger through autograd on the sequence mean,
   lightrl in closed form); identical for per-sequence advantages.
"""
import pytest
import torch

from lightrl.algos import get_algo
from lightrl.kernels import LossScale, fused_policy_loss

liger = pytest.importorskip("liger_kernel.chunked_loss")

B, T, D, V = 4, 6, 32, 96
TEMP = 0.8


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g)
    weight = torch.randn(V, D, generator=g) * 0.3
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[2, 1:] = 0  # lengths 4, 6, 1, 6: no empty row (see difference 1)
    with torch.no_grad():
        logp = torch.log_softmax(hidden @ weight.t() / TEMP, -1).gather(-1, ids[..., None])[..., 0]
    old = logp + 0.3 * torch.randn(B, T, generator=g)
    ref = logp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    return hidden, weight, ids, mask, old, ref, adv


def run_liger(inputs, beta, use_old, **kw):
    hidden, weight, ids, mask, old, ref, adv = inputs
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss_fn = liger.LigerFusedLinearGRPOLoss(beta=beta, compiled=False, use_ref_model=beta > 0, chunk_size=2,
                                             temperature=TEMP, **kw)
    loss, metrics = loss_fn(h, w, ids, mask, adv, ref_per_token_logps=ref if beta > 0 else None,
                            old_per_token_logps=old if use_old else None)
    loss.backward()
    kl = metrics[0] if beta > 0 else None
    return loss.detach(), h.grad, w.grad, kl, metrics[-1]


def run_lightrl(inputs, row, use_old, loss_constant=None, backend="torch"):
    hidden, weight, ids, mask, old, ref, adv = inputs
    h = hidden.reshape(B * T, D).clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    seq = torch.arange(B).repeat_interleave(T)
    loss, m = fused_policy_loss(h, w, ids.reshape(-1), old.reshape(-1) if use_old else None,
                                ref.reshape(-1) if row.kl_coef > 0 else None, adv, mask.reshape(-1).bool(), seq, row,
                                temperature=TEMP, scale=LossScale(constant=loss_constant), backend=backend)
    loss.backward()
    return loss.detach(), h.grad.reshape(B, T, D), w.grad, m


CASES = [
    # (lightrl row, liger kwargs, beta)
    ("grpo", dict(loss_type="grpo"), 0.04),
    ("grpo", dict(loss_type="bnpo"), 0.04, dict(aggregate="token_mean")),
    ("dapo", dict(loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28), 0.0),
    ("dr-grpo", dict(loss_type="dr_grpo", max_completion_length=T), 0.0),
    ("gspo", dict(loss_type="grpo", importance_sampling_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4), 0.0),
    ("gspo", dict(loss_type="dapo", importance_sampling_level="sequence", epsilon_low=0.02, epsilon_high=0.03),
     0.04, dict(aggregate="token_mean", eps_low=0.02, eps_high=0.03, kl_coef=0.04)),
    ("cispo", dict(loss_type="cispo", epsilon_high=1.2), 0.0, dict(eps_low=1.0, eps_high=0.2)),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]['loss_type']}" for c in CASES])
@pytest.mark.parametrize("use_old", [True, False], ids=["off-policy", "on-policy"])
def test_matches_liger(case, use_old):
    name, liger_kw, beta = case[:3]
    row = get_algo(name, **(case[3] if len(case) > 3 else {}))
    assert row.kl_coef == beta
    inputs = make_inputs(seed=len(name))
    want_loss, want_gh, want_gw, want_kl, want_clip = run_liger(inputs, beta, use_old, **liger_kw)
    loss, gh, gw, m = run_lightrl(inputs, row, use_old, loss_constant=T)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, want_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, want_gw, rtol=1e-4, atol=1e-6)
    if want_kl is not None:
        torch.testing.assert_close(m["kl_mean"], want_kl.float(), rtol=1e-5, atol=1e-7)
    if row.clip_mode == "ppo":  # CISPO's clip metric differs by definition (difference 3)
        torch.testing.assert_close(m["clip_frac_low"] + m["clip_frac_high"], want_clip.float(), rtol=1e-5,
                                   atol=1e-7)
    if use_old and name != "gspo":
        assert float(m["clip_frac_low"] + m["clip_frac_high"]) > 0  # the comparison covers clipped tokens
