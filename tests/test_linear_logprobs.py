"""linear_logprobs: every backend against the full-logits reference, forward and backward.

Tolerances, as a fraction of the largest |reference| value of each output:
  fp32: 1e-4 for logp, entropy and both gradients.
  bf16 / fp16 inputs: 1e-3 for logp and entropy (all backends do fp32 math on the
  same rounded inputs); 2e-2 for gradients (they come back in the input dtype, and
  the Triton backward stores dL/dz in it before the GEMMs: ~2^-8 relative).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lightrl.kernels import linear_logprobs
from lightrl.kernels import logprobs_torch
from lightrl.kernels.logprobs_torch import reference_linear_logprobs

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpret)]
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (1e-3, 2e-2), torch.float16: (1e-3, 2e-2)}


def _triton_module():
    from lightrl.kernels import logprobs_triton
    return logprobs_triton


def _inputs(n, d, v, dtype, *, scale=1.0, ignore=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=gen) * scale).to(dtype)
    weight = (torch.randn(v, d, generator=gen) / d ** 0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[list(ignore)] = -100
    # Upstream gradients on both outputs, so every term of the backward is exercised.
    g_logp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return hidden, weight, targets, g_logp, g_ent


def _run(backend, hidden, weight, targets, g_logp, g_ent, temperature, entropy):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = linear_logprobs(h, w, targets, temperature=temperature, return_entropy=entropy, backend=backend)
    if entropy:
        logp, ent = out
        (logp * g_logp + ent * g_ent).sum().backward()
    else:
        logp, ent = out, None
        (logp * g_logp).sum().backward()
    return logp, ent, h.grad, w.grad


def _close(actual, expected, tol, what):
    assert actual.dtype == expected.dtype, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    atol = tol * max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=atol, msg=lambda m: f"{what}: {m}")


def _assert_matches_reference(backend, args, dtype, temperature, entropy):
    """backend's log-probs, entropy and both gradients on args against the reference's, at dtype's
    tolerances; returns the reference's outputs."""
    ref = _run("reference", *args, temperature, entropy)
    got = _run(backend, *args, temperature, entropy)
    fwd_tol, grad_tol = TOL[dtype]
    _close(got[0], ref[0], fwd_tol, "logp")
    if entropy:
        _close(got[1], ref[1], fwd_tol, "entropy")
    _close(got[2], ref[2], grad_tol, "grad hidden")
    _close(got[3], ref[3], grad_tol, "grad weight")
    return ref


CASES = {
    # name: (n, d, v, dtype, temperature, hidden scale, ignored rows)
    "ragged-vocab": (37, 48, 300, torch.float32, 1.0, 1.0, ()),  # V, N not multiples of any tile
    "n1-odd-d": (1, 19, 77, torch.float32, 0.7, 1.0, ()),
    "temperature": (20, 32, 130, torch.float32, 1.7, 2.0, ()),
    "ignored": (29, 24, 150, torch.float32, 1.0, 1.0, (0, 5, 28)),
    "large-logits": (16, 16, 100, torch.float32, 0.5, 300.0, ()),  # |z| up to ~1e3: exp would overflow unshifted
    "bf16": (37, 33, 300, torch.bfloat16, 1.3, 1.0, (3,)),
    "fp16": (17, 32, 100, torch.float16, 1.0, 1.0, ()),
}


@pytest.mark.parametrize("entropy", [True, False], ids=["entropy", "logp-only"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_reference(backend, case, entropy):
    n, d, v, dtype, temperature, scale, ignore = CASES[case]
    args = _inputs(n, d, v, dtype, scale=scale, ignore=ignore)
    ref = _assert_matches_reference(backend, args, dtype, temperature, entropy)
    if case == "large-logits":
        assert ref[0].abs().max() > 100, "the case must really produce large log-probs"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignored_targets_give_zero_and_no_gradient(backend):
    hidden, weight, targets, g_logp, g_ent = _inputs(12, 16, 70, torch.float32, ignore=(2, 7))
    logp, ent, grad_h, _ = _run(backend, hidden, weight, targets, g_logp, g_ent, 1.0, True)
    assert logp[[2, 7]].tolist() == [0.0, 0.0] and ent[[2, 7]].tolist() == [0.0, 0.0]
    assert grad_h[[2, 7]].abs().max().item() == 0.0
    assert (logp[[0, 1, 3]] < 0).all() and (ent[[0, 1, 3]] > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_entropy_alone(backend):
    hidden, weight, targets, _, g_ent = _inputs(9, 16, 50, torch.float32)
    grads = []
    for name in ("reference", backend):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        _, ent = linear_logprobs(h, w, targets, temperature=0.8, return_entropy=True, backend=name)
        (ent * g_ent).sum().backward()
        grads.append((h.grad, w.grad))
    _close(grads[1][0], grads[0][0], 1e-4, "grad hidden")
    _close(grads[1][1], grads[0][1], 1e-4, "grad weight")


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1.0), (torch.bfloat16, 1.0), (torch.float32, 300.0)],
                         ids=["fp32", "bf16", "fp32-large-logits"])
@pytest.mark.parametrize("module", ["torch", pytest.param("triton", marks=pytest.mark.interpret)])
def test_primitives_match_reference_across_chunks(module, dtype, scale, monkeypatch):
    """logprobs_forward / logprobs_backward, with blocks small enough to take the multi-block paths
    (the online log-sum-exp and entropy merge across vocabulary blocks, d weight summed over row blocks)."""
    impl = logprobs_torch if module == "torch" else _triton_module()
    # Blocks of 16 rows (3 for N = 37) and, in the torch backend, 50 columns (3 for V = 130).
    monkeypatch.setattr(impl, "_CHUNK_ELEMENTS", 16 * 50)
    if module == "torch":
        monkeypatch.setattr(impl, "_MAX_ROWS", 16)
    hidden, weight, targets, g_logp, g_ent = _inputs(37, 20, 130, dtype, scale=scale, ignore=(4,))
    t = 0.9
    logits = hidden.float() @ weight.float().t() / t
    logp, ent, lse = impl.logprobs_forward(hidden, weight, targets, t, True)
    fwd_tol, grad_tol = TOL[dtype]
    _close(lse, torch.logsumexp(logits, dim=1), fwd_tol, "lse")
    ref_logp, ref_ent = reference_linear_logprobs(hidden, weight, targets, t, True)
    _close(logp, ref_logp, fwd_tol, "logp")
    _close(ent, ref_ent, fwd_tol, "entropy")
    logp_only, no_entropy, lse_only = impl.logprobs_forward(hidden, weight, targets, t, False)
    assert no_entropy is None
    _close(lse_only, lse, fwd_tol, "lse without entropy")
    _close(logp_only, ref_logp, fwd_tol, "logp without entropy")

    for with_entropy in (True, False):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        lp, en = reference_linear_logprobs(h, w, targets, t, True)
        (lp * g_logp + (en * g_ent if with_entropy else 0)).sum().backward()
        gh, gw = impl.logprobs_backward(hidden, weight, targets, t, lse, ent, g_logp,
                                        g_ent if with_entropy else None)
        assert gh.dtype == dtype and gw.dtype == dtype and gh.shape == hidden.shape and gw.shape == weight.shape
        _close(gh, h.grad, grad_tol, f"grad hidden (entropy term {with_entropy})")
        _close(gw, w.grad, grad_tol, f"grad weight (entropy term {with_entropy})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    h, w = torch.randn(0, 8, requires_grad=True), torch.randn(10, 8, requires_grad=True)
    logp, ent = linear_logprobs(h, w, torch.zeros(0, dtype=torch.long), return_entropy=True, backend=backend)
    assert logp.shape == ent.shape == (0,)
    (logp.sum() + ent.sum()).backward()
    assert h.grad.shape == (0, 8) and w.grad.abs().max().item() == 0.0


def test_auto_backend_is_torch_on_cpu():
    hidden, weight, targets, g_logp, g_ent = _inputs(10, 16, 40, torch.float32)
    auto = _run("auto", hidden, weight, targets, g_logp, g_ent, 1.0, True)
    torch_ = _run("torch", hidden, weight, targets, g_logp, g_ent, 1.0, True)
    for a, b in zip(auto, torch_):
        assert torch.equal(a, b)
    assert auto[0].dtype == torch.float32 and auto[0].shape == (10,)


def test_bad_inputs_raise_clear_errors():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, -100])
    with pytest.raises(ValueError, match=r"hidden must be \[N, D\]"):
        linear_logprobs(h[None], w, t)
    with pytest.raises(ValueError, match="hidden size D must match"):
        linear_logprobs(torch.randn(4, 7), w, t)
    with pytest.raises(ValueError, match=r"targets must be \[N=4\]"):
        linear_logprobs(h, w, t[:3])
    with pytest.raises(TypeError, match="share one dtype"):
        linear_logprobs(h, w.bfloat16(), t)
    with pytest.raises(TypeError, match="share one dtype"):
        linear_logprobs(h.double(), w.double(), t)
    with pytest.raises(TypeError, match="int64"):
        linear_logprobs(h, w, t.int())
    with pytest.raises(ValueError, match="one device"):
        linear_logprobs(h, w.to("meta"), t)
    with pytest.raises(ValueError, match=r"targets\[1\] = 10 is outside the vocabulary \[0, 10\)"):
        linear_logprobs(h, w, torch.tensor([1, 10, 3, 4]))
    with pytest.raises(ValueError, match=r"targets\[0\] = -1"):
        linear_logprobs(h, w, torch.tensor([-1, 0, 3, 4]))
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(h, w, t, temperature=0.0)
    with pytest.raises(ValueError, match="backend"):
        linear_logprobs(h, w, t, backend="cuda")


_PEAK_SCRIPT = textwrap.dedent("""
    import json, re, resource, sys
    from pathlib import Path
    import torch
    from lightrl.kernels import linear_logprobs
    backend, n, d, v = sys.argv[1], *map(int, sys.argv[2:])
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=gen).requires_grad_()
    w = (torch.randn(v, d, generator=gen) / d ** 0.5).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    def kb(field):
        return int(re.search(field + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS restarts from here
        base, peak = kb("VmRSS"), lambda: kb("VmHWM")
    except OSError:  # no clear_refs: peak since process start, minus what is resident now
        base, peak = kb("VmRSS"), lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    linear_logprobs(h, w, t, backend=backend).sum().backward()
    print(json.dumps({"peak_mb": (peak() - base) / 1024, "grad_finite": bool(torch.isfinite(w.grad).all())}))
""")


def _peak_mb(backend, n, d, v):
    # Fixed mmap threshold: glibc then returns every large freed block, so RSS tracks live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, backend, str(n), str(d), str(v)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["grad_finite"]
    return result["peak_mb"]


@pytest.mark.slow
def test_torch_backend_never_allocates_n_by_v():
    n, d, v = 8192, 32, 32768
    nv_mb = n * v * 4 / 2**20  # one [N, V] fp32 tensor: 1 GiB
    ref = _peak_mb("reference", n, d, v)
    ours = _peak_mb("torch", n, d, v)
    # The measurement must see the reference's logits, or it proves nothing.
    assert ref > 2 * nv_mb, f"reference peak {ref:.0f} MB, expected > 2 x {nv_mb:.0f} MB"
    # Ours: one logits block (<= 32 MB), grad weight (4 MB), [N, D] copies (1 MB each).
    assert ours < 0.1 * nv_mb, f"torch backend peak {ours:.0f} MB vs one N x V tensor {nv_mb:.0f} MB"


@pytest.fixture
def cuda_config(monkeypatch):
    """The Triton kernels take the launch configuration of a GPU (tiles, warps, splits) while still
    running through the interpreter on CPU tensors."""
    from lightrl.kernels import backend
    monkeypatch.setattr(backend, "triton_target", lambda device: "cuda")
    return _triton_module()


CUDA_CASES = {
    # name: (n, d, v, dtype, temperature, hidden scale, ignored rows); V = 1000 gives 8 vocabulary
    # tiles of 128 in 16 bits, split 4 ways with 2 tiles each; N = 150 is 2 + 1 token blocks.
    "bf16": (150, 72, 1000, torch.bfloat16, 1.3, 1.0, (3, 149)),
    "fp16": (37, 64, 1000, torch.float16, 1.0, 1.0, ()),
    "fp32": (37, 40, 300, torch.float32, 0.7, 1.0, (0,)),
    "fp32-large-logits": (16, 16, 200, torch.float32, 0.5, 300.0, ()),
}


@pytest.mark.interpret
@pytest.mark.parametrize("entropy", [True, False], ids=["entropy", "logp-only"])
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_cuda_configuration_parity(cuda_config, case, entropy):
    n, d, v, dtype, temperature, scale, ignore = CUDA_CASES[case]
    args = _inputs(n, d, v, dtype, scale=scale, ignore=ignore)
    bits = 16 if dtype != torch.float32 else 32
    assert cuda_config._config(args[0], "forward") is cuda_config.CONFIGS["cuda", bits]["forward"]
    _assert_matches_reference("triton", args, dtype, temperature, entropy)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_cuda_configuration_backward_in_chunks(cuda_config, dtype, monkeypatch):
    """The GPU backward's token chunks (d weight summed over chunks in fp32) with its block sizes."""
    block_n = cuda_config.CONFIGS["cuda", 16 if dtype != torch.float32 else 32]["dlogits"]["BLOCK_N"]
    hidden, weight, targets, g_logp, g_ent = _inputs(2 * block_n + 5, 64, 300, dtype, ignore=(1,))
    monkeypatch.setattr(cuda_config, "_CHUNK_ELEMENTS", block_n * 300)  # chunks of BLOCK_N rows: 3 chunks
    calls = []
    real = cuda_config._dlogits_kernel

    class Counting:
        def __getitem__(self, grid):
            calls.append(grid)
            return real[grid]
    monkeypatch.setattr(cuda_config, "_dlogits_kernel", Counting())
    ref = _run("reference", hidden, weight, targets, g_logp, g_ent, 1.0, True)
    got = _run("triton", hidden, weight, targets, g_logp, g_ent, 1.0, True)
    assert [g[0] for g in calls] == [1, 1, 1]
    _, grad_tol = TOL[dtype]
    _close(got[2], ref[2], grad_tol, "grad hidden")
    _close(got[3], ref[3], grad_tol, "grad weight")


@pytest.mark.parametrize("module", ["torch", pytest.param("triton", marks=pytest.mark.interpret)])
def test_frozen_weight_skips_the_weight_gradient(module, monkeypatch):
    """A frozen lm_head (weight.requires_grad False): the backward is asked for no d weight, computes
    none (no d-weight GEMM), and d hidden is the same as with a trainable head."""
    impl = logprobs_torch if module == "torch" else _triton_module()
    hidden, weight, targets, g_logp, g_ent = _inputs(29, 24, 150, torch.float32, ignore=(3,))
    lse = impl.logprobs_forward(hidden, weight, targets, 1.0, True)[2]
    _, ent, _ = impl.logprobs_forward(hidden, weight, targets, 1.0, True)
    gh_frozen, gw_frozen = impl.logprobs_backward(hidden, weight, targets, 1.0, lse, ent, g_logp, g_ent,
                                                  want_grad_weight=False)
    gh, gw = impl.logprobs_backward(hidden, weight, targets, 1.0, lse, ent, g_logp, g_ent)
    assert gw_frozen is None and gw.shape == weight.shape
    assert torch.equal(gh_frozen, gh)

    asked = []
    real = impl.logprobs_backward

    def spy(*args, want_grad_weight=True):
        asked.append(want_grad_weight)
        return real(*args, want_grad_weight=want_grad_weight)
    monkeypatch.setattr(impl, "logprobs_backward", spy)
    h = hidden.clone().requires_grad_()
    logp, entropy = linear_logprobs(h, weight, targets, return_entropy=True, backend=module)
    (logp * g_logp + entropy * g_ent).sum().backward()
    assert asked == [False] and weight.grad is None
    _close(h.grad, gh, 1e-6, "grad hidden with a frozen head")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_cuda_triton_matches_reference(dtype):
    """GPU tier: the compiled kernels at a ragged GPT-2-size vocabulary (50257) and N not a tile multiple."""
    args = [a.cuda() for a in _inputs(1031, 512, 50257, dtype, ignore=(0, 1030))]
    ref = _run("reference", *args, 0.9, True)
    got = _run("triton", *args, 0.9, True)
    fwd_tol, grad_tol = TOL[dtype]
    for i, what in enumerate(("logp", "entropy", "grad hidden", "grad weight")):
        _close(got[i], ref[i], fwd_tol if i < 2 else grad_tol, what)
