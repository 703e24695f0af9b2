"""Triton kernels for linear log-probs: logits tiles are built in registers, never stored as [N, V].

Forward: each program takes BLOCK_N tokens and a contiguous range of vocabulary
tiles, builds each [BLOCK_N, BLOCK_V] logits tile with tl.dot over D tiles, and
keeps an online log-sum-exp, the target logit and the entropy sums. Vocabulary
ranges ("splits") let small N still fill the GPU; their partial sums are merged
in PyTorch (O(splits * N) work).

Backward: a kernel recomputes logits tiles for a chunk of tokens and writes
dL/dz for that chunk ([chunk, V], in the weight's dtype); two BLAS GEMMs then
give d hidden and d weight. Why not accumulate d hidden / d weight in the kernel:
an in-register [BLOCK_N, D] accumulator does not fit for D in the thousands, a
separate d-weight kernel would recompute the logits a second time (five GEMMs
instead of four), and atomics on d hidden / d weight cost one atomic per
BLOCK_V (resp. BLOCK_N) multiply-adds and make the result nondeterministic.
The chunk buffer costs one write and one read of [chunk, V] per chunk, a few
percent of the GEMM time at LLM vocabulary sizes, and the chunk size bounds it.

Notation as in logprobs_torch.py: z = hidden @ W.T / T, p = softmax(z).
"""
import os

import torch
import triton
import triton.language as tl

from lightrl.kernels import backend
from lightrl.kernels.logprobs_torch import IGNORE_INDEX

# A jit function may read a module global only when it is a constexpr (compiled Triton
# refuses plain Python values; the interpreter accepts them, so only a real compile sees it).
_IGNORE = tl.constexpr(IGNORE_INDEX)

# Triton reads TRITON_INTERPRET when the kernels below are defined, i.e. at import.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# Elements of one [chunk, V] dL/dz buffer in the backward (2^28 = 512 MiB in bf16).
_CHUNK_ELEMENTS = 1 << 28

# Tiles and launch options per (triton_target, bits of the inputs), per kernel. Chosen on
# paper from the compile tier's ptxas figures (bench/results/compile-*.json, summarised in
# the README): every 16-bit specialization compiles without spills for sm_80 and sm_90.
# 16-bit forward: 64 x 128 tiles, K steps of 64, 8 warps: ~160-180 registers (one block of
# 8 warps per SM; 128 x 128 reaches 255 and spills on sm_80 with entropy). The d-logits
# kernel holds one tile and no running sums, so it takes 128 x 128 (128-176 registers).
# fp32 multiplies exact fp32 products on the FMA units (not tensor cores): small tiles over
# 8 warps (58-120 registers; 4 warps capped at 128 spilled on sm_90).
# Interpreter: few, large tiles run fastest; tl.dot there needs dims >= 16.
_INTERPRETER_TILES = dict(BLOCK_N=16, BLOCK_V=64, BLOCK_D=32)
CONFIGS = {
    ("cuda", 16): {"forward": dict(BLOCK_N=64, BLOCK_V=128, BLOCK_D=64, num_warps=8, num_stages=3),
                   "dlogits": dict(BLOCK_N=128, BLOCK_V=128, BLOCK_D=64, num_warps=8, num_stages=3)},
    ("cuda", 32): {"forward": dict(BLOCK_N=32, BLOCK_V=64, BLOCK_D=32, num_warps=8, num_stages=2),
                   "dlogits": dict(BLOCK_N=32, BLOCK_V=64, BLOCK_D=32, num_warps=8, num_stages=2)},
    ("interpret", 16): {"forward": _INTERPRETER_TILES, "dlogits": _INTERPRETER_TILES},
    ("interpret", 32): {"forward": _INTERPRETER_TILES, "dlogits": _INTERPRETER_TILES},
}


def _config(t: torch.Tensor, kernel: str) -> dict:
    """Launch configuration of `kernel` ("forward" or "dlogits") for inputs like t."""
    return CONFIGS[backend.triton_target(t.device), t.element_size() * 8][kernel]


def _tiles(cfg):
    return {k: v for k, v in cfg.items() if k.startswith("BLOCK_")}


def _launch_opts(cfg):
    return {k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")}


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, stride_h, stride_w, inv_t,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr):
    """[BLOCK_N, BLOCK_V] fp32 tile of hidden @ W.T / T."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_mask = dd < D
        # int64 offsets: V * D passes 2^31 for large vocabularies
        h = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + dd[None, :],
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_w + dd[None, :],
                    mask=col_mask[:, None] & d_mask[None, :], other=0.0)
        if DOT_FP32:
            acc = tl.dot(h.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, tl.trans(w), acc)
    return acc * inv_t


@triton.jit
def _forward_kernel(h_ptr, w_ptr, t_ptr, m_ptr, s_ptr, a_ptr, zt_ptr,
                    N, D, V, stride_h, stride_w, inv_t, tiles_per_split,
                    WANT_ENTROPY: tl.constexpr, DOT_FP32: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per (token block, vocab split): running max m, s = sum e^(z-m), a = sum e^(z-m) (z-m), target logit."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    tgt = tl.load(t_ptr + rows, mask=row_mask, other=_IGNORE)
    # Finite start so that (m - m_new) * s stays 0 instead of -inf * 0; every
    # split's first tile holds a real column, so m is a real logit afterwards.
    m = tl.full([BLOCK_N], -1e30, dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    a = tl.zeros([BLOCK_N], dtype=tl.float32)
    zt = tl.zeros([BLOCK_N], dtype=tl.float32)
    v0 = pid_s * tiles_per_split * BLOCK_V
    for i in range(0, tiles_per_split):
        cols = v0 + i * BLOCK_V + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        z = _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, stride_h, stride_w, inv_t,
                         BLOCK_N, BLOCK_V, BLOCK_D, DOT_FP32)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        u = tl.where(col_mask[None, :], z - m_new[:, None], 0.0)
        e = tl.where(col_mask[None, :], tl.exp(u), 0.0)
        if WANT_ENTROPY:
            # a is kept relative to the running max, so H = log s - a / s never
            # subtracts two large numbers when logits are large.
            a = alpha * (a + (m - m_new) * s) + tl.sum(e * u, axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        m = m_new
    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=row_mask)
    tl.store(s_ptr + out, s, mask=row_mask)
    tl.store(zt_ptr + out, zt, mask=row_mask)
    if WANT_ENTROPY:
        tl.store(a_ptr + out, a, mask=row_mask)


@triton.jit
def _dlogits_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, ent_ptr, gl_ptr, ge_ptr, dz_ptr,
                    N, D, V, stride_h, stride_w, stride_dz, inv_t,
                    HAS_GRAD_ENTROPY: tl.constexpr, DOT_FP32: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """dz[i, j] = (g_i (onehot_ij - p_ij) - e_i p_ij (log p_ij + H_i)) / T for one tile."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < N
    col_mask = cols < V
    z = _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, stride_h, stride_w, inv_t,
                     BLOCK_N, BLOCK_V, BLOCK_D, DOT_FP32)
    tgt = tl.load(t_ptr + rows, mask=row_mask, other=_IGNORE)
    ignored = tgt == _IGNORE
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.where(ignored, 0.0, tl.load(gl_ptr + rows, mask=row_mask, other=0.0))
    logp = z - lse[:, None]
    p = tl.exp(logp)
    coef = g[:, None] + tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    if HAS_GRAD_ENTROPY:
        e = tl.where(ignored, 0.0, tl.load(ge_ptr + rows, mask=row_mask, other=0.0))
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)
        coef += e[:, None] * (logp + ent[:, None])
    dz = tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0) - p * coef
    dz = dz * inv_t
    tl.store(dz_ptr + rows[:, None].to(tl.int64) * stride_dz + cols[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])


def _dot_fp32(dtype: torch.dtype) -> bool:
    """Whether tiles are multiplied as fp32 with true fp32 products (tl.dot's default, tf32,
    would cost ~1e-3 relative in fp32 logits). 16-bit tiles use the tensor cores as they
    are, except in Triton 3.9's interpreter, which multiplies bf16 tiles as their raw
    uint16 bits (np.matmul in its create_dot): a property of the interpreter, not of the
    launch configuration, so the GPU configuration run through it keeps the workaround."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _INTERPRETED)


def _programs_wanted(device: torch.device) -> int:
    """Programs that fill the device: two per SM on a GPU; in the interpreter a few, enough to
    exercise the split merge in tests."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def logprobs_forward(hidden, weight, targets, temperature: float, want_entropy: bool):
    """Fused forward. hidden [N, D], weight [V, D] (same dtype, contiguous rows), targets [N] int64.

    Returns (logp [N] f32, entropy [N] f32 or None, lse [N] f32) with
    z = hidden @ W.T / T, lse = logsumexp(z), logp = z_target - lse,
    H = lse - sum_j p_j z_j. Rows with target -100 get logp 0 and entropy 0.
    """
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    n, d = hidden.shape
    v = weight.shape[0]
    cfg = _config(hidden, "forward")
    if n == 0:
        logp, entropy, lse = (torch.zeros(0, dtype=torch.float32, device=hidden.device) for _ in range(3))
        return logp, (entropy if want_entropy else None), lse
    n_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    n_vtiles = triton.cdiv(v, cfg["BLOCK_V"])
    want_splits = max(1, triton.cdiv(_programs_wanted(hidden.device), n_blocks))
    tiles_per_split = triton.cdiv(n_vtiles, min(n_vtiles, want_splits))
    splits = triton.cdiv(n_vtiles, tiles_per_split)
    m, s, a, zt = (torch.empty(splits, n, dtype=torch.float32, device=hidden.device) for _ in range(4))
    _forward_kernel[(n_blocks, splits)](
        hidden, weight, targets, m, s, a, zt, n, d, v, hidden.stride(0), weight.stride(0),
        1.0 / temperature, tiles_per_split, WANT_ENTROPY=want_entropy, DOT_FP32=_dot_fp32(hidden.dtype),
        **_tiles(cfg), **_launch_opts(cfg))
    m_max = m.amax(dim=0)
    scale = torch.exp(m - m_max)
    s_sum = (s * scale).sum(dim=0)
    lse = m_max + s_sum.log()
    valid = targets != IGNORE_INDEX
    logp = torch.where(valid, zt.sum(dim=0) - lse, 0.0)
    entropy = None
    if want_entropy:
        # Merge splits relative to the common max: a_i + (m_i - M) s_i, scaled.
        a_sum = (scale * (a + (m - m_max) * s)).sum(dim=0)
        entropy = torch.where(valid, s_sum.log() - a_sum / s_sum, 0.0)
    return logp, entropy, lse


def logprobs_backward(hidden, weight, targets, temperature: float, lse, entropy, grad_logp, grad_entropy,
                      want_grad_weight: bool = True):
    """Backward from recomputed logits tiles, chunked over tokens.

    With p = softmax(z), z = hidden @ W.T / T, g = grad_logp, e = grad_entropy:
        d logp / d z_j = onehot(target)_j - p_j
        d H / d z_j    = -p_j (z_j - sum_k p_k z_k) = -p_j (log p_j + H)
        grad_hidden = (dL/dz) @ W / T,   grad_weight = (dL/dz).T @ hidden / T.
    Rows with target -100 contribute nothing. lse and entropy [N] f32 come from
    logprobs_forward (entropy only needed when grad_entropy is given).
    Returns (grad_hidden [N, D] hidden.dtype, grad_weight [V, D] weight.dtype, or None
    without want_grad_weight: a frozen lm_head skips the d-weight GEMM).
    """
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    lse = lse.contiguous()
    n, d = hidden.shape
    v = weight.shape[0]
    cfg = _config(hidden, "dlogits")
    grad_logp = grad_logp.float().contiguous()
    has_ge = grad_entropy is not None
    if has_ge:
        grad_entropy, entropy = grad_entropy.float().contiguous(), entropy.contiguous()
    if n == 0:
        return torch.zeros_like(hidden), (torch.zeros_like(weight) if want_grad_weight else None)
    block_n = cfg["BLOCK_N"]
    rows = max(block_n, min(n, _CHUNK_ELEMENTS // v // block_n * block_n))
    dz = torch.empty(min(rows, n), v, dtype=weight.dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden)
    single = rows >= n
    # Several chunks: sum their d-weight parts in fp32, whatever the weight dtype.
    grad_weight = None if single or not want_grad_weight else torch.zeros(v, d, dtype=torch.float32,
                                                                            device=weight.device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        dz_c = dz[: e - s]
        grid = (triton.cdiv(e - s, block_n), triton.cdiv(v, cfg["BLOCK_V"]))
        _dlogits_kernel[grid](
            hidden[s:e], weight, targets[s:e], lse[s:e], entropy[s:e] if has_ge else lse, grad_logp[s:e],
            grad_entropy[s:e] if has_ge else grad_logp, dz_c, e - s, d, v, hidden.stride(0), weight.stride(0),
            dz_c.stride(0), 1.0 / temperature, HAS_GRAD_ENTROPY=has_ge, DOT_FP32=_dot_fp32(hidden.dtype),
            **_tiles(cfg), **_launch_opts(cfg))
        torch.mm(dz_c, weight, out=grad_hidden[s:e])
        if not want_grad_weight:
            continue
        if single:
            grad_weight = torch.mm(dz_c.t(), hidden[s:e])
        elif weight.dtype == torch.float32:
            grad_weight.addmm_(dz_c.t(), hidden[s:e])
        else:  # a 16-bit GEMM per chunk (fp32 accumulation inside), summed across chunks in fp32
            grad_weight += torch.mm(dz_c.t(), hidden[s:e])
    return grad_hidden, (grad_weight.to(weight.dtype) if want_grad_weight else None)
