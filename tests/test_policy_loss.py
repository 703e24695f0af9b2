"""policy_loss and fused_policy_loss: every row, every backend, against the formulas written out here.

`formula_loss` below is written from the papers' definitions, one sequence at a time,
with autograd for the gradients; it shares no code with lightrl.kernels.
"""
import dataclasses
import math

import pytest
import torch

from lightrl.algos import ALGOS, get_algo
from lightrl.kernels import LossScale, entropy_cutoff, fused_policy_loss, policy_loss

BACKENDS = ["torch", "triton", "reference"]
METRICS = ["clip_frac_low", "clip_frac_high", "ratio_mean", "ratio_max", "kl_mean", "entropy_mean", "kept_frac"]


def formula_loss(logp, old, ref, adv, mask, seq, row, entropy=None, loss_constant=None, selected=None):
    """The loss of a row, from the definitions. logp/entropy carry autograd; adv is [S] or [N];
    selected: the token indices whose policy-gradient term counts (None: all)."""
    n = logp.shape[0]
    num_seqs = adv.shape[0] if adv.shape[0] != n else int(seq.max()) + 1
    lo, hi = 1 - row.eps_low, 1 + row.eps_high
    seq_terms, seq_lens = [], []
    stats = dict(low=0.0, high=0.0, ratio=[], kl=0.0, ent=0.0, kept=0.0)
    for s in range(num_seqs):
        toks = [t for t in range(n) if int(seq[t]) == s and bool(mask[t])]
        seq_lens.append(len(toks))
        if not toks:
            seq_terms.append([])
            continue
        if row.ratio == "sequence" and old is not None:
            mean_lr = sum(logp[t] - old[t] for t in toks) / len(toks)
            s_ratio = torch.exp(torch.clamp(mean_lr, -20, 20)).detach()
        terms = []
        for t in toks:
            a = adv[t] if adv.shape[0] == n else adv[s]
            on = selected is None or t in selected
            if row.ratio == "none" or old is None:
                r = torch.exp(logp[t] - logp[t].detach())
            elif row.ratio == "token":
                r = torch.exp(torch.clamp(logp[t] - old[t], -20, 20))
            else:  # GSPO-token (GSPO paper, eq. for token-level advantages): sg(s_i) pi_t / sg(pi_t)
                r = s_ratio * torch.exp(logp[t] - logp[t].detach())
            rc = torch.clamp(r, lo, hi)
            if row.clip_mode == "cispo":
                term = -rc.detach() * a * logp[t]
                stats["low"] += float(r < lo and a != 0 and on)
                stats["high"] += float(r > hi and a != 0 and on)
            else:
                obj = torch.min(r * a, rc * a)
                if row.dual_clip is not None and a < 0:
                    obj = torch.max(obj, row.dual_clip * a)
                term = -obj
                stats["low"] += float(r < lo and a < 0 and on)
                stats["high"] += float(r > hi and a > 0 and on)
            if not on:
                term = term * 0
            stats["ratio"].append(float(r.detach()))
            stats["kept"] += float(a != 0 and on)
            if ref is not None:
                x = torch.clamp(ref[t] - logp[t], -20, 20)  # log(pi_ref / pi)
                k = {"k1": -x, "k2": x * x / 2, "k3": torch.exp(x) - 1 - x}
                est = k[row.kl_estimator[:2]]
                if row.kl_estimator.endswith("+"):
                    est = k["k2"] + (est - k["k2"]).detach()
                stats["kl"] += float(est.detach())
                if row.kl_coef > 0 and not row.kl_in_reward:
                    term = term + row.kl_coef * est
            if entropy is not None:
                stats["ent"] += float(entropy[t].detach())
                term = term - row.entropy_coef * entropy[t]
            terms.append(term)
        seq_terms.append(terms)
    tokens = sum(seq_lens)
    nonempty = sum(1 for k in seq_lens if k)
    zero = logp.sum() * 0
    if tokens == 0:
        loss = zero
    elif row.aggregate == "token_mean":
        loss = sum(sum(ts) for ts in seq_terms if ts) / tokens
    elif row.aggregate == "seq_mean_token_mean":
        loss = sum(sum(ts) / len(ts) for ts in seq_terms if ts) / nonempty
    elif row.aggregate == "seq_mean_token_sum":
        loss = sum(sum(ts) for ts in seq_terms if ts) / nonempty
    else:
        c = loss_constant if loss_constant is not None else max(seq_lens)
        loss = sum(sum(ts) for ts in seq_terms if ts) / (nonempty * c)
    d = max(tokens, 1)
    metrics = dict(clip_frac_low=stats["low"] / d, clip_frac_high=stats["high"] / d,
                   ratio_mean=sum(stats["ratio"]) / d, ratio_max=max(stats["ratio"], default=0.0),
                   kl_mean=stats["kl"] / d, entropy_mean=stats["ent"] / d, kept_frac=stats["kept"] / d)
    return zero + loss, metrics


def make_batch(lens, seed=0, per_token_adv=False, near=0.3):
    g = torch.Generator().manual_seed(seed)
    s, n = len(lens), sum(lens)
    seq = torch.repeat_interleave(torch.arange(s), torch.tensor(lens))
    logp = -torch.rand(n, generator=g) * 3 - 0.05
    old = logp + near * torch.randn(n, generator=g)
    ref = logp + near * torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.2
    adv = torch.randn(n if per_token_adv else s, generator=g)
    ent = torch.rand(n, generator=g) * 2
    return logp, old, ref, adv, mask, seq, ent


LENS = [5, 0, 7, 3, 1, 6, 4]


def variants(name):
    row = ALGOS[name]
    extra = dict(kl_coef=0.05, entropy_coef=0.01)
    if row.clip_mode == "ppo":
        extra["dual_clip"] = 1.5
    return [row, row.with_overrides(**extra)]


def run_policy(backend, row, logp, old, ref, adv, mask, seq, ent, **kw):
    lp = logp.clone().requires_grad_(True)
    e = ent.clone().requires_grad_(True) if ent is not None else None
    loss, m = policy_loss(lp, old, ref, adv, mask, seq, row, entropy=e, backend=backend, **kw)
    loss.backward()
    return loss.detach(), m, lp.grad, (e.grad if e is not None else None)


def check_against_formula(row, logp, old, ref, adv, mask, seq, ent, backends=BACKENDS, loss_constant=None):
    lp = logp.clone().requires_grad_(True)
    e = ent.clone().requires_grad_(True) if ent is not None else None
    want_loss, want_m = formula_loss(lp, old, ref, adv, mask, seq, row, entropy=e, loss_constant=loss_constant)
    want_loss.backward()
    want_g = lp.grad if lp.grad is not None else torch.zeros_like(logp)
    want_ge = e.grad if (e is not None and e.grad is not None) else None
    for backend in backends:
        loss, m, g, ge = run_policy(backend, row, logp, old, ref, adv, mask, seq, ent,
                                    scale=LossScale(constant=loss_constant))
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss, want_loss.detach(), rtol=1e-5, atol=1e-6, msg=f"{backend} loss")
        for k in METRICS:
            assert m[k].shape == () and m[k].dtype == torch.float32
            assert float(m[k]) == pytest.approx(want_m[k], rel=1e-5, abs=1e-6), f"{backend} {k}"
        torch.testing.assert_close(g if g is not None else torch.zeros_like(logp), want_g, rtol=1e-5, atol=1e-7,
                                   msg=f"{backend} d logp")
        if row.entropy_coef != 0:
            torch.testing.assert_close(ge, want_ge, rtol=1e-5, atol=1e-8, msg=f"{backend} d entropy")
    return want_loss, want_m


@pytest.mark.interpret
@pytest.mark.parametrize("name", list(ALGOS))
def test_policy_loss_every_row_every_backend(name):
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS)
    for row in variants(name):
        _, m = check_against_formula(row, logp, old, ref, adv, mask, seq, ent, loss_constant=16)
        if row.ratio == "token":  # the inputs are off-policy enough that clipping happens
            assert m["clip_frac_low"] + m["clip_frac_high"] > 0


@pytest.mark.interpret
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "k1+", "k2+", "k3+"])
def test_kl_estimators(estimator):
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=1, near=0.5)
    row = get_algo("grpo", kl_estimator=estimator, kl_coef=0.3)
    check_against_formula(row, logp, old, ref, adv, mask, seq, None)
    # Straight-through forms: the estimator's value, k2's gradient.
    if estimator.endswith("+"):
        plain = run_policy("torch", get_algo("grpo", kl_estimator=estimator[:2], kl_coef=0.3),
                           logp, old, ref, adv, mask, seq, None)
        k2 = run_policy("torch", get_algo("grpo", kl_estimator="k2", kl_coef=0.3), logp, old, ref, adv, mask, seq,
                        None)
        st = run_policy("torch", row, logp, old, ref, adv, mask, seq, None)
        torch.testing.assert_close(st[0], plain[0])
        torch.testing.assert_close(st[2], k2[2])


@pytest.mark.interpret
def test_per_token_advantages():
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=2, per_token_adv=True)
    for name in ("grpo", "gspo", "cispo", "rloo"):
        check_against_formula(ALGOS[name], logp, old, ref, adv, mask, seq, None)
    # Per-token advantages equal to the gathered per-sequence ones give the same loss.
    _, _, _, adv_s, _, _, _ = make_batch(LENS, seed=2)
    a = run_policy("torch", ALGOS["grpo"], logp, old, ref, adv_s, mask, seq, None)
    b = run_policy("torch", ALGOS["grpo"], logp, old, ref, adv_s[seq], mask, seq, None)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2], b[2])


def test_gspo_token_equals_sequence_form_for_sequence_advantages():
    """With one advantage per sequence, GSPO-token's gradient is GSPO's: d/dlogp_t through
    s_i = exp(mean_t (logp_t - old_t)) (the GSPO paper's sequence objective)."""
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=8, near=0.02)
    row = get_algo("gspo", eps_low=0.01, eps_high=0.01)
    lp = logp.clone().requires_grad_(True)
    terms = []
    for s in range(len(LENS)):
        toks = (seq == s) & mask
        if toks.any():
            ratio = torch.exp((lp[toks] - old[toks]).mean())
            terms.append(-torch.min(ratio * adv[s], ratio.clamp(0.99, 1.01) * adv[s]))
    (sum(terms) / len(terms)).backward()
    got = run_policy("torch", row, logp, old, ref, adv, mask, seq, None)
    torch.testing.assert_close(got[0], (sum(terms) / len(terms)).detach())
    torch.testing.assert_close(got[2], lp.grad)
    assert 0 < float(got[1]["clip_frac_low"] + got[1]["clip_frac_high"]) < 1


@pytest.mark.interpret
def test_on_policy_old_logp_none_is_ratio_one_with_gradient():
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=3)
    for name in ("grpo", "gspo", "dapo", "cispo"):
        row = ALGOS[name]
        _, m = check_against_formula(row, logp, None, ref, adv, mask, seq, None)
        assert m["ratio_mean"] == pytest.approx(1.0) and m["clip_frac_low"] == m["clip_frac_high"] == 0
        # Same as passing old = logp: ratio exactly 1, gradient -w A (+ KL).
        for backend in BACKENDS:
            a = run_policy(backend, row, logp, None, ref, adv, mask, seq, None)
            b = run_policy(backend, row, logp, logp.clone(), ref, adv, mask, seq, None)
            torch.testing.assert_close(a[0], b[0])
            torch.testing.assert_close(a[2], b[2])
            assert a[2].abs().sum() > 0


@pytest.mark.interpret
def test_ref_none_with_kl_off_and_error_with_kl_on():
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=4)
    row = get_algo("grpo", kl_coef=0)
    for backend in BACKENDS:
        loss, m, g, _ = run_policy(backend, row, logp, old, None, adv, mask, seq, None)
        assert float(m["kl_mean"]) == 0.0 and torch.isfinite(loss)
    check_against_formula(row, logp, old, None, adv, mask, seq, None)
    with pytest.raises(ValueError, match="pass ref_logp"):
        policy_loss(logp, old, None, adv, mask, seq, ALGOS["grpo"])
    with pytest.raises(ValueError, match="pass entropy"):
        policy_loss(logp, old, ref, adv, mask, seq, get_algo("dapo", entropy_coef=0.1))


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["grpo", "dr-grpo", "dapo", "rloo", "gspo"])
def test_empty_sequences_under_the_mask(name):
    logp, old, ref, adv, mask, seq, ent = make_batch([4, 3, 5, 2], seed=5)
    mask[seq == 1] = False
    mask[seq == 3] = False
    want, _ = check_against_formula(ALGOS[name], logp, old, ref, adv, mask, seq, None)
    # The empty sequences change nothing: the same loss without them.
    keep = (seq == 0) | (seq == 2)
    seq2 = torch.where(seq[keep] == 2, 1, 0)
    got = run_policy("torch", ALGOS[name], logp[keep], old[keep], ref[keep], adv[[0, 2]], mask[keep], seq2, None)
    torch.testing.assert_close(got[0], want.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["grpo", "dr-grpo", "gspo", "cispo", "rloo"])
def test_nothing_counts_gives_zero_loss_no_nan(name):
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=6)
    row = ALGOS[name].with_overrides(entropy_coef=0.01)
    for backend in BACKENDS:
        loss, m, g, ge = run_policy(backend, row, logp, old, ref, adv, torch.zeros_like(mask), seq, ent)
        assert float(loss) == 0.0
        assert torch.count_nonzero(g) == 0 and torch.isfinite(g).all()
        assert all(float(m[k]) == 0.0 for k in METRICS)
        # Every group filtered: all advantages 0 -> zero loss and zero gradient without KL / entropy.
        loss, m, g, _ = run_policy(backend, ALGOS[name].with_overrides(kl_coef=0), logp, old, ref,
                                   torch.zeros_like(adv), mask, seq, None)
        assert float(loss) == 0.0 and torch.count_nonzero(g) == 0 and float(m["kept_frac"]) == 0.0


@pytest.mark.interpret
def test_masked_tokens_may_hold_garbage():
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=7)
    bad = ~mask
    logp2, old2, ref2 = logp.clone(), old.clone(), ref.clone()
    logp2[bad], old2[bad], ref2[bad] = -1e30, float("inf"), float("nan")
    for backend in BACKENDS:
        a = run_policy(backend, ALGOS["grpo"], logp, old, ref, adv, mask, seq, None)
        b = run_policy(backend, ALGOS["grpo"], logp2, old2, ref2, adv, mask, seq, None)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[2], b[2])


def test_input_errors():
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS)
    with pytest.raises(ValueError, match="non-decreasing"):
        policy_loss(logp, old, ref, adv, mask, seq.flip(0), ALGOS["grpo"])
    with pytest.raises(TypeError, match="mask must be bool"):
        policy_loss(logp, old, ref, adv, mask.float(), seq, ALGOS["grpo"])
    with pytest.raises(ValueError, match="advantages has 3 entries"):
        policy_loss(logp, old, ref, adv[:3], mask, seq, ALGOS["grpo"])
    with pytest.raises(ValueError, match="old_logp must have shape"):
        policy_loss(logp, old[:-1], ref, adv, mask, seq, ALGOS["grpo"])


def fused_inputs(lens, d=32, v=80, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    hidden = torch.randn(n, d, generator=g).to(dtype)
    weight = (torch.randn(v, d, generator=g) * 0.2).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(hidden.float() @ weight.float().t() / 0.7, -1).gather(1, targets[:, None])[:, 0]
    old = logp + 0.15 * torch.randn(n, generator=g)
    ref = logp + 0.15 * torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.2
    adv = torch.randn(len(lens), generator=g)
    return hidden, weight, targets, old, ref, adv, mask, seq


def fused_formula(row, hidden, weight, targets, old, ref, adv, mask, seq, temperature=0.7, loss_constant=None):
    h = hidden.float().clone().requires_grad_(True)
    w = weight.float().clone().requires_grad_(True)
    logprobs = torch.log_softmax(h @ w.t() / temperature, dim=-1)
    logp = logprobs.gather(1, targets[:, None])[:, 0]
    entropy = -(logprobs.exp() * logprobs).sum(-1) if row.entropy_coef != 0 else None
    loss, m = formula_loss(logp, old, ref, adv, mask, seq, row, entropy=entropy, loss_constant=loss_constant)
    loss.backward()
    return loss.detach(), m, h.grad, w.grad


def run_fused(backend, row, hidden, weight, targets, old, ref, adv, mask, seq, **kw):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss, m = fused_policy_loss(h, w, targets, old, ref, adv, mask, seq, row, temperature=0.7, backend=backend, **kw)
    (2.0 * loss).backward()  # grad_output != 1 must scale the gradients
    return loss.detach(), m, h.grad / 2, w.grad / 2


@pytest.mark.interpret
@pytest.mark.parametrize("name", list(ALGOS))
def test_fused_every_row_every_backend(name):
    inputs = fused_inputs([6, 0, 9, 4, 1, 7])
    for row in variants(name):
        want_loss, want_m, want_gh, want_gw = fused_formula(row, *inputs, loss_constant=12)
        for backend in BACKENDS:
            loss, m, gh, gw = run_fused(backend, row, *inputs, scale=LossScale(constant=12))
            torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6, msg=f"{backend} loss")
            for k in METRICS:
                if k == "entropy_mean" and row.entropy_coef == 0:
                    continue  # entropy is computed only for rows that use it
                assert float(m[k]) == pytest.approx(want_m[k], rel=1e-4, abs=1e-6), f"{backend} {k}"
            torch.testing.assert_close(gh, want_gh, rtol=1e-4, atol=1e-6, msg=f"{backend} d hidden")
            torch.testing.assert_close(gw, want_gw, rtol=1e-4, atol=1e-6, msg=f"{backend} d weight")


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["dapo", "gspo"])
def test_fused_bf16(name):
    inputs = fused_inputs([5, 8, 3], dtype=torch.bfloat16, seed=1)
    row = ALGOS[name].with_overrides(entropy_coef=0.01)
    want_loss, _, want_gh, want_gw = fused_formula(row, *inputs)
    for backend in BACKENDS:
        loss, m, gh, gw = run_fused(backend, row, *inputs)
        assert gh.dtype == gw.dtype == torch.bfloat16
        torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gh.float(), want_gh, rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(gw.float(), want_gw, rtol=2e-2, atol=2e-3)


@pytest.mark.interpret
def test_fused_ignore_index_and_frozen_weight():
    hidden, weight, targets, old, ref, adv, mask, seq = fused_inputs([6, 5], seed=2)
    targets[2] = -100
    mask[2] = False
    row = ALGOS["grpo"]
    want = fused_formula(row, hidden, weight, targets.clamp(min=0), old, ref, adv, mask, seq)
    for backend in BACKENDS:
        h = hidden.clone().requires_grad_(True)
        loss, _ = fused_policy_loss(h, weight, targets, old, ref, adv, mask, seq, row, temperature=0.7,
                                    backend=backend)
        loss.backward()
        torch.testing.assert_close(loss.detach(), want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h.grad, want[2], rtol=1e-4, atol=1e-6)
        assert weight.grad is None


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["grpo", "gspo", "dapo"])
def test_fused_cuda_bf16_matches_torch_backend(name):
    """GPU tier: the Triton path at a realistic vocabulary against the torch path (both fused)."""
    torch.manual_seed(0)
    lens = [300, 0, 517, 128, 1, 700]
    n, d, v = sum(lens), 256, 32000
    dev = torch.device("cuda")
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(dev)
    hidden = torch.randn(n, d, device=dev).bfloat16()
    weight = (torch.randn(v, d, device=dev) * 0.05).bfloat16()
    targets = torch.randint(0, v, (n,), device=dev)
    with torch.no_grad():
        logp = torch.log_softmax(hidden.float() @ weight.float().t(), -1).gather(1, targets[:, None])[:, 0]
    old, ref = logp + 0.1 * torch.randn_like(logp), logp + 0.1 * torch.randn_like(logp)
    mask = torch.rand(n, device=dev) > 0.1
    adv = torch.randn(len(lens), device=dev)
    row = ALGOS[name].with_overrides(entropy_coef=0.01)
    out = {}
    for backend in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss, m = fused_policy_loss(h, w, targets, old, ref, adv, mask, seq, row, backend=backend)
        loss.backward()
        out[backend] = (loss.detach(), h.grad.float(), w.grad.float(), m)
    a, b = out["triton"], out["torch"]
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(a[2], b[2], rtol=2e-2, atol=1e-3)
    for k in METRICS:
        torch.testing.assert_close(a[3][k], b[3][k], rtol=1e-4, atol=1e-5)


@pytest.fixture
def cuda_config(monkeypatch):
    """Triton kernels with the GPU launch configuration (BLOCK=1024 tokens per program, the
    log-prob tiles and splits), run through the interpreter on CPU tensors."""
    from lightrl.kernels import backend
    monkeypatch.setattr(backend, "triton_target", lambda device: "cuda")


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["grpo", "dapo", "gspo", "cispo", "dr-grpo", "rloo"])
def test_cuda_configuration_policy_loss(cuda_config, name):
    from lightrl.kernels import policy_loss_triton
    assert policy_loss_triton._config(torch.empty(0).device)["BLOCK"] == 1024
    # 1100 tokens: two programs of 1024, sequences crossing the block boundary.
    lens = [300, 0, 517, 128, 1, 154]
    logp, old, ref, adv, mask, seq, ent = make_batch(lens, seed=3)
    for row in variants(name):
        check_against_formula(row, logp, old, ref, adv, mask, seq, ent, backends=["triton"], loss_constant=600)


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_cuda_configuration_fused_bf16(cuda_config, name):
    inputs = fused_inputs([70, 0, 90, 33], d=64, v=600, dtype=torch.bfloat16, seed=4)
    row = ALGOS[name].with_overrides(entropy_coef=0.01, kl_coef=0.02)
    want_loss, _, want_gh, want_gw = fused_formula(row, *inputs)
    loss, m, gh, gw = run_fused("triton", row, *inputs)
    assert gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gh.float(), want_gh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gw.float(), want_gw, rtol=2e-2, atol=2e-3)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["grpo", "gspo"])
def test_fused_frozen_weight_skips_the_weight_gradient(backend, name, monkeypatch):
    """Frozen lm_head: no d weight is computed on either path (token-level and generic), d hidden unchanged."""
    from lightrl.kernels import fused_policy_loss_torch, logprobs_torch, logprobs_triton
    hidden, weight, targets, old, ref, adv, mask, seq = fused_inputs([6, 5, 7], seed=5)
    row = ALGOS[name]
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss, _ = fused_policy_loss(h, w, targets, old, ref, adv, mask, seq, row, temperature=0.7, backend=backend)
    loss.backward()
    asked = []
    for module, fn in ((logprobs_torch, "logprobs_backward"), (logprobs_triton, "logprobs_backward"),
                       (fused_policy_loss_torch, "fused_token_level")):
        real = getattr(module, fn)

        def spy(*args, _real=real, want_grad_weight=True, **kw):
            asked.append(want_grad_weight)
            return _real(*args, want_grad_weight=want_grad_weight, **kw)
        monkeypatch.setattr(module, fn, spy)
    h2 = hidden.clone().requires_grad_(True)
    loss2, _ = fused_policy_loss(h2, weight, targets, old, ref, adv, mask, seq, row, temperature=0.7,
                                 backend=backend)
    loss2.backward()
    assert asked == [False] and weight.grad is None
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(h2.grad, h.grad, rtol=1e-6, atol=1e-7)


def top_entropy_tokens(entropy, mask, frac):
    """Indices of the ceil(frac * T) highest-entropy mask tokens (with every tie at the last one)."""
    toks = sorted((float(entropy[t]), t) for t in range(entropy.numel()) if mask[t])
    k = math.ceil(frac * len(toks))
    last = toks[-k][0]
    return {t for e, t in toks if e >= last}


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["grpo", "cispo", "gspo"])
def test_entropy_selected_tokens_every_backend(name):
    logp, old, ref, adv, mask, seq, ent = make_batch(LENS, seed=4)
    row = ALGOS[name].with_overrides(entropy_top_frac=0.3, kl_coef=0.05)
    chosen = top_entropy_tokens(ent, mask, 0.3)
    assert len(chosen) == math.ceil(0.3 * int(mask.sum()))
    lp = logp.clone().requires_grad_(True)
    want, want_m = formula_loss(lp, old, ref, adv, mask, seq, row, entropy=ent, selected=chosen)
    want.backward()
    for backend in BACKENDS:
        loss, m, g, _ = run_policy(backend, row, logp, old, ref, adv, mask, seq, ent)
        torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(g, lp.grad, rtol=1e-5, atol=1e-7, msg=backend)
        assert float(m["kept_frac"]) == pytest.approx(want_m["kept_frac"], abs=1e-6)
    # The KL term still acts on every token: unselected tokens keep a gradient.
    off = [t for t in range(logp.numel()) if mask[t] and t not in chosen]
    assert lp.grad[off].abs().min() > 0
    with pytest.raises(ValueError, match="entropy_top_frac=0.3: pass entropy"):
        policy_loss(logp, old, ref, adv, mask, seq, row)


@pytest.mark.interpret
@pytest.mark.parametrize("name", ["dapo", "gspo"])
def test_fused_entropy_selection_micro_batches_sum_to_the_batch(name):
    hidden, weight, targets, old, ref, adv, mask, seq = fused_inputs([6, 0, 9, 4, 1, 7, 5, 3], seed=2)
    row = ALGOS[name].with_overrides(entropy_top_frac=0.2)
    with torch.no_grad():
        logprobs = torch.log_softmax(hidden @ weight.t() / 0.7, -1)
        ent = -(logprobs.exp() * logprobs).sum(-1)
    chosen = top_entropy_tokens(ent, mask, 0.2)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    lp = torch.log_softmax(h @ w.t() / 0.7, -1).gather(1, targets[:, None])[:, 0]
    want, _ = formula_loss(lp, old, ref, adv, mask, seq, row, selected=chosen)
    want.backward()
    cutoff = entropy_cutoff(ent, mask, 0.2)
    scale = LossScale(tokens=int(mask.sum()), seqs=int(sum(1 for s in range(8) if mask[seq == s].any())),
                      entropy_cutoff=cutoff)
    cuts = [(0, 3), (3, 6), (6, 8)]  # sequences per micro-batch
    for backend in BACKENDS:
        # The whole batch in one call picks its own cutoff.
        loss, _, gh, gw = run_fused(backend, row, hidden, weight, targets, old, ref, adv, mask, seq)
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6, msg=f"{backend} whole")
        torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-6, msg=f"{backend} whole d hidden")
        total, own, grads = 0.0, 0.0, torch.zeros_like(weight)
        for a, b in cuts:
            t = (seq >= a) & (seq < b)
            part = [x[t] for x in (hidden, targets, old, ref)]
            args = (part[0], weight, part[1], part[2], part[3], adv[a:b], mask[t], seq[t] - a)
            loss_mb, _, _, gw_mb = run_fused(backend, row, *args, scale=scale)
            total, grads = total + loss_mb, grads + gw_mb
            own += run_fused(backend, row, *args, scale=dataclasses.replace(scale, entropy_cutoff=None))[0]
        torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-6, msg=f"{backend} micro")
        torch.testing.assert_close(grads, w.grad, rtol=1e-4, atol=1e-6, msg=f"{backend} micro d weight")
        assert abs(float(own) - float(want.detach())) > 1e-4  # each micro-batch's own top 20% is another selection
