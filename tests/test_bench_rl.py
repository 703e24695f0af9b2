"""`bench algorithms` and `bench amplification`: the recursion's algebra, and both benches end to
end at their --quick budgets (plumbing, not findings), including a resumed sweep."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_amplification import beta_for, fixed_point, h, iterates

ROOT = Path(__file__).resolve().parent.parent


def test_recursion_is_the_kl_regularised_optimum():
    """h(p) against pi ∝ pi_ref exp(A / beta) computed outcome by outcome: five completions, two correct."""
    pi_ref = [0.1, 0.15, 0.3, 0.25, 0.2]
    correct = [1, 1, 0, 0, 0]
    p_ref, eps = 0.25, 1e-8
    for beta, p in [(0.5, 0.25), (1.0, 0.6), (3.0, 0.9)]:
        s = math.sqrt(p * (1 - p) + eps)
        w = [x * math.exp(((1 - p) / s if c else -p / s) / beta) for x, c in zip(pi_ref, correct)]
        assert h(p, p_ref, beta, eps) == pytest.approx(sum(x for x, c in zip(w, correct) if c) / sum(w), rel=1e-12)


def test_fixed_point_amplifies_and_beta_for_inverts_it():
    eps = 1e-8
    assert iterates(0.0, 0.04, eps, 3) == [0.0] * 4  # no success, no signal
    assert fixed_point(0.05, 0.04, eps) > 0.999999  # small beta: near-certain success
    for p_ref in (0.1, 0.4):
        star = fixed_point(p_ref, 2.0, eps)
        assert p_ref < star < 1 and h(star, p_ref, 2.0, eps) == pytest.approx(star, abs=1e-10)
        assert beta_for(p_ref, star, eps) == pytest.approx(2.0, rel=1e-6)
    assert beta_for(0.4, 0.3, eps) is None  # below p_ref: no beta reaches it


def _bench(*args):
    run = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_bench_algorithms_and_amplification_quick(tmp_path):
    work, out = tmp_path / "work", tmp_path / "alg.json"
    args = ("algorithms", "--quick", "--work-dir", str(work), "--out", str(out))
    stdout = _bench(*args)
    assert "warm start seed 1: greedy held-out accuracy" in stdout and "| raft++ |" in stdout
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert result["settings"]["seeds"] == [0, 1] and set(result["runs"]) == {"raft++", "grpo"}
    for runs in result["runs"].values():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["curves"]["reward_mean"]) == 4 and set(r["eval"]) == {"2", "4"}
    grpo = result["runs"]["grpo"][0]
    assert grpo["samples"] == 4 * 4 * 4 and grpo["tokens"] > 0  # steps x prompts x group, no refills
    assert result["table"]["grpo"]["samples"]["mean"] == 64
    claims = {f["claim"]: f for f in result["findings"]}
    assert len(claims) == 4
    filt = claims["GRPO's gain over Reinforce comes from dropping all-wrong prompts, not from the reward "
                  "normalisation"]
    assert filt["verdict"] == "not measured" and "reinforce-remove-all-wrong" in filt["measured"]
    assert claims["RAFT++ is competitive with GRPO and learns faster early"]["verdict"] in (
        "holds", "partly holds", "does not hold at this scale")
    again = _bench(*args)  # every run is reused, not rerun
    assert again.count("done already") == 4 and json.loads(out.read_text())["table"] == result["table"]

    amp = tmp_path / "amp.json"
    stdout = _bench("amplification", "--quick", "--work-dir", str(work), "--out", str(amp))
    assert "where practice departs from the theory" in stdout
    res = json.loads(amp.read_text())
    assert res["steps"] == [0, 2, 4] and res["beta"] == 0.04 and amp.with_suffix(".png").exists()
    assert sum(b["prompts"] for b in res["bins"]) == 8 and len(res["prompts"]) == 8
    for prompt in res["prompts"]:
        assert len(prompt["p"]) == 3 and all(round(p * 32) == p * 32 for p in prompt["p"])
    for b in res["bins"]:
        assert b["theory_fixed_point"] >= b["p_ref_mean"] and len(b["measured"]) == 3
