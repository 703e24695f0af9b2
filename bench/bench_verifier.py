"""Math verifier benchmark: throughput of lightrl.rewards.math.score_batch on MATH-500-style
answers, and agreement with math-verify (dev-only comparison, `pip install math-verify`).

Pair sets, the first four built from the packaged MATH-500 (lightrl/data/math500.jsonl):
  solution    gold vs its own full solution text (last \\boxed{} answer)           -> 1
  rewritten   gold vs the gold retyped (\\frac, no spaces, \\left( \\right), a unit) -> 1
  equivalent  gold vs another correct form (3/2 -> 1.5, 2\\sqrt5 -> \\sqrt{20}, list
              reversed, interval -> inequality, ...; rows without a rule are left out) -> 1
  perturbed   gold vs a wrong answer (first digit changed, bracket flipped, ...)   -> 0
  table       the hand-written (gold, prediction, expected) rows of tests/test_math_cases.py
Predictions other than full solutions are given as "... $\\boxed{x}$." responses.

    python -m bench verifier --workers 2
writes bench/results/verifier-cpu-<date>.json with throughput, and every disagreement with
math-verify together with a hand-checked verdict of who is right (JUDGED below).

The `classes` part (--part classes, also run by the default --part all) needs no data: it
scores the ten classes of issue 15 (tests/test_verifier_classes.py) with lightrl and with
math-verify, called by default (parse(gold), parse(prediction)) and with `$` delimiters
(each side wrapped in $...$ unless it already has a $), and reports accuracy and false
positives per class, and lightrl's throughput on 2,000 short answers.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from importlib.resources import files
from pathlib import Path

from bench import common

DATA = Path(str(files("lightrl") / "data"))

# Hand-checked disagreements with math-verify 0.9.0: (gold, predicted answer) -> (who is right, why).
_INTERVAL_AS_INEQUALITY = ("lightrl", "the inequality describes exactly the gold interval")
_INFTY_BRACKET = ("lightrl (debatable)", "'\\infty]' is malformed notation (infinity cannot be included); "
                  "a grader marks it wrong, though as sets of reals both are the same")
JUDGED: dict[tuple[str, str], tuple[str, str]] = {
    ("(2,\\infty)", "x > 2"): _INTERVAL_AS_INEQUALITY,
    ("(5,\\infty)", "x > 5"): _INTERVAL_AS_INEQUALITY,
    ("[2,\\infty)", "x \\ge 2"): _INTERVAL_AS_INEQUALITY,
    ("(-\\infty, 0]", "x \\leq 0"): _INTERVAL_AS_INEQUALITY,
    ("(2,4)", "2 < x < 4"): _INTERVAL_AS_INEQUALITY,
    ("[2,4)", "2 \\le x < 4"): _INTERVAL_AS_INEQUALITY,
    ("(2,4)", "4 > x > 2"): _INTERVAL_AS_INEQUALITY,
    ("(2,\\infty)", "(2,\\infty]"): _INFTY_BRACKET,
    ("(5,\\infty)", "(5,\\infty]"): _INFTY_BRACKET,
    ("25", "25%"): ("lightrl", "a % prediction against a gold without % is read as a fraction, 0.25 "
                    "(issue 15: 5% for 5 was a wrong yes)"),
    ("3 1/2", "7/2"): ("lightrl", "'3 1/2' is the mixed number 3 1/2 = 7/2"),
    ("1500", "1.5e3"): ("lightrl", "1.5e3 is scientific notation for 1500"),
    ("\\sqrt[3]{-8}", "-2"): ("lightrl", "the real cube root of -8 is -2 (sympy's principal root is complex)"),
    ("8 \\pi", "8pi"): ("lightrl", "plain-text pi"),
    ("e^{i\\pi}", "-1"): ("lightrl", "Euler's identity"),
    ("30^\\circ", "30°"): ("lightrl", "same angle, unicode degree sign"),
    ("\\$36", "36 dollars"): ("lightrl", "same amount, unit written as a word"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2) U (3,\\infty)"): ("lightrl", "'U' typed for \\cup"),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "(-2,-14,-7)"): (
        "lightrl (debatable)", "same vector as a tuple; a strict grader may want the column form"),
    ("3R^2", "3r^2"): ("lightrl (debatable)", "R and r are different symbols; the problem names the radius R"),
    ("18", "first \\boxed{17}, then corrected: \\boxed{18}"): (
        "lightrl", "the final (last) boxed answer is 18; math-verify also reads the earlier \\boxed{17}"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "x < 2 \\text{ or } x > 3"): ("lightrl", "the same set of reals"),
    ("\\text{(C)}", "\\textbf{(C)}\\ 12"): ("lightrl", "AMC style: choice (C) followed by its value"),
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}"): ("lightrl", "different numbers (ratio 2005*2006); "
                                               "math-verify rounds both to 0"),
    ("\\frac{1}{3}", "0.\\overline{3}"): ("lightrl", "0.333... repeating is exactly 1/3"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="sympy worker processes")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per pair in sympy")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per set (cache cleared); best is kept")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N MATH-500 rows")
    parser.add_argument("--no-math-verify", action="store_true", help="skip the math-verify comparison")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/verifier-cpu-<date>.json)")
    parser.add_argument("--part", choices=("all", "data", "classes"), default="all",
                        help="data: the MATH-500 sets; classes: the issue-15 class table (no data needed)")


def rewrite(answer: str) -> str:
    out = re.sub(r"\s+", "", answer.replace("\\dfrac", "\\frac"))
    if "\\left" not in out:
        out = out.replace("(", "\\left(").replace(")", "\\right)")
    if re.fullmatch(r"-?\d+(\.\d+)?|\\frac\{\d+\}\{\d+\}|-?\d+\\sqrt\{?\d+\}?", out):
        out += "\\text{ units}"
    return out


def perturb(answer: str, k: int) -> str:
    """A wrong answer close to `answer` (deterministic, cycles through kinds of mistakes)."""
    if "\\text" in answer and not re.search(r"\d", answer):
        return "\\text{none}"
    m = re.fullmatch(r"\s*(\\left)?\s*([(\[])(.*)([)\]])\s*", answer)
    if m and "," in m.group(3) and k % 2 == 0:  # interval/tuple: flip the closing bracket
        return answer[:m.start(4)] + ("]" if m.group(4) == ")" else ")") + answer[m.end(4):]
    d = re.search(r"\d", answer)
    if d:
        return answer[:d.start()] + str((int(d.group()) + 1 + k % 3) % 10) + answer[d.end():]
    return f"{answer}+1"


def equivalent(answer: str) -> str | None:
    """The same value written in another correct form, or None when no rule applies."""
    a = answer.replace("\\dfrac", "\\frac").strip()
    m = re.fullmatch(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?", a)
    if m:
        num, den = int(m[2]), int(m[3])
        d = den
        for p in (2, 5):
            while d % p == 0:
                d //= p
        return f"{m[1]}{num / den!r}" if d == 1 and len(repr(num / den)) < 12 else f"{m[1]}{num}/{den}"
    m = re.fullmatch(r"(\d+)\s*\\sqrt\{?(\d+)\}?", a)
    if m:
        return f"\\sqrt{{{int(m[1]) ** 2 * int(m[2])}}}"
    m = re.fullmatch(r"\\frac\{\\sqrt\{(\d+)\}\}\{(\d+)\}", a)
    if m and m[1] == m[2]:
        return f"\\frac{{1}}{{\\sqrt{{{m[1]}}}}}"
    m = re.fullmatch(r"(\d+)\^\\circ", a)
    if m:
        return f"{m[1]} degrees"
    m = re.fullmatch(r"(-?\d+)\s*([+-])\s*(\d*)i", a)
    if m:
        return f"{m[2]}{m[3]}i + {m[1]}".lstrip("+")
    m = re.fullmatch(r"(\d+)\s*\\pi", a)
    if m:
        return f"\\pi \\cdot {m[1]}"
    m = re.fullmatch(r"([^,{}]+?)\s*\\pm\s*([^,{}]+)", a)
    if m:
        return f"{m[1]}-{m[2]}, {m[1]}+{m[2]}"
    m = re.fullmatch(r"\(([^,()]+),\s*\\infty\)", a)
    if m:
        return f"x > {m[1]}"
    if re.fullmatch(r"-?\d+(?:,\s*-?\d+)+", a) and not re.fullmatch(r"\d{1,3}(?:,\d{3})+", a):
        return ", ".join(reversed([x.strip() for x in a.split(",")]))
    if re.fullmatch(r"\d{4,}", a):
        return f"{int(a):,}"
    if re.fullmatch(r"-?\d{1,3}", a):
        return f"x = {a}"
    return None


def _table() -> list[tuple[str, str, str, bool]]:
    """The hand-written table of tests/test_math_cases.py (loaded by path: bench is dev tooling)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "test_math_cases.py"
    spec = importlib.util.spec_from_file_location("_math_cases", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [(f"{cat}-{i}", g, p, e) for i, (cat, g, p, e) in enumerate(mod.ROWS)]


def build_pairs(rows: list[dict]) -> tuple[dict[str, list[tuple[str, str, str]]], dict[str, list[float]]]:
    """Pair sets (id, gold, prediction) and the expected score of each pair."""
    sets = {"solution": [], "rewritten": [], "equivalent": [], "perturbed": [], "table": []}
    for k, r in enumerate(rows):
        g = r["answer"]
        sets["solution"].append((r["unique_id"], g, r["solution"]))
        sets["rewritten"].append((r["unique_id"], g, f"Thus the answer is $\\boxed{{{rewrite(g)}}}$."))
        eq = equivalent(g)
        if eq is not None:
            sets["equivalent"].append((r["unique_id"], g, f"Thus the answer is $\\boxed{{{eq}}}$."))
        sets["perturbed"].append((r["unique_id"], g, f"Thus the answer is $\\boxed{{{perturb(g, k)}}}$."))
    expected = {name: [0.0 if name == "perturbed" else 1.0] * len(pairs) for name, pairs in sets.items()}
    table = _table()
    sets["table"] = [(uid, g, f"Thus the answer is $\\boxed{{{p}}}$." if "\\boxed" not in p and "####" not in p
                      and "answer" not in p.lower() else p) for uid, g, p, _ in table]
    expected["table"] = [float(e) for *_, e in table]
    return sets, expected


def math_verify_scores(pairs: list[tuple[str, str, str]]) -> tuple[list[float], float]:
    from math_verify import parse, verify

    out, t0 = [], time.perf_counter()
    for _, gold, pred in pairs:
        try:
            ok = verify(parse(f"${gold}$"), parse(pred))
        except Exception:  # noqa: BLE001 - its failures count as 0, like ours
            ok = False
        out.append(float(ok))
    return out, time.perf_counter() - t0


def main(args: argparse.Namespace) -> dict:
    from lightrl.rewards import math as M

    classes_report = None if args.part == "data" else classes(args)
    if args.part == "classes":
        print(f"wrote {common.write_json(classes_report, 'verifier-classes', 'cpu', args.out)}")
        return classes_report

    path = DATA / "math500.jsonl"
    if not path.exists():
        sys.exit(f"missing {path}: the package's built-in data is incomplete (reinstall lightrl)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][: args.limit]
    sets, expected = build_pairs(rows)

    M.score_batch(["\\sqrt{2}"] * 8, [f"\\frac{{{2 * k}}}{{{k}\\sqrt2}}" for k in range(1, 9)],
                  workers=args.workers)  # start and warm the worker pool outside the timing
    report = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 2), "workers": args.workers,
              "timeout_s": args.timeout, "python": sys.version.split()[0],
              "versions": common.versions(("sympy", "math-verify")), "sets": {}, "disagreements": []}
    all_pairs, all_ours, all_expected = [], [], []
    for name, pairs in sets.items():
        seconds = float("inf")
        for _ in range(args.repeats):  # the machine is shared: keep the least disturbed run
            M.clear_cache()
            M.get_stats(reset=True)
            t0 = time.perf_counter()
            ours = M.score_batch([g for _, g, _ in pairs], [p for _, _, p in pairs], timeout=args.timeout,
                                 workers=args.workers)
            seconds = min(seconds, time.perf_counter() - t0)
            stats = M.get_stats()
        entry = {"pairs": len(pairs), "seconds": round(seconds, 3), "per_second": round(len(pairs) / seconds, 1),
                 "accuracy_vs_expected": sum(a == b for a, b in zip(ours, expected[name])) / len(pairs),
                 "sent_to_sympy": stats["n_sympy"], "timeouts": stats["n_timeouts"], "errors": stats["n_errors"]}
        report["sets"][name] = entry
        all_pairs += [(name, *p) for p in pairs]
        all_ours += ours
        all_expected += expected[name]
        entry["lightrl_errors"] = [
            {"id": uid, "gold": g, "prediction": M.extract_answer(p) or p, "expected": e, "lightrl": o}
            for (uid, g, p), o, e in zip(pairs, ours, expected[name]) if o != e]
    total = sum(e["pairs"] for e in report["sets"].values())
    report["overall_per_second"] = round(total / sum(e["seconds"] for e in report["sets"].values()), 1)

    if not args.no_math_verify:
        try:
            import math_verify  # noqa: F401
        except ImportError:
            sys.exit("math-verify is not installed: pip install math-verify (dev-only), or pass --no-math-verify")
        theirs, mv_seconds = math_verify_scores([p[1:] for p in all_pairs])
        report["math_verify"] = {"version": report["versions"]["math-verify"], "seconds": round(mv_seconds, 1),
                                 "per_second": round(len(all_pairs) / mv_seconds, 1),
                                 "agreement": sum(a == b for a, b in zip(all_ours, theirs)) / len(all_pairs)}
        for name in sets:
            idx = [i for i, p in enumerate(all_pairs) if p[0] == name]
            report["sets"][name]["math_verify_accuracy_vs_expected"] = \
                sum(theirs[i] == all_expected[i] for i in idx) / len(idx)
        for (name, uid, gold, pred), a, b, e in zip(all_pairs, all_ours, theirs, all_expected):
            if a != b:
                who, why = JUDGED.get((gold, pred)) or JUDGED.get((gold, M.extract_answer(pred)), ("unjudged", ""))
                report["disagreements"].append({
                    "set": name, "id": uid, "gold": gold, "prediction": M.extract_answer(pred) or pred,
                    "expected": e, "lightrl": a, "math_verify": b, "right": who, "why": why})

    report["classes"] = classes_report
    _print(report)
    print(f"wrote {common.write_json(report, 'verifier', 'cpu', args.out)}")
    return report


def _print(report: dict) -> None:
    print(f"| set | pairs | verifications/s ({report['workers']} workers) | correct | sympy | timeouts "
          "| math-verify correct |")
    print("|---|---|---|---|---|---|---|")
    for name, e in report["sets"].items():
        mv = e.get("math_verify_accuracy_vs_expected")
        print(f"| {name} | {e['pairs']} | {e['per_second']} | {e['accuracy_vs_expected']:.3f} | {e['sent_to_sympy']} "
              f"| {e['timeouts']} | {'-' if mv is None else f'{mv:.3f}'} |")
    print(f"overall: {report['overall_per_second']} verifications/s")
    if "math_verify" in report:
        mv = report["math_verify"]
        print(f"math-verify {mv['version']}: {mv['per_second']} verifications/s (1 process), "
              f"agreement {mv['agreement']:.4f}, {len(report['disagreements'])} disagreements")
        for d in report["disagreements"]:
            print(f"  [{d['set']}] {d['id']}: gold {d['gold']!r} pred {d['prediction']!r} "
                  f"lightrl={d['lightrl']:.0f} math-verify={d['math_verify']:.0f} right={d['right']} {d['why']}")


# ----------------------------------------------------------------------------- the `classes` part


def _class_table() -> dict[str, list[tuple[str, str, bool]]]:
    """CLASSES of tests/test_verifier_classes.py (loaded by path: bench is dev tooling)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "test_verifier_classes.py"
    spec = importlib.util.spec_from_file_location("_verifier_classes", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CLASSES


def short_pairs(n: int = 2000) -> list[tuple[str, str]]:
    """n short (gold, answer) pairs of the kinds a MATH/GSM8K reward sees most: integers,
    fractions, decimals, radicals, tuples, intervals; half right, half wrong (deterministic)."""
    import random

    rng = random.Random(15)
    out = []
    for k in range(n):
        a, b, c = rng.randint(1, 999), rng.randint(2, 99), rng.randint(1, 9)
        right = k % 2 == 0
        kind = k % 6
        if kind == 0:
            out.append((str(a), str(a if right else a + 1)))
        elif kind == 1:
            out.append((f"\\frac{{{a}}}{{{b}}}", f"{a * c}/{b * c}" if right else f"{a + 1}/{b}"))
        elif kind == 2:
            out.append((f"{a}.5", f"\\frac{{{2 * a + 1}}}{{2}}" if right else f"{a}.4"))
        elif kind == 3:
            out.append((f"{c}\\sqrt{{{b}}}", f"\\sqrt{{{c * c * b}}}" if right else f"{c + 1}\\sqrt{{{b}}}"))
        elif kind == 4:
            out.append((f"({a}, {b})", f"\\left({a},{b}\\right)" if right else f"({b}, {a})"))
        else:
            out.append((f"[{c}, {a})", f"[{c},{a})" if right else f"({c}, {a})"))
    return out


def _math_verify_call(delimiters: bool):
    from math_verify import parse, verify

    def wrap(x: str) -> str:
        return x if "$" in x else f"${x}$"

    def call(gold: str, pred: str) -> bool:
        try:
            return bool(verify(parse(wrap(gold) if delimiters else gold), parse(wrap(pred) if delimiters else pred)))
        except Exception:  # noqa: BLE001 - its failures count as 0, like ours
            return False
    return call


def classes(args: argparse.Namespace) -> dict:
    """Accuracy and false positives per issue-15 class, lightrl vs math-verify, and throughput."""
    from lightrl.rewards import math as M

    table = _class_table()
    M.score_batch(["\\sqrt{2}"] * 4, [f"\\frac{{{2 * k}}}{{{k}\\sqrt2}}" for k in range(1, 5)],
                  workers=args.workers)  # warm the pool outside the timing
    judges = {"lightrl": None}
    if not args.no_math_verify:
        try:
            import math_verify  # noqa: F401
        except ImportError:
            sys.exit("math-verify is not installed: pip install math-verify (dev-only), or pass --no-math-verify")
        judges["math_verify"] = _math_verify_call(False)
        judges["math_verify_dollars"] = _math_verify_call(True)
    report = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 2), "workers": args.workers,
              "versions": common.versions(("sympy", "math-verify")), "classes": {}, "misses": []}
    totals = {name: [0, 0] for name in judges}  # correct, false positives
    for cls, rows in table.items():
        entry = {"cases": len(rows), "true_cases": sum(e for *_, e in rows)}
        for name, call in judges.items():
            if call is None:
                M.clear_cache()
                got = [bool(x) for x in M.score_batch([g for g, _, _ in rows], [p for _, p, _ in rows],
                                                      timeout=args.timeout, workers=args.workers)]
            else:
                got = [call(g, p) for g, p, _ in rows]
            correct = sum(a == e for a, (_, _, e) in zip(got, rows))
            false_pos = sum(a and not e for a, (_, _, e) in zip(got, rows))
            entry[name] = {"accuracy": round(correct / len(rows), 4), "false_positives": false_pos}
            totals[name][0] += correct
            totals[name][1] += false_pos
            report["misses"] += [{"class": cls, "judge": name, "gold": g, "prediction": p, "expected": e}
                                 for a, (g, p, e) in zip(got, rows) if a != e]
        report["classes"][cls] = entry
    n = sum(len(rows) for rows in table.values())
    report["overall"] = {name: {"accuracy": round(c / n, 4), "false_positives": fp} for name, (c, fp) in totals.items()}
    pairs = short_pairs()
    seconds = float("inf")
    for _ in range(args.repeats):  # the machine is shared: keep the least disturbed run
        M.clear_cache()
        t0 = time.perf_counter()
        M.score_batch([g for g, _ in pairs], [p for _, p in pairs], timeout=args.timeout, workers=args.workers)
        seconds = min(seconds, time.perf_counter() - t0)
    report["short_answers"] = {"pairs": len(pairs), "seconds": round(seconds, 3),
                               "per_second": round(len(pairs) / seconds, 1)}
    _print_classes(report)
    return report


def _print_classes(report: dict) -> None:
    names = [k for k in ("lightrl", "math_verify", "math_verify_dollars") if k in report["overall"]]
    print("| class | cases | " + " | ".join(f"{k} correct (false +)" for k in names) + " |")
    print("|---|---|" + "---|" * len(names))
    rows = list(report["classes"].items()) + [("overall", {"cases": sum(e["cases"] for e in report["classes"].values()),
                                                           **report["overall"]})]
    for cls, e in rows:
        cells = " | ".join(f"{e[k]['accuracy']:.3f} ({e[k]['false_positives']})" for k in names)
        print(f"| {cls} | {e['cases']} | {cells} |")
    s = report["short_answers"]
    print(f"short answers: {s['per_second']} verifications/s ({s['pairs']} pairs, {report['workers']} workers, "
          f"load average {report['load_average_1m']} before)")
    for m in report["misses"]:
        if m["judge"] == "lightrl":
            print(f"  lightrl miss [{m['class']}]: gold {m['gold']!r} pred {m['prediction']!r} expected {m['expected']}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    main(p.parse_args())
