"""Compile every GPU launch of lightrl's Triton kernels for sm_90 and sm_80, on any machine.

Triton ships its compiler and ptxas in the wheel, so a CPU-only machine can build the real
cubins. The launches are not listed by hand: the public ops (linear_logprobs,
fused_policy_loss, policy_loss, group_advantages) run on small CPU tensors with backend
"triton" and the GPU launch configuration (backend.triton_target patched to "cuda"), every
row of lightrl.algos.ALGOS with and without KL / entropy / old log-probs, fp32 / bf16 / fp16,
entropy on and off, a frozen and a trainable lm_head. Each kernel launch is intercepted
(nothing executes), turned into the signature, constexprs, divisibility attributes and
options Triton's JIT would derive from the same arguments, and deduplicated. Each distinct
specialization is then compiled with triton.compile(ASTSource(...), target=GPUTarget(...))
and its PTX given to `ptxas -v` for registers and spills; shared memory comes from the
compiled kernel's metadata.

Run without TRITON_INTERPRET (the kernels must be real JIT functions); TRITON_CACHE_DIR
should be fresh, or an earlier build answers. tests/test_gpu_compile.py runs this and checks
the JSON: every launch compiles, shared memory is within the architecture's limit, no
16-bit specialization spills.
"""
import argparse
import inspect
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench import common

# name: (compute capability, max shared memory per block in bytes: 227 KiB on Hopper, 163 KiB on A100)
ARCHS = {"sm_90": (90, 232448), "sm_80": (80, 166912)}
_PTXAS_LINE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_GROUP_SIZES = (8, 64)  # group_advantages' BLOCK is the group size rounded up: 16 and 64
_FLOAT_POINTERS = ("*fp32", "*bf16", "*fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/compile-<triton>-<date>.json)")
    parser.add_argument("--table", nargs="+", metavar="JSON", default=None,
                        help="compile nothing: print the README's markdown table of these result files")


def _tiles_text(r) -> str:
    ce, opt = r["constexprs"], r["options"]
    if "BLOCK_N" in ce:
        return f"{ce['BLOCK_N']}x{ce['BLOCK_V']}x{ce['BLOCK_D']}, {opt['num_warps']}/{opt['num_stages']}"
    return f"BLOCK={ce['BLOCK']}, {opt.get('num_warps', 4)}/-"


def markdown_table(paths) -> str:
    """README table of compile results (one JSON per Triton version): registers / spill-store bytes /
    shared memory per kernel, input dtype and entropy flag, for each arch and version."""
    data = sorted((json.loads(Path(p).read_text()) for p in paths),
                  key=lambda d: [int(x) for x in d["triton"].split(".")])
    groups = {}
    for d in data:
        for r in d["results"]:
            kernel, ce = r["kernel"].split(".")[1], r["constexprs"]
            if "BLOCK_N" in ce:
                dtype = next((t for t in r["dtypes"] if t != "fp32"), "fp32")
                flag = "on" if ce.get("WANT_ENTROPY", ce.get("HAS_GRAD_ENTROPY")) else "off"
            else:  # the policy-loss and advantage kernels read fp32 vectors; entropy is one flag of many
                dtype, flag = "fp32", "any"
            groups.setdefault((kernel, dtype, flag), {}).setdefault((d["triton"], r["arch"]), []).append(r)
    cols = [(d["triton"], a) for d in data for a in d["archs"]]
    lines = ["| kernel | inputs | entropy | specializations | tiles, warps/stages | " +
             " | ".join(f"{a} triton {v}" for v, a in cols) + " |", "|---" * (5 + len(cols)) + "|"]
    for (kernel, dtype, flag), by in groups.items():
        cells = []
        for col in cols:
            rs = by.get(col, [])
            regs = sorted({r["registers"] for r in rs})
            reg = "-" if not regs else str(regs[0]) if len(regs) == 1 else f"{regs[0]}-{regs[-1]}"
            smem = max((r["shared_bytes"] for r in rs), default=0)
            cells.append(f"{reg} / {max((r['spill_stores'] for r in rs), default=0)} / "
                         + (f"{smem // 1024} KiB" if smem >= 1024 else f"{smem} B"))
        first = by[cols[0]]
        tiles = ", ".join(sorted({_tiles_text(r) for r in first}))
        lines.append(f"| `{kernel}` | {dtype} | {flag} | {len(first)} | {tiles} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kernels():
    """Every module-level Triton kernel of lightrl.kernels, by module-qualified name."""
    import triton
    from lightrl.kernels import advantage_triton, gae_triton, logprobs_triton, policy_loss_triton
    found = {}
    for module in (logprobs_triton, policy_loss_triton, advantage_triton, gae_triton):
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel"):
                found[f"{module.__name__.rsplit('.', 1)[1]}.{name}"] = obj
    return found


def _specialize(kernel, args, kwargs):
    """(signature, constexprs, attrs, options) as Triton's JIT derives them for a CUDA launch."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    backend = make_backend(GPUTarget("cuda", 90, 32))
    names = [p.name for p in kernel.params]
    options = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
    bound = inspect.signature(kernel.fn).bind(*args, **kwargs).arguments
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        value = bound[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        kind, attr = native_specialize_impl(type(backend), value, False, True, True)
        if kind == "constexpr":  # an int that happens to be 1 here: a size, not a constant on a GPU
            kind, attr = "i32", None
        signature[p.name] = kind
        if attr:
            attrs[i] = attr
    return signature, constexprs, attrs, options


def record_launches() -> list:
    """The distinct GPU launches of the public ops: dicts of kernel, signature, constexprs, attrs, options."""
    from lightrl.algos import ALGOS
    from lightrl.kernels import backend, fused_policy_loss, gae, group_advantages, linear_logprobs, policy_loss

    kernels = _kernels()
    seen = {}

    def recorder(name, kernel):
        def run(*args, grid, warmup, **kwargs):
            sig, ce, attrs, opts = _specialize(kernel, args, dict(kwargs))
            key = json.dumps([name, sig, ce, sorted(attrs), opts], sort_keys=True, default=str)
            seen.setdefault(key, dict(kernel=name, signature=sig, constexprs=ce, attrs=attrs, options=opts))
        return run

    saved_target = backend.triton_target
    originals = {name: k.__dict__.get("run") for name, k in kernels.items()}
    backend.triton_target = lambda device: "cuda"
    for name, k in kernels.items():
        k.run = recorder(name, k)
    try:
        _drive_ops(ALGOS, linear_logprobs, fused_policy_loss, policy_loss, group_advantages, gae)
    finally:
        backend.triton_target = saved_target
        for name, k in kernels.items():
            if originals[name] is None:
                del k.run
            else:
                k.run = originals[name]
    missing = set(kernels) - {v["kernel"] for v in seen.values()}
    if missing:
        raise RuntimeError(f"kernels never launched by the recorded ops: {sorted(missing)}; "
                           "add the op call that launches them to _drive_ops")
    return list(seen.values())


def _variants(row):
    """The row as it is, with KL in the loss and an entropy bonus, and with the dual clip
    (a --set option that changes a constexpr) for PPO-style rows."""
    extra = row.with_overrides(kl_coef=0.05, entropy_coef=0.01)
    return [row, extra] + ([extra.with_overrides(dual_clip=3.0)] if row.clip_mode == "ppo" else [])


def _kl_sweep(algos):
    """Every KL estimator (a --set option), on one row: the estimator's code is independent of the rest."""
    extra = algos["grpo"].with_overrides(kl_coef=0.05)
    return [extra.with_overrides(kl_estimator=k) for k in ("k1", "k2", "k3", "k1+", "k2+", "k3+")]


def _drive_ops(algos, linear_logprobs, fused_policy_loss, policy_loss, group_advantages, gae):
    """Calls the public ops the way the trainer and the benchmarks do (values are irrelevant:
    launches are recorded, not run). N is ragged, D and V are multiples of 16 like real models."""
    from lightrl.kernels import LossScale
    g = torch.Generator().manual_seed(0)
    n, d, v, lens = 300, 256, 1040, [100, 120, 80]
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    targets = torch.randint(0, v, (n,), generator=g)
    mask = torch.rand(n, generator=g) > 0.1
    logp, old, ref = (-torch.rand(n, generator=g) for _ in range(3))
    ent = torch.rand(n, generator=g)
    adv = torch.randn(len(lens), generator=g)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        hidden = torch.randn(n, d, generator=g).to(dtype)
        weight = torch.randn(v, d, generator=g).to(dtype)
        for entropy in (False, True):
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
            out = linear_logprobs(h, w, targets, return_entropy=entropy, backend="triton")
            (sum(o.sum() for o in out) if entropy else out.sum()).backward()
        for row in algos.values():
            for variant in _variants(row)[:2]:
                for old_logp in (old, None):
                    h = hidden.clone().requires_grad_()
                    loss, _ = fused_policy_loss(h, weight, targets, old_logp, ref, adv, mask, seq, variant,
                                                scale=LossScale(constant=128), backend="triton")
                    loss.backward()
    for row in algos.values():
        for variant in _variants(row) + (_kl_sweep(algos) if row is algos["grpo"] else []):
            for old_logp in (old, None):
                for entropy in (ent, None) if variant.entropy_coef == 0 else (ent,):
                    lp = logp.clone().requires_grad_()
                    e = entropy.clone().requires_grad_() if entropy is not None else None
                    loss, _ = policy_loss(lp, old_logp, ref if variant.kl_coef else None, adv, mask, seq, variant,
                                          entropy=e, scale=LossScale(constant=128), backend="triton")
                    loss.backward()
        for size in _GROUP_SIZES:
            b = 4 * size
            rewards = (torch.rand(b, generator=g) > 0.5).float()
            lengths = torch.randint(1, 100, (b,), generator=g)
            group_advantages(rewards, size, row, lengths=lengths, shaping=torch.rand(b, generator=g),
                             backend="triton")
    # GAE (ppo, reinforce++): gamma and lam are runtime floats, so one launch covers every row.
    gae(torch.rand(n, generator=g), torch.rand(n, generator=g), mask, seq, gamma=1.0, lam=0.95, backend="triton")


def _ptxas():
    """ptxas binaries shipped with Triton, the classic one first (Triton picks ptxas-blackwell for newer PTX)."""
    import triton
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return [str(p) for p in (bin_dir / "ptxas", bin_dir / "ptxas-blackwell") if p.exists()]


def _ptxas_stats(ptx: str, arch: int, name: str) -> dict:
    """Registers and spill bytes of one kernel from `ptxas -v` (whichever shipped ptxas accepts the PTX)."""
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        errors = []
        for exe in _ptxas():
            out = subprocess.run([exe, "-v", f"--gpu-name=sm_{arch}{suffix}", str(path), "-o", str(path) + ".o"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                regs = _PTXAS_LINE.search(out.stderr)
                spills = _SPILLS.search(out.stderr)
                return dict(registers=int(regs.group(1)), spill_stores=int(spills.group(1)),
                            spill_loads=int(spills.group(2)), ptxas=Path(exe).name)
            errors.append(f"{Path(exe).name}: {out.stderr.strip()[-300:]}")
    raise RuntimeError(f"no shipped ptxas accepted the PTX of {name} for sm_{arch}: {errors}")


def compile_launch(launch: dict, arch_name: str) -> dict:
    """Compile one recorded launch for one architecture; returns its stats (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _kernels()[launch["kernel"]]
    cc, smem_limit = ARCHS[arch_name]
    from triton.backends.nvidia.compiler import CUDABackend
    attrs = {(i,): CUDABackend.parse_attr(a) for i, a in launch["attrs"].items()}
    src = ASTSource(kernel, launch["signature"], launch["constexprs"], attrs)
    t0 = time.perf_counter()
    stats = dict(kernel=launch["kernel"], arch=arch_name, constexprs=launch["constexprs"], options=launch["options"],
                 dtypes=sorted({t[1:] for t in launch["signature"].values() if t in _FLOAT_POINTERS}))
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(launch["options"]))
    except Exception as exc:  # reported per launch; the test fails on any
        stats["error"] = f"{type(exc).__name__}: {str(exc).strip()[-800:]}"
        return stats
    stats["compile_s"] = round(time.perf_counter() - t0, 2)
    meta = compiled.metadata
    stats.update(shared_bytes=meta.shared, shared_limit=smem_limit, num_warps=meta.num_warps,
                 num_stages=meta.num_stages)
    stats.update(_ptxas_stats(compiled.asm["ptx"], cc, launch["kernel"]))
    # Blocks per SM the register file allows (64K registers, allocated per warp in units of 256).
    per_warp = -(-stats["registers"] * 32 // 256) * 256
    stats["blocks_per_sm_by_registers"] = 65536 // (per_warp * meta.num_warps)
    return stats


def main(args) -> None:
    if args.table:
        print(markdown_table(args.table))
        return
    import triton
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the kernels must be real JIT functions to be compiled")
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    for a in archs:
        if a not in ARCHS:
            raise SystemExit(f"--arch {a} is not one of {', '.join(ARCHS)}")
    t0 = time.perf_counter()
    launches = record_launches()
    results = [compile_launch(launch, a) for launch in launches for a in archs]
    elapsed = time.perf_counter() - t0
    print(f"{len(launches)} distinct launches x {len(archs)} archs, triton {triton.__version__}, {elapsed:.0f} s")
    print(f"{'kernel':<34} {'arch':<6} {'dtype':<6} {'regs':>5} {'spill':>6} {'smem':>7}  constexprs")
    for r in results:
        dt = ",".join(r["dtypes"])
        if "error" in r:
            print(f"{r['kernel']:<34} {r['arch']:<6} {dt:<6} ERROR {r['error'][:200]}")
            continue
        ce = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        print(f"{r['kernel']:<34} {r['arch']:<6} {dt:<6} {r['registers']:>5} {r['spill_stores']:>6} "
              f"{r['shared_bytes']:>7}  {ce} {r['options']}")
    result = dict(bench="compile", triton=triton.__version__, versions=common.versions(), archs=archs,
                  launches=len(launches), elapsed_s=round(elapsed, 1), results=results)
    tag = "triton-" + triton.__version__
    print(f"wrote {common.write_json(result, 'compile', tag, args.out)}")
