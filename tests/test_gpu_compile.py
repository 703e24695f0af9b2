"""GPU compile tier, on CPU: every Triton launch of the public ops compiles for sm_90 and sm_80.

`python -m bench compile` records the launches while the ops run with the GPU launch
configuration (nothing executes), compiles each distinct specialization with Triton's own
compiler and ptxas, and writes registers / spills / shared memory to JSON. It runs in a
subprocess: this test session has TRITON_INTERPRET=1 (conftest), under which the kernels
are interpreted functions that cannot be compiled, and a fresh TRITON_CACHE_DIR keeps an
earlier build from answering.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = {"logprobs_triton._forward_kernel", "logprobs_triton._dlogits_kernel",
           "policy_loss_triton._seq_stats_kernel", "policy_loss_triton._token_kernel",
           "advantage_triton._group_kernel", "gae_triton._gae_kernel"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    out = tmp / "compile.json"
    run = subprocess.run([sys.executable, "-m", "bench", "compile", "--out", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_kernel_and_arch_is_covered(compiled):
    assert compiled["archs"] == ["sm_90", "sm_80"]
    results = compiled["results"]
    assert {r["kernel"] for r in results} == KERNELS
    assert len(results) == 2 * compiled["launches"]
    forward = [r for r in results if r["kernel"] == "logprobs_triton._forward_kernel"]
    # fp32 / bf16 / fp16 inputs, entropy on and off, both archs
    assert {(tuple(r["dtypes"]), r["constexprs"]["WANT_ENTROPY"], r["arch"]) for r in forward} == {
        (d, e, a) for d in (("fp32",), ("bf16", "fp32"), ("fp16", "fp32")) for e in (False, True)
        for a in ("sm_90", "sm_80")}
    token = {json.dumps(r["constexprs"], sort_keys=True) for r in results
             if r["kernel"] == "policy_loss_triton._token_kernel"}
    codes = [json.loads(t) for t in token]
    assert {c["RATIO"] for c in codes} == {0, 1, 2} and {c["AGG"] for c in codes} == {0, 1, 2, 3}
    assert {c["KL_CODE"] for c in codes} == {1, 2, 3} and any(c["DUAL"] for c in codes)
    assert any(c["CISPO"] for c in codes) and any(c["ENT_GRAD"] for c in codes)


def test_every_launch_compiles_within_shared_memory(compiled):
    errors = [f"{r['kernel']} {r['arch']} {r['constexprs']}: {r['error']}" for r in compiled["results"] if "error" in r]
    assert not errors, "\n".join(errors)
    for r in compiled["results"]:
        assert 0 < r["registers"] <= 255, r
        assert r["shared_bytes"] <= r["shared_limit"], f"{r['kernel']} {r['arch']}: {r['shared_bytes']} bytes"
        assert r["blocks_per_sm_by_registers"] >= 1, r


def test_no_register_spills_in_16_bit(compiled):
    spilled = [f"{r['kernel']} {r['arch']} {r['dtypes']} {r['constexprs']}: {r['spill_stores']} B stores, "
               f"{r['spill_loads']} B loads" for r in compiled["results"]
               if {"bf16", "fp16"} & set(r["dtypes"]) and (r["spill_stores"] or r["spill_loads"])]
    assert not spilled, "\n".join(spilled)
    assert sum(1 for r in compiled["results"] if {"bf16", "fp16"} & set(r["dtypes"])) == 16


def test_readme_table_is_the_committed_results():
    """The README's kernels table is generated from the committed compile results, and must not drift."""
    files = sorted((ROOT / "bench" / "results").glob("compile-triton-*.json"))
    assert len(files) >= 2, "bench/results needs the compile results of both CI Triton versions"
    run = subprocess.run([sys.executable, "-m", "bench", "compile", "--table", *map(str, files)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    block = re.search(r"<!-- compile:begin -->\n(.*?)\n<!-- compile:end -->", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md lost its <!-- compile:begin --> / <!-- compile:end --> markers"
    assert block.group(1).strip() == run.stdout.strip(), (
        "README.md's compile table is stale: replace the lines between the markers with the output of "
        "`python -m bench compile --table bench/results/compile-triton-*.json`")
