"""gae: a hand-computed example, the reference loop on ragged batches, every backend, and a
compile of the Triton kernel for sm_90 with the interpreter off."""
import os
import subprocess
import sys

import pytest
import torch

from lightrl.kernels import gae

BACKENDS = ["torch", "triton", "reference"]


def formula(rewards, values, mask, lens, gamma, lam):
    """GAE from its definition: A_t = sum_k (gamma lam)^k delta_{t+k} over the sequence's mask tokens,
    delta_t = r_t + gamma V_{t+1} - V_t with V after the last mask token 0; returns A + V."""
    adv, ret, t0 = [0.0] * len(rewards), [0.0] * len(rewards), 0
    for n in lens:
        toks = [t for t in range(t0, t0 + n) if mask[t]]
        vals = [float(values[t]) for t in toks] + [0.0]
        deltas = [float(rewards[t]) + gamma * vals[j + 1] - vals[j] for j, t in enumerate(toks)]
        for j, t in enumerate(toks):
            adv[t] = sum((gamma * lam) ** k * d for k, d in enumerate(deltas[j:]))
            ret[t] = adv[t] + vals[j]
        t0 += n
    return torch.tensor(adv), torch.tensor(ret)


def run_all(rewards, values, mask, seq, gamma, lam, **kw):
    out = {b: gae(rewards, values, mask, seq, gamma=gamma, lam=lam, backend=b, **kw) for b in BACKENDS}
    for b in ("torch", "triton"):
        for got, want in zip(out[b], out["reference"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{b} gamma={gamma} lam={lam}")
    assert all(x.dtype == torch.float32 for x in out["torch"])
    return out["torch"]


@pytest.mark.interpret
def test_hand_computed():
    # One sequence of 3 tokens, reward 1 on the last, values [.5, .2, .4], gamma .9, lam .5:
    # deltas: t2 = 1 - .4 = .6; t1 = .9 * .4 - .2 = .16; t0 = .9 * .2 - .5 = -.32
    # A2 = .6; A1 = .16 + .45 * .6 = .43; A0 = -.32 + .45 * .43 = -.1265
    r = torch.tensor([0.0, 0.0, 1.0])
    v = torch.tensor([0.5, 0.2, 0.4])
    adv, ret = run_all(r, v, torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), 0.9, 0.5)
    assert adv.tolist() == pytest.approx([-0.1265, 0.43, 0.6], abs=1e-6)
    assert ret.tolist() == pytest.approx([0.3735, 0.63, 1.0], abs=1e-6)
    # gamma = lam = 1 with V = 0: the return-to-go.
    adv, ret = run_all(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3), torch.ones(3, dtype=torch.bool),
                       torch.zeros(3, dtype=torch.long), 1.0, 1.0)
    assert adv.tolist() == [6.0, 5.0, 3.0] and ret.tolist() == [6.0, 5.0, 3.0]


@pytest.mark.interpret
@pytest.mark.parametrize("gamma", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
def test_ragged_masked_against_formula(gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 10 + lam * 100))
    lens = [5, 0, 9, 1, 3, 0, 17, 2]  # empty sequences in the middle and one longer than a block
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    n = seq.numel()
    rewards, values = torch.randn(n, generator=g), torch.randn(n, generator=g)
    mask = torch.rand(n, generator=g) > 0.3
    adv, ret = run_all(rewards, values, mask, seq, gamma, lam, num_seqs=len(lens))
    want_adv, want_ret = formula(rewards, values, mask, lens, gamma, lam)
    torch.testing.assert_close(adv, want_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, want_ret, rtol=1e-5, atol=1e-5)
    assert adv[~mask].abs().max() == 0 and ret[~mask].abs().max() == 0
    # Masked tokens are skipped, whatever they hold.
    noisy_r, noisy_v = rewards.clone(), values.clone()
    noisy_r[~mask], noisy_v[~mask] = 1e6, -1e6
    for got, want in zip(run_all(noisy_r, noisy_v, mask, seq, gamma, lam), (adv, ret)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.interpret
def test_many_sequences_and_empty():
    g = torch.Generator().manual_seed(5)
    lens = torch.randint(0, 12, (70,), generator=g)  # more sequences than one program's lanes
    seq = torch.repeat_interleave(torch.arange(70), lens)
    n = seq.numel()
    run_all(torch.randn(n, generator=g), torch.randn(n, generator=g), torch.rand(n, generator=g) > 0.1, seq,
            0.95, 0.9)
    empty = torch.zeros(0)
    adv, ret = run_all(empty, empty, empty.bool(), empty.long(), 1.0, 1.0)
    assert adv.shape == ret.shape == (0,)


def test_input_errors():
    x, m, s = torch.zeros(3), torch.ones(3, dtype=torch.bool), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match=r"lam=1.5 must be in \[0, 1\]"):
        gae(x, x, m, s, gamma=1.0, lam=1.5)
    with pytest.raises(ValueError, match="values must be"):
        gae(x, x[:2], m, s, gamma=1.0, lam=1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        gae(x, x, m, s.flip(0), gamma=1.0, lam=1.0)
    with pytest.raises(TypeError, match="mask must be bool"):
        gae(x, x, m.float(), s, gamma=1.0, lam=1.0)


COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lightrl.kernels import gae_triton
sig = {"r_ptr": "*fp32", "v_ptr": "*fp32", "mask_ptr": "*i8", "start_ptr": "*i64", "len_ptr": "*i64",
       "adv_ptr": "*fp32", "ret_ptr": "*fp32", "num_seqs": "i32", "max_len": "i32", "gamma": "fp32",
       "gamma_lam": "fp32", "BLOCK": "constexpr"}
src = ASTSource(fn=gae_triton._gae_kernel, signature=sig, constexprs={"BLOCK": 128})
out = triton.compile(src, target=GPUTarget("cuda", 90, 32))
print("ptx", len(out.asm["ptx"]), "cubin", len(out.asm["cubin"]))
"""


def test_triton_kernel_compiles_for_sm90():
    # The interpreter (set for the other tests) must be off for a real compile: a fresh process.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ptx, cubin = out.stdout.split()[1::2]
    assert int(ptx) > 0 and int(cubin) > 0


@pytest.mark.gpu
def test_cuda_matches_reference():
    g = torch.Generator().manual_seed(9)
    lens = torch.randint(0, 300, (1000,), generator=g)
    seq = torch.repeat_interleave(torch.arange(1000), lens)
    n = seq.numel()
    r, v, m = torch.randn(n, generator=g), torch.randn(n, generator=g), torch.rand(n, generator=g) > 0.05
    want = gae(r, v, m, seq, gamma=0.99, lam=0.95, backend="torch")
    for b in ("triton", "torch"):
        got = gae(r.cuda(), v.cuda(), m.cuda(), seq.cuda(), gamma=0.99, lam=0.95, backend=b)
        for x, y in zip(got, want):
            torch.testing.assert_close(x.cpu(), y, rtol=1e-4, atol=1e-4, msg=b)
