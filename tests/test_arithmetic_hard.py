"""The harder built-in task: its rows, its carry-forgetting teacher, and that 'arithmetic' is untouched."""
import random
from collections import Counter

from lightrl import tiny
from lightrl.config import BUILTIN_DATA, Config, validate
from lightrl.data import load_rows


def test_hard_rows_are_two_digit_sums_with_their_answers():
    rows, bad = load_rows("arithmetic-hard", seed=3)
    test, _ = load_rows("arithmetic-hard-test", seed=3)
    assert bad == 0 and len(rows) == 20000 and len(test) == 1000
    for r in rows[:500] + test[:500]:
        a, b = map(int, r["question"].rstrip("=").split("+"))
        assert 0 <= a < 100 and 0 <= b < 100 and r["answer"] == str(a + b)
        assert r["carry_slip"] == tiny.CARRY_SLIP and not tiny.unknown_chars(r["question"])
    assert rows[:5] != test[:5]  # the test split is another draw
    counts = Counter(tiny.carries(*map(int, r["question"][:-1].split("+"))) for r in rows)
    # Uniform operands: 30.25% / 45% / 24.75% of sums need 0 / 1 / 2 carries.
    assert abs(counts[0] / 20000 - 0.3025) < 0.015 and abs(counts[2] / 20000 - 0.2475) < 0.015


def test_carries():
    pairs = [(12, 30), (5, 5), (58, 67), (99, 99), (95, 5), (0, 0)]
    assert [tiny.carries(a, b) for a, b in pairs] == [0, 1, 2, 2, 2, 0]


def test_teacher_forgets_each_carry_with_the_slip_probability():
    rng = random.Random(0)
    row = {"question": "58+67=", "answer": "125", "carry_slip": 0.7}
    seen = Counter(tiny.carry_slip_demonstration(row, rng) for _ in range(20000))
    # 8+7 = 15 carries into 5+6 (+1) = 12, which carries into the hundreds: two chances to slip.
    assert set(seen) == {"\\boxed{125}", "\\boxed{115}", "\\boxed{25}", "\\boxed{15}"}
    assert abs(seen["\\boxed{125}"] / 20000 - 0.09) < 0.01 and abs(seen["\\boxed{15}"] / 20000 - 0.49) < 0.015
    no_carry = {"question": "12+30=", "answer": "42", "carry_slip": 0.7}
    assert {tiny.carry_slip_demonstration(no_carry, rng) for _ in range(50)} == {"\\boxed{42}"}
    always = {"question": "99+99=", "answer": "198", "carry_slip": 0.0}
    assert tiny.carry_slip_demonstration(always, rng) == "\\boxed{198}"


def test_the_easy_task_and_its_teacher_are_unchanged():
    assert tiny.arithmetic_problems(3, seed=0) == load_rows("arithmetic", seed=0)[0][:3]
    assert all(set(r) == {"question", "answer"} for r in load_rows("arithmetic", seed=0)[0][:100])
    rows = tiny.arithmetic_problems(200, seed=1)
    a, b = random.Random(5), random.Random(5)
    assert [tiny.teacher(r, a, 0.2) for r in rows] == [tiny.imperfect_demonstration(r, b, 0.2) for r in rows]


def test_hard_sets_are_builtin_data():
    assert {"arithmetic-hard", "arithmetic-hard-test"} <= set(BUILTIN_DATA)
    validate(Config(data="arithmetic-hard", eval_data="arithmetic-hard-test"))
