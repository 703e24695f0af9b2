"""Properties over every gold answer packaged in lightrl/data/*.jsonl: each verifies against
itself and against its own worked solution, and no numeric perturbation of it verifies."""
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from lightrl.rewards.math import score_batch

DATA = Path(__file__).resolve().parents[1] / "lightrl" / "data"


def _golds() -> list[tuple[str, str]]:
    """(final answer, worked solution) for every packaged row."""
    out = [(r["answer"], r["solution"]) for r in _rows("math500.jsonl")]
    for name in ("gsm8k_test.jsonl", "gsm8k_train.jsonl"):
        out += [(r["answer"].split("####")[-1].strip(), r["answer"]) for r in _rows(name)]
    return out


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


GOLDS = _golds()


def test_packaged_golds_are_all_there():
    assert len(GOLDS) == 500 + 1319 + 7473


def test_every_gold_verifies_against_itself():
    answers = [a for a, _ in GOLDS]
    scores = score_batch(answers, answers)
    assert [a for a, s in zip(answers, scores) if s != 1.0] == []


def test_every_gold_verifies_against_its_worked_solution_both_ways():
    answers, solutions = [a for a, _ in GOLDS], [s for _, s in GOLDS]
    assert sum(score_batch(answers, solutions)) == len(GOLDS)
    assert sum(score_batch(solutions, answers)) == len(GOLDS)  # a whole solution as the gold


def _digit_changed(answer: str) -> str | None:
    d = re.search(r"\d", answer)
    return None if d is None else answer[:d.start()] + str((int(d.group()) + 1) % 10) + answer[d.end():]


def _number(answer: str) -> Fraction | None:
    a = answer.replace(",", "")
    return Fraction(a) if re.fullmatch(r"-?\d+(?:\.\d+)?", a) else None


@pytest.mark.parametrize("how", ["first digit changed", "plus one", "times ten", "plus a tenth"])
def test_no_numeric_perturbation_of_a_gold_verifies(how):
    golds = sorted({a for a, _ in GOLDS})
    if how == "first digit changed":
        pairs = [(g, _digit_changed(g)) for g in golds if _digit_changed(g)]
    else:
        step = {"plus one": lambda v: v + 1, "times ten": lambda v: v * 10, "plus a tenth": lambda v: v + Fraction(1, 10)}
        pairs = [(g, str(float(step[how](_number(g))))) for g in golds
                 if _number(g) is not None and step[how](_number(g)) != _number(g)]  # 0 * 10 is 0
    assert len(pairs) > 900
    scores = score_batch([g for g, _ in pairs], [p for _, p in pairs])
    assert [pair for pair, s in zip(pairs, scores) if s] == []
