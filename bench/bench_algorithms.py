"""The seed paper's rows on the tiny model's harder task, and its findings judged at CPU scale.

"A Minimalist Approach to LLM Reasoning" (Xiong et al. 2025, arXiv 2504.11343) compares RAFT,
RAFT++, Reinforce and its filtered ablations with GRPO on Qwen2.5-Math-7B. This bench runs the
same rows (plus dapo and dr-grpo for context) on 'arithmetic-hard': two-digit sums whose
warm-start teacher forgets carries (lightrl.tiny). Every row of a seed starts from the same
warm-started model (built once per seed, passed as --model), with the same prompts, sampling
seeds and budgets of steps and samples per step.

Per run it records every curve of metrics.jsonl, held-out avg@k (sampled) at fixed steps and the
final policy's KL to its warm start (measured here afterwards, so rows without a KL term have one
too). It writes bench/results/algorithms-cpu-<date>.json (curves, table, findings) and a figure
(reward and entropy vs step, one line per row, band = min..max over seeds), prints the table
(mean +- std over seeds) and each finding with its measured numbers and a verdict.

An interrupted sweep resumes: a run with a result.json in the work directory is not run again,
and a run without one is started afresh. --quick checks the plumbing at tiny budgets (seconds).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SEED_ROWS = ("raft", "raft++", "reinforce", "reinforce-rej", "reinforce-remove-all-wrong",
             "reinforce-remove-all-correct", "grpo-mean-only", "grpo", "ppo")
CONTEXT_ROWS = ("dapo", "dr-grpo")
# The paper's averages over its math benchmarks, Qwen2.5-Math-7B (Table 1).
PAPER_AVERAGES = {"base": 23.6, "reinforce": 53.9, "raft": 52.3, "raft++": 56.1, "grpo": 56.3, "ppo": 52.5,
                  "reinforce-rej": 56.4}
# The warm start of arithmetic-hard (calibration in the README, "The harder task"): at the demo's
# 500 steps and 5e-3 the tiny model has not yet learnt two-digit sums.
WARM_STEPS, WARM_LR = 2000, 2e-3
# Two optimizer steps per rollout batch, as in the paper's setup: the second is off-policy, which is
# where RAFT++'s importance ratio and clipping differ from RAFT (with one step the ratio is 1 and the
# two rows are the same run). lr 2e-4: at 5e-4 every row plateaus within ~80 steps.
FULL = dict(seeds="0,1,2", steps=200, prompts_per_step=16, group_size=8, lr=2e-4, updates_per_batch=2,
            eval_every=50, eval_k=4,
            eval_limit=128, warm_steps=WARM_STEPS, calibration_prompts=256, jobs=2)
QUICK = dict(seeds="0,1", steps=4, prompts_per_step=4, group_size=4, lr=2e-4, updates_per_batch=2,
             eval_every=2, eval_k=2,
             eval_limit=8, warm_steps=30, calibration_prompts=16, jobs=2)
TEMPERATURE = 1.0  # rollouts, evaluation and the KL sample: the policy's own distribution
MAX_NEW_TOKENS = 8
WINDOW = 10  # steps averaged for a reward / entropy read at a fixed step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny budgets and two rows (plumbing only, as in CI)")
    parser.add_argument("--rows", default=None, help="comma-separated algorithm rows (default: the seed rows "
                        "that exist in lightrl.algos, then dapo, dr-grpo; --quick: raft++,grpo)")
    for key, value in FULL.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                            help=f"default {value} (--quick: {QUICK[key]})")
    parser.add_argument("--work-dir", default=None, help="warm starts and run directories "
                        "(default runs/bench-algorithms, --quick: runs/bench-algorithms-quick)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/algorithms-cpu-<date>.json); "
                        "the figure is written beside it as .png")


def settings(args) -> dict:
    """The budgets of this sweep: --quick or full defaults, overridden by the options given."""
    base = QUICK if args.quick else FULL
    out = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    out["seeds"] = [int(s) for s in str(out["seeds"]).split(",")]
    return out


def default_rows(quick: bool) -> tuple[list[str], list[str]]:
    """(rows to run, seed rows lightrl does not have)."""
    from lightrl.algos import ALGOS
    if quick:
        return ["raft++", "grpo"], []
    missing = [r for r in SEED_ROWS if r not in ALGOS]
    return [r for r in SEED_ROWS + CONTEXT_ROWS if r in ALGOS], missing


# ---- warm start and success rates (bench_amplification uses these too) ------------------------------

def warm_start(work: Path, seed: int, steps: int) -> Path:
    """The tiny model warm-started on arithmetic-hard for `seed`, saved under work/ (built once, then
    reused); the directory to pass as --model."""
    path = work / f"warm_start-seed{seed}"
    if (path / "model.safetensors").exists():
        return path
    import torch

    from lightrl import tiny
    from lightrl.data import load_rows
    torch.set_num_threads(1)
    tmp = work / f".tmp-warm_start-seed{seed}"
    shutil.rmtree(tmp, ignore_errors=True)
    rows = load_rows("arithmetic-hard", seed=seed)[0]
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, seed=seed)
    tiny.warm_start(model, tokenizer, rows, steps=steps, lr=WARM_LR, seed=seed, progress=False)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(path)  # complete or absent: a killed sweep rebuilds it
    return path


def load_policy(path):
    """(tokenizer, model in eval mode) of a saved tiny model or checkpoint directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # not its load report: lm_head.weight is "missing" until tied to the embedding
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def sample_scores(tokenizer, model, rows: list[dict], k: int, temperature: float, seed: int):
    """(completion token lists, 0/1 verifier scores) of k samples per row, prompt-major; temperature 0 = greedy."""
    from lightrl.rollout import HFEngine
    from lightrl.rollout import verifier_scores
    engine = HFEngine(model, tokenizer, batch_size=512, stop_ids=[tokenizer.eos_token_id], progress=False)
    comps = engine.generate([tokenizer(r["question"])["input_ids"] for r in rows], k, temperature=temperature,
                            top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=seed)
    texts = tokenizer.batch_decode(comps, skip_special_tokens=True)
    return comps, verifier_scores(texts, [r for r in rows for _ in range(k)], ("math",))


def success_rates(tokenizer, model, rows: list[dict], k: int, seed: int) -> list[float]:
    """Per row, the fraction of k samples (at TEMPERATURE) the verifier accepts."""
    _, scores = sample_scores(tokenizer, model, rows, k, TEMPERATURE, seed)
    return [sum(scores[i * k:(i + 1) * k]) / k for i in range(len(rows))]


def calibration(path: Path, seed: int, n: int = 256, group: int = 8) -> dict:
    """What the task looks like from a warm start: greedy held-out accuracy, and over `n` training
    prompts with `group` samples each, the shares of mixed / all-correct / all-wrong groups, also by
    the number of carries the sum needs."""
    from lightrl import tiny
    from lightrl.data import load_rows
    tokenizer, model = load_policy(path)
    test = load_rows("arithmetic-hard-test", seed=seed)[0][:n]
    _, greedy = sample_scores(tokenizer, model, test, 1, 0.0, seed)
    train_rows = load_rows("arithmetic-hard", seed=seed)[0][:n]
    p = success_rates(tokenizer, model, train_rows, group, seed + 1)
    out = {"greedy_accuracy": _mean(greedy), "sampled_accuracy": _mean(p), "groups": n, "group_size": group,
           "mixed_frac": _mean([0 < x < 1 for x in p]), "all_correct_frac": _mean([x == 1 for x in p]),
           "all_wrong_frac": _mean([x == 0 for x in p]), "by_carries": {}}
    for c in (0, 1, 2):
        ps = [x for r, x in zip(train_rows, p) if tiny.carries(*map(int, r["question"][:-1].split("+"))) == c]
        out["by_carries"][str(c)] = {"prompts": len(ps), "sampled_accuracy": _mean(ps),
                                     "mixed_frac": _mean([0 < x < 1 for x in ps])}
    return out


def kl_to(policy_dir, ref_dir, rows: list[dict], k: int, seed: int) -> float:
    """Monte-Carlo KL(policy || ref) per completion: mean over k samples per row (at TEMPERATURE) of
    log pi(o) - log ref(o), summed over the completion's tokens (nats per sequence)."""
    import torch
    tokenizer, policy = load_policy(policy_dir)
    _, ref = load_policy(ref_dir)
    comps, _ = sample_scores(tokenizer, policy, rows, k, TEMPERATURE, seed)
    prompts = [tokenizer(r["question"])["input_ids"] for r in rows for _ in range(k)]
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(comps), 512):
            seqs = [p + c for p, c in zip(prompts[start:start + 512], comps[start:start + 512])]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros((len(seqs), width - 1))
            for b, (s, p) in enumerate(zip(seqs, prompts[start:start + 512])):
                ids[b, :len(s)], attn[b, :len(s)] = torch.tensor(s), 1
                mask[b, len(p) - 1:len(s) - 1] = 1  # positions that predict completion tokens
            target = ids[:, 1:].unsqueeze(-1)
            lp = [torch.log_softmax(net(input_ids=ids, attention_mask=attn).logits[:, :-1] / TEMPERATURE, -1)
                  .gather(-1, target).squeeze(-1) for net in (policy, ref)]
            total += ((lp[0] - lp[1]) * mask).sum().item()
    return total / len(comps)


# ---- the sweep --------------------------------------------------------------------------------------

def run_command(algo: str, seed: int, model: Path, work: Path, cfg: dict, extra: tuple = ()) -> list[str]:
    """`python -m lightrl.run` for one row and seed on arithmetic-hard from the warm start `model`."""
    return [sys.executable, "-m", "lightrl.run", "--model", str(model), "--instruction", "",
            "--data", "arithmetic-hard", "--eval-data", "arithmetic-hard-test", "--algo", algo,
            "--seed", str(seed), "--steps", str(cfg["steps"]), "--prompts-per-step", str(cfg["prompts_per_step"]),
            "--group-size", str(cfg["group_size"]), "--temperature", str(TEMPERATURE),
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--lr", str(cfg["lr"]),
            "--updates-per-batch", str(cfg["updates_per_batch"]), "--eval-every", str(cfg["eval_every"]),
            "--eval-k", str(cfg["eval_k"]), "--eval-temperature", str(TEMPERATURE),
            "--eval-limit", str(cfg["eval_limit"]), "--save-every", "0", "--keep-checkpoints", "1",
            "--out-dir", str(work), "--run-name", f"{algo}-seed{seed}", "--no-progress",
            "--log-every", str(cfg["steps"]), "--threads", "1", *extra]


def run_one(algo: str, seed: int, model: Path, work: Path, cfg: dict) -> dict:
    """Runs (or reuses) one row x seed; returns its result (curves, KL, wall time)."""
    from lightrl.data import load_rows
    from lightrl.logs import read_metrics
    run_dir = work / f"{algo}-seed{seed}"
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts afresh
    t0 = time.time()
    proc = subprocess.run(run_command(algo, seed, model, work, cfg), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{algo} seed {seed} failed (exit {proc.returncode}); its stderr ends:\n"
                           f"{proc.stderr[-2000:]}")
    metrics = read_metrics(str(run_dir / "metrics.jsonl"))
    keys = ("reward_mean", "accuracy", "entropy", "kl_mean", "kept_frac", "samples", "completion_len_mean",
            "step_time")
    curves = {k: [m.get(k) for m in metrics] for k in keys}
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    eval_rows = load_rows("arithmetic-hard-test", seed=seed)[0][:cfg["eval_limit"]]
    result = {"algo": algo, "seed": seed, "curves": curves,
              "eval": {str(m["step"]): m["eval_accuracy"] for m in metrics if "eval_accuracy" in m},
              "kl_to_warm_start": kl_to(ckpt, model, eval_rows, 4, seed),
              "samples": sum(curves["samples"]),
              "tokens": round(sum(s * n for s, n in zip(curves["samples"], curves["completion_len_mean"]))),
              "wall_s": wall, "train_s": sum(curves["step_time"])}
    done.write_text(json.dumps(result))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # result.json holds what the bench needs
    return result


def sweep(rows: list[str], cfg: dict, work: Path) -> tuple[dict, dict]:
    """({algo: [result per seed]}, {seed: calibration}); prints a line as each run finishes. A seed's
    warm start is built (or found) by the first of its runs to start; its other runs wait for it."""
    work.mkdir(parents=True, exist_ok=True)
    models, calib, seed_locks = {}, {}, {s: threading.Lock() for s in cfg["seeds"]}

    def model_for(seed: int) -> Path:
        with seed_locks[seed]:
            if seed not in models:
                t0 = time.time()
                path = warm_start(work, seed, cfg["warm_steps"])
                cal_file = work / f"calibration-seed{seed}.json"
                if not cal_file.exists():
                    cal_file.write_text(json.dumps(calibration(path, seed, cfg["calibration_prompts"])))
                calib[seed] = c = json.loads(cal_file.read_text())
                print(f"warm start seed {seed}: greedy held-out accuracy {c['greedy_accuracy']:.3f}, sampled "
                      f"{c['sampled_accuracy']:.3f}, mixed groups {c['mixed_frac']:.2f} ({time.time() - t0:.0f} s)",
                      flush=True)
                models[seed] = path
            return models[seed]

    jobs = [(a, s) for s in cfg["seeds"] for a in rows]
    results, lock, t0, finished = {a: [] for a in rows}, threading.Lock(), time.time(), [0]

    def one(job):
        algo, seed = job
        reused = (work / f"{algo}-seed{seed}" / "result.json").exists()
        res = run_one(algo, seed, model_for(seed), work, cfg)
        with lock:
            finished[0] += 1
            left = len(jobs) - finished[0]
            rate = (time.time() - t0) / finished[0]
            final = res["eval"].get(str(cfg["steps"]))
            print(f"[{finished[0]}/{len(jobs)}] {algo} seed {seed}: " + ("done already; " if reused else "")
                  + f"final avg@{cfg['eval_k']} {final:.3f}, KL {res['kl_to_warm_start']:.3f}, "
                  f"{res['wall_s']:.0f} s; ~{left * rate / 60:.0f} min left", flush=True)
        return job, res

    with concurrent.futures.ThreadPoolExecutor(cfg["jobs"]) as pool:
        for (algo, seed), res in pool.map(one, jobs):
            results[algo].append(res)
    return results, {s: calib[s] for s in cfg["seeds"]}


# ---- the table, the findings, the figure ------------------------------------------------------------

def _finite(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def _mean(xs) -> float:
    """Mean of the finite values (a skipped step logs no entropy); nan when there are none."""
    xs = _finite(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs) -> float:
    xs = _finite(xs)
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def window(curve: list, step: int) -> float:
    """Mean of a per-step curve over the WINDOW steps ending at `step` (1-based)."""
    return _mean(curve[max(step - WINDOW, 0):step])


def stat(runs: list[dict], fn) -> dict:
    vals = [fn(r) for r in runs]
    return {"mean": _mean(vals), "std": _std(vals), "seeds": vals}


def volatility(curve: list) -> float:
    """Std of the reward's step-to-step changes over the second half of a run (noise, not trend)."""
    half = _finite(curve[len(curve) // 2:])
    diffs = [b - a for a, b in zip(half, half[1:])]
    return _std(diffs) if len(diffs) > 1 else 0.0


def summarize(results: dict, cfg: dict) -> dict:
    """Per row, mean/std/per-seed of the table's columns."""
    n, early, mid = cfg["steps"], cfg["eval_every"], cfg["steps"] // 2
    table = {}
    for algo, runs in results.items():
        table[algo] = {
            f"reward@{early}": stat(runs, lambda r: window(r["curves"]["reward_mean"], early)),
            f"reward@{n}": stat(runs, lambda r: window(r["curves"]["reward_mean"], n)),
            f"avg@k@{early}": stat(runs, lambda r: r["eval"].get(str(early), float("nan"))),
            f"avg@k@{n}": stat(runs, lambda r: r["eval"][str(n)]),
            f"entropy@{mid}": stat(runs, lambda r: window(r["curves"]["entropy"], mid)),
            f"entropy@{n}": stat(runs, lambda r: window(r["curves"]["entropy"], n)),
            "kl_to_warm_start": stat(runs, lambda r: r["kl_to_warm_start"]),
            "volatility": stat(runs, lambda r: volatility(r["curves"]["reward_mean"])),
            "samples": stat(runs, lambda r: r["samples"]),
            "tokens": stat(runs, lambda r: r["tokens"]),
            "wall_s": stat(runs, lambda r: r["wall_s"]),
        }
    return table


def table_text(table: dict, cfg: dict) -> str:
    """Markdown table, mean +- std over seeds."""
    cols = list(next(iter(table.values())))
    head = "| row | " + " | ".join(c.replace("avg@k", f"avg@{cfg['eval_k']}") for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for algo, row in table.items():
        cells = []
        for c in cols:
            m, s = row[c]["mean"], row[c]["std"]
            cells.append(f"{m:.0f} ± {s:.0f}" if c in ("samples", "tokens", "wall_s") else f"{m:.3f} ± {s:.3f}")
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cmp(table, a, b, col):
    """(mean over seeds of the paired difference a - b, twice its standard error). Rows of one seed share
    the warm start, so pairing by seed removes the warm starts' spread from the comparison."""
    d = [x - y for x, y in zip(table[a][col]["seeds"], table[b][col]["seeds"])]
    return _mean(d), 2 * _std(d) / math.sqrt(max(len(_finite(d)), 1))


def findings(table: dict, cfg: dict) -> list[dict]:
    """Each of the paper's findings: what was measured here and whether it holds. A difference counts
    when the mean of its per-seed paired differences exceeds twice their standard error (the "+-" in
    the measured text); 'matches' when it is within that."""
    n, early, mid = cfg["steps"], cfg["eval_every"], cfg["steps"] // 2
    final, first, k = f"avg@k@{n}", f"avg@k@{early}", cfg["eval_k"]
    out = []

    def need(*rows):
        return [r for r in rows if r not in table]

    def add(claim, rows, judge):
        missing = need(*rows)
        if missing:
            out.append({"claim": claim, "verdict": "not measured", "measured": f"rows not run: {', '.join(missing)}"})
        else:
            verdict, measured = judge()
            out.append({"claim": claim, "verdict": verdict, "measured": measured})

    def f(d, s):
        return f"{d:+.3f} +- {s:.3f}"

    def raftpp_vs_grpo():
        d0, s0 = _cmp(table, "raft++", "grpo", first)
        d1, s1 = _cmp(table, "raft++", "grpo", final)
        faster, competitive = d0 > s0, d1 >= -s1
        verdict = ("holds" if faster and competitive else "partly holds" if faster or competitive
                   else "does not hold at this scale")
        return verdict, (f"raft++ - grpo held-out avg@{k}: step {early} {f(d0, s0)}, step {n} {f(d1, s1)}; "
                         f"faster early: {'yes' if faster else 'no'}, competitive at the end: "
                         f"{'yes' if competitive else 'no'}")

    def raftpp_entropy():
        de, se = _cmp(table, "raft++", "grpo", f"entropy@{mid}")
        d1, s1 = _cmp(table, "raft++", "grpo", final)
        lower, behind = de < -se, d1 < -s1
        verdict = ("holds" if lower and behind else "partly holds" if lower or behind
                   else "does not hold at this scale")
        return verdict, (f"raft++ - grpo entropy at step {mid}: {f(de, se)}; held-out avg@{k} at step {n}: "
                         f"{f(d1, s1)}; entropy lower: {'yes' if lower else 'no'}, falls behind: "
                         f"{'yes' if behind else 'no'}")

    def remove_all_wrong():
        total, st = _cmp(table, "grpo", "reinforce", final)
        wrong, sw = _cmp(table, "reinforce-remove-all-wrong", "reinforce", final)
        correct, sc = _cmp(table, "reinforce-remove-all-correct", "reinforce", final)
        norm, sn = _cmp(table, "grpo", "grpo-mean-only", final)
        gain = total > st
        from_filter = gain and wrong > sw and wrong >= 0.5 * total and correct < wrong
        verdict = ("holds" if from_filter else "does not hold at this scale" if gain
                   else "not testable here: grpo does not beat reinforce beyond twice the standard error")
        return verdict, (f"held-out avg@{k} at step {n}, gain over reinforce: grpo {f(total, st)}, "
                         f"remove-all-wrong {f(wrong, sw)}, remove-all-correct {f(correct, sc)}; "
                         f"grpo - grpo-mean-only (the std normalisation) {f(norm, sn)}")

    def rej_vs_grpo():
        d1, s1 = _cmp(table, "reinforce-rej", "grpo", final)
        dk, sk = _cmp(table, "reinforce-rej", "grpo", "kl_to_warm_start")
        dv, sv = _cmp(table, "reinforce-rej", "grpo", "volatility")
        matches, lower_kl, stabler = abs(d1) <= max(s1, 0.02) or d1 > 0, dk < -sk, dv < -sv
        per_seed = " / ".join(f"{x:.2f} vs {y:.2f}" for x, y in zip(table["reinforce-rej"]["kl_to_warm_start"]["seeds"],
                                                                   table["grpo"]["kl_to_warm_start"]["seeds"]))
        parts = [matches, lower_kl, stabler]
        verdict = "holds" if all(parts) else "partly holds" if any(parts) else "does not hold at this scale"
        return verdict, (f"reinforce-rej - grpo: held-out avg@{k} at step {n} {f(d1, s1)}, KL to the warm start "
                         f"{f(dk, sk)} nats/completion (per seed {per_seed}), reward volatility {f(dv, sv)}; matches: "
                         f"{'yes' if matches else 'no'}, lower KL: {'yes' if lower_kl else 'no'}, "
                         f"more stable: {'yes' if stabler else 'no'}")

    add("RAFT++ is competitive with GRPO and learns faster early", ("raft++", "grpo"), raftpp_vs_grpo)
    add("RAFT++'s entropy collapses faster than GRPO's, and it then falls behind", ("raft++", "grpo"),
        raftpp_entropy)
    add("GRPO's gain over Reinforce comes from dropping all-wrong prompts, not from the reward normalisation",
        ("grpo", "reinforce", "reinforce-remove-all-wrong", "reinforce-remove-all-correct", "grpo-mean-only"),
        remove_all_wrong)
    add("Reinforce-Rej matches GRPO with a lower KL and is more stable", ("reinforce-rej", "grpo"), rej_vs_grpo)
    return out


def figure(results: dict, path: Path) -> None:
    """Reward and entropy vs step (WINDOW-step moving average), mean over seeds, band = min..max; and the
    reward minus grpo's of the same seed (the paired difference the findings judge), band = min..max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    colors = plt.get_cmap("tab20").colors

    def smooth(run, key):
        return [window(run["curves"][key], s) for s in range(1, len(run["curves"][key]) + 1)]

    base = [smooth(r, "reward_mean") for r in results["grpo"]] if "grpo" in results else None
    for i, (algo, runs) in enumerate(results.items()):
        series = [[smooth(r, "reward_mean") for r in runs], [smooth(r, "entropy") for r in runs]]
        if base is not None:
            series.append([[x - y for x, y in zip(a, b)] for a, b in zip(series[0], base)])
        for ax, curves in zip(axes, series):
            cols = list(zip(*curves))
            steps = range(1, len(cols) + 1)
            style = "--" if algo in CONTEXT_ROWS else "-"
            ax.plot(steps, [_mean(c) for c in cols], style, color=colors[i % 20], label=algo, lw=1.4)
            ax.fill_between(steps, [min(_finite(c), default=math.nan) for c in cols],
                            [max(_finite(c), default=math.nan) for c in cols], color=colors[i % 20], alpha=0.06)
    axes[0].set(xlabel="step", ylabel=f"reward ({WINDOW}-step mean)", title="training reward")
    axes[1].set(xlabel="step", ylabel=f"token entropy ({WINDOW}-step mean)", title="policy entropy")
    axes[2].set(xlabel="step", ylabel="reward - grpo's reward, same seed", title="paired with grpo")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"arithmetic-hard, tiny model: mean over {len(next(iter(results.values())))} seeds, "
                 "band = min..max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args) -> None:
    cfg = settings(args)
    rows, missing = default_rows(args.quick)
    if args.rows:
        from lightrl.algos import ALGOS
        rows = args.rows.split(",")
        unknown = [r for r in rows if r not in ALGOS]
        if unknown:
            raise SystemExit(f"--rows: unknown algorithm row(s) {', '.join(unknown)}; see python -m lightrl.run "
                             "--list-algos")
    work = Path(args.work_dir or ("runs/bench-algorithms-quick" if args.quick else "runs/bench-algorithms"))
    print(f"rows {', '.join(rows)}; seeds {cfg['seeds']}; {cfg['steps']} steps x {cfg['prompts_per_step']} "
          f"prompts x {cfg['group_size']} samples; {cfg['jobs']} at a time; work dir {work}", flush=True)
    for row in missing:
        print(f"{row}: not in lightrl.algos yet, not run", flush=True)
    t0 = time.time()
    results, calib = sweep(rows, cfg, work)
    table = summarize(results, cfg)
    judged = findings(table, cfg)
    print("\n" + table_text(table, cfg) + "\n")
    for item in judged:
        print(f"- {item['claim']}: {item['verdict'].upper()}\n    {item['measured']}")
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    out = Path(args.out) if args.out else RESULTS / f"algorithms-cpu-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(results, out.with_suffix(".png"))
    result = {"bench": "algorithms", "task": "arithmetic-hard", "quick": args.quick, "settings": cfg,
              "warm_start": {"steps": cfg["warm_steps"], "lr": WARM_LR}, "temperature": TEMPERATURE,
              "max_new_tokens": MAX_NEW_TOKENS, "not_run": {r: "not in lightrl.algos yet" for r in missing},
              "paper_averages": PAPER_AVERAGES, "calibration": calib, "table": table, "findings": judged,
              "runs": results, "this_invocation_wall_s": time.time() - t0,
              "runs_wall_s_sum": sum(r["wall_s"] for runs in results.values() for r in runs),
              "cpu_count": os.cpu_count(),
              "load_avg": os.getloadavg()}
    out.write_text(json.dumps(result) + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
