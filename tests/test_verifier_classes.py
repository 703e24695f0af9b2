"""The ten classes of issue 15, each with its own true and false rows (gold, prediction, expected).

The wrong-yes rows of class 9 and the decimal rule of class 7 are the documented decisions
of lightrl/rewards/math/__init__.py. `python -m bench verifier` runs this table against
math-verify too (bench/bench_verifier.py, the `classes` part).
"""
import pytest

from lightrl.rewards.math import verify

P = "\\begin{pmatrix}%s\\end{pmatrix}"
B = "\\begin{bmatrix}%s\\end{bmatrix}"

CLASSES = {
    "1_answers_outside_boxes": [
        ("9", "Answer $9$", True), ("9", "Answer $8$", False), ("9", "We get \\[ 9 \\]", True),
        ("9", "So $$ 9 $$", True), ("9", "thus \\( 9 \\)", True), ("9", "thus \\( 10 \\)", False),
        ("12000023", "Final Answer: The final answer is 12,000,023", True),
        ("12000023", "Final Answer: The final answer is 12,000,024", False),
        ("12", "So the answer is $ABCD$ with side $12$.", True), ("ABCD", "So the answer is $ABCD$ with side $12$.", False),
        ("\\frac23", "User: hi\nAssistant: Let me think. The probability is 2/3.", True),
        ("\\frac23", "User: hi\nAssistant: Let me think. The probability is 3/4.", False),
        ("5", "We find \\boxed{3}. Wait, that is wrong. The final answer is 5.", True),
        ("3", "We find \\boxed{3}. Wait, that is wrong. The final answer is 5.", False),
        ("5", "The final answer is $\\boxed{5}$.", True), ("5", "Adding, the total is $5$ apples.", True),
        ("7", "There are 3 red and 4 blue, so 7 in all.", True), ("7", "There are 3 red and 4 blue, so 8 in all.", False),
        ("\\frac{1}{2}", "The value is \\(\\frac{1}{2}\\).", True), ("-3", "Solving gives $x=-3$.", True),
        ("3", "Solving gives $x=-3$.", False), ("\\sqrt2", "Hence $$\\sqrt{2}$$", True),
        ("18", "I cannot solve this one.", False), ("12", "The answer is $12$ because $3 \\cdot 4 = 12$.", True),
        ("\\frac12", "The answer is $\\frac12$ since $2x = 1$.", True),
        ("(3, -1)", "Solving, $x = 3$ and $y = -1$.", True), ("(3, -1)", "Solving, $x = -1$ and $y = 3$.", False),
        ("2, 3", "The roots are $2$ and $3$.", True), ("2, 3", "The roots are $2$ and $4$.", False),
        ("3", "The answer is $2$ or $3$.", False),  # a hedge, as with boxes
    ],
    "2_gold_is_a_solution": [
        ("The answer is $5$.", "5", True), ("The answer is $5$.", "6", False),
        ("Adding gives \\boxed{12}.", "12", True), ("Adding gives \\boxed{12}.", "13", False),
        ("Natalia sold 24 clips in May.\n#### 72", "72", True), ("Natalia sold 24 clips in May.\n#### 72", "24", False),
        ("We compute $2+3=5$, so the sum is $5$.", "\\boxed{5}", True),
        ("We compute $2+3=5$, so the sum is $5$.", "\\boxed{6}", False),
        ("So $x = \\boxed{1}$ or $x = \\boxed{2}$.", "1, 2", True), ("So $x = \\boxed{1}$ or $x = \\boxed{2}$.", "1", False),
        ("The area is 12 square units.", "12", True), ("The area is 12 square units.", "13", False),
        ("Therefore the answer is $\\frac{3}{4}$.", "0.75", True), ("Therefore the answer is $\\frac{3}{4}$.", "0.7", False),
        ("Solving, we get $x = 4$.", "x=4", True), ("Solving, we get $x = 4$.", "4", True),
        ("Solving, we get $x = 4$.", "x=5", False), ("\\text{Evelyn}", "Evelyn", True), ("\\text{Evelyn}", "Navin", False),
        ("Final Answer: The final answer is 1,234. I hope it is correct.", "1234", True),
        ("Final Answer: The final answer is 1,234. I hope it is correct.", "1243", False),
        # a bare gold is not cut down to its last number: no box, no '####', no two prose words in a row
        ("np.arcsin(10/13)", "\\boxed{np.arcsin(10/13)}", True), ("np.arcsin(10/13)", "\\boxed{13}", False),
        ("10 \\text{ inches}", "\\boxed{10 \\text{ inches}}", True),
    ],
    "3_relations": [
        ("x \\ge 3", "x \\geqslant 3", True), ("x \\ge 3", "x >= 3", True), ("x \\geq 3", "x \\ge 3", True),
        ("x \\ge 3", "x > 3", False), ("x \\ne 3", "x != 3", True), ("x \\neq 3", "x \\ne 3", True),
        ("x \\ne 3", "x \\ne 4", False), ("x > 3", "x \\gt 3", True), ("x < 1", "-x > -1", True),
        ("x < 1", "-x < -1", False), ("x > 3", "2x > 6", True), ("x > 3", "2x \\ge 6", False),
        ("x \\le -2", "3x + 1 \\le x - 3", True), ("(-\\infty, 1)", "-x > -1", True), ("[3, \\infty)", "2x \\ge 6", True),
        ("(-\\infty, 3) \\cup (3, \\infty)", "x \\ne 3", True), ("x \\ne 3", "(-\\infty, 3) \\cup (3, \\infty)", True),
        ("5", "x = 5", True), ("(3, 2)", "(p, q) = (3, 2)", True), ("(3, 2)", "(p, q) = (2, 3)", False),
        ("p = 3, q = 2", "(p, q) = (3, 2)", True), ("p = 3, q = 2", "(q, p) = (2, 3)", True),
        ("p = 3, q = 2", "(p, q) = (2, 3)", False), ("x = 5", "y = 5", False), ("AB = 4", "4", True),
        ("4", "AB = 4", True), ("AB = 4", "AC = 4", False), ("2x + 1", "f(x) = 2x + 1", True),
        ("f(x) = 2x + 1", "2x + 1", True), ("f(x) = 2x + 1", "2x - 1", False),
        ("\\sqrt2", "x = \\sqrt2 \\approx 1.414", True), ("\\sqrt2", "\\approx 1.414", False),
        ("\\frac{10}{3}", "x = \\frac{10}{3} \\approx 3.33", True), ("\\frac{10}{3}", "x \\approx 3.33", False),
        ("(-3, 3)", "|x| < 3", True), ("[-1, 5]", "|x-2| \\le 3", True), ("[-1, 5]", "|x-2| < 3", False),
        ("(-\\infty, -1) \\cup (5, \\infty)", "|2 - x| > 3", True), ("(-3, 3)", "3 > |x|", True),
        ("(-\\infty, 0]", "|x| \\le 0", False), ("x^2 > 4", "x > 2", False),  # not linear: left as written
    ],
    "4_matrices": [
        (P % "1&2\\\\3&4", B % "1&2\\\\3&4", True), (P % "1&2\\\\3&4", B % "1&2\\\\4&3", False),
        (P % "1&2\\\\3&4", "\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]", True),
        (P % "1&2\\\\3&4", "\\left(\\begin{array}{cc}1 & 2\\\\ 3 & 4\\end{array}\\right)", True),
        (P % "1&2\\\\3&4", "\\left[\\begin{array}{cc}1&2\\\\3&5\\end{array}\\right]", False),
        (P % "1&2\\\\3&4", "\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix}", False),
        (P % "1\\\\2", "The vector is $\\begin{bmatrix}1\\\\2\\end{bmatrix}$.", True),
        (P % "1\\\\2", "The vector is $\\begin{bmatrix}2\\\\1\\end{bmatrix}$.", False),
        (P % "\\frac12&0\\\\0&1", "So $M = \\begin{pmatrix}0.5&0\\\\0&1\\end{pmatrix}$.", True),
        (P % "2&2\\\\3&4", P % "1&2\\\\3&4" + " + " + P % "1&0\\\\0&0", True),
        (P % "2&2\\\\3&4", P % "1&2\\\\3&4" + " + " + P % "0&0\\\\0&1", False),
        (P % "0&2\\\\3&4", P % "1&2\\\\3&4" + " - " + P % "1&0\\\\0&0", True),
        (P % "1&2\\\\3&4", P % "1&2\\\\3&4" + P % "1&0\\\\0&1", True),
        (P % "2&1\\\\4&3", P % "1&2\\\\3&4" + P % "0&1\\\\1&0", True),
        (P % "1&2\\\\3&4", P % "1&2\\\\3&4" + P % "0&1\\\\1&0", False),
        (P % "2&1\\\\4&3", P % "1&2\\\\3&4" + " \\cdot " + P % "0&1\\\\1&0", True),
        (P % "5\\\\11", P % "1&2\\\\3&4" + P % "1\\\\2", True), (P % "5\\\\10", P % "1&2\\\\3&4" + P % "1\\\\2", False),
        (P % "1&2\\\\3&4", P % "1&2" + P % "1&2\\\\3&4", False),  # shapes do not multiply
        (P % "-2\\\\-14\\\\-7", "(-2,-14,-7)", True), (P % "-2\\\\-14\\\\-7", "(-2,-7,-14)", False),
        (P % "1&2\\\\3&4", P % "1&2\\\\3&4", True),
    ],
    "5_numbers_in_prose": [
        ("1000.99", "1000,99", True), ("2.74", "2,74", True), ("2.74", "2,75", False), ("1000.5", "1.000,5", True),
        ("1000", "1,000", True), ("1.000", "1,000", False), ("12000023", "12 000 023", True),
        ("5", "€5", True), ("5", "5 €", True), ("5", "£5", True), ("5", "€6", False), ("5", "It costs $5.", True),
        ("5", "It costs $6.", False), ("5", "5 m²", True), ("5", "5 m^2", True), ("5", "6 m²", False),
        ("5", "5 euros", True), ("10", "10 m/s", True), ("5\\%", "5 pct", True), ("5\\%", "5 percent", True),
        ("5\\%", "5 percentage points", True), ("5\\%", "6 percent", False), ("5", "5\\text{ percent}", False),
        ("0.05", "5\\text{ percent}", True), ("\\{1, 2\\}", "1,2", True), ("120", "5!", True),
        ("1500000", "1.5 million", True), ("1500000", "1.5 billion", False), ("3000", "3 thousand dollars", True),
        ("3000000", "The city has 3 million people.", True), ("\\frac12", "½", True), ("\\frac34", "¼", False),
    ],
    "6_several_boxes": [
        ("1, 2", "\\boxed{1}, \\boxed{2}", True), ("1, 2", "\\boxed{2} and \\boxed{1}", True),
        ("(1,2)", "\\boxed{1}, \\boxed{2}", True), ("(1,2)", "\\boxed{2}, \\boxed{1}", False),
        ("3", "\\boxed{3} or \\boxed{4}", False), ("4", "\\boxed{3} or \\boxed{4}", False), ("C", "(C) or (D)", False),
        ("\\text{(C)}", "\\boxed{C} or \\boxed{D}", False), ("\\text{(C)}", "\\boxed{(C)}", True),
        ("1, 2", "x=\\boxed{1} or x=\\boxed{2}", True), ("1,2,3", "\\boxed{1}, \\boxed{2}", False),
        ("\\frac{639}{40}", "$d = \\boxed{15\\frac{39}{40}},$ or $\\boxed{\\frac{639}{40}}$ inches.", True),
        ("5", "\\boxed{5} and \\boxed{5}", True), ("18", "first \\boxed{17}, then corrected: \\boxed{18}", True),
        ("3", "\\boxed{3 \\text{ or } 4}", False), ("-1, 3", "The roots are $\\boxed{-1}$ and $\\boxed{3}$.", True),
        ("-1, 3", "The roots are $\\boxed{-1}$ and $\\boxed{4}$.", False), ("\\{-1, 3\\}", "\\boxed{3}, \\boxed{-1}", True),
        ("A", "(A) or (B)", False), ("(3, 4)", "\\boxed{(3, 4)}", True), ("3, 4", "\\boxed{3} \\quad \\boxed{4}", True),
        ("(3, 4)", "\\boxed{(3, 4)} or \\boxed{(4, 3)}", False),
        ("18", "I got \\boxed{17}. \\boxed{18}", True),  # a full stop ends the list: a correction
    ],
    "7_decimals_for_exact_values": [
        ("\\frac13", "0.333333", True), ("\\frac23", "0.666667", True), ("\\sqrt2", "1.41421", True),
        ("\\pi", "3.14159", True), ("\\frac{1}{7}", "0.142857", True), ("e", "2.71828", True),
        ("-\\frac13", "-0.333333", True), ("\\frac{1}{3}", "0.3333333333", True),
        ("\\left(\\frac13, \\frac23\\right)", "(0.333333, 0.666667)", True),
        ("\\{\\frac13, \\sqrt2\\}", "\\{1.41421, 0.333333\\}", True), ("[\\frac13, \\pi)", "[0.333333, 3.14159)", True),
        ("\\frac{\\sqrt3}{2}", "0.866025", True), ("\\frac{1}{3}", "3.33333\\times 10^{-1}", True),
        ("\\frac13", "0.333", False), ("\\frac23", "0.666666", False),  # truncated, not rounded
        ("\\sqrt2", "1.414", False), ("\\pi", "3.14", False), ("\\pi", "3.14160", False),
        ("\\left(\\frac13, \\frac23\\right)", "(0.333, 0.667)", False),
        ("[\\frac13, \\pi)", "(0.333333, 3.14159)", False), ("\\frac13", "0.333334", False),
        ("\\frac{1}{7}", "0.142858", False), ("\\{\\frac13, \\sqrt2\\}", "\\{1.414, 0.333\\}", False),
        ("2", "1.99999999", False), ("\\frac{\\sqrt3}{2}", "0.8660", False),
    ],
    "8_sets_vs_tuples": [
        ("(1, 2)", "\\{1, 2\\}", False), ("\\{1, 2\\}", "(1, 2)", False), ("\\{1, 2\\}", "\\{2, 1\\}", True),
        ("(1, 2)", "(1, 2)", True), ("(1, 2)", "(2, 1)", False), ("\\{1, 2\\}", "1, 2", True), ("(1, 2)", "1, 2", True),
        ("(1, 2)", "2, 1", False), ("1, 2", "\\{2, 1\\}", True), ("1, 2", "(1, 2)", True), ("(1, 2)", "[1, 2]", False),
        ("[1, 2]", "[1, 2)", False), ("[1, 2)", "[1, 2)", True), ("(1, 2]", "(1, 2)", False),
        ("\\{1, 2, 3\\}", "(1, 2, 3)", False), ("\\{5\\}", "5", True), ("(3, 4)", "\\{3, 4\\}", False),
        ("\\{(1, 2), (3, 4)\\}", "\\{(3, 4), (1, 2)\\}", True), ("\\{(1, 2), (3, 4)\\}", "\\{(2, 1), (3, 4)\\}", False),
        ("(1, 2) \\cup (3, 4)", "(3, 4) \\cup (1, 2)", True), ("[1, 2]", "\\{1, 2\\}", False),
    ],
    "9_wrong_yeses": [
        ("101", "101_2", False), ("5", "101_2", True), ("101_2", "101", True), ("111", "111_2", False),
        ("7", "111_{2}", True), ("5", "101_3", False), ("52_8", "42", False),
        ("1099511627776", "1099511627000.0", False), ("1099511627776", "1099511627776.0", True),
        ("123456789012", "1.23456789e11", False), ("123456789012", "1.23456789012e11", True),
        ("123456789012", "1.23456789\\times 10^{11}", False), ("1000000007", "1000000007.5", False),
        ("2", "2.000000001", False), ("10^{30}+1", "1.0e30", False), ("10^{30}", "1.0e30", True),
        ("0", "0^0", False), ("1", "0^0", False), ("0", "0^5", True), ("1", "7^0", True),
        ("5", "5\\%", False), ("5", "5 \\%", False), ("50", "50%", False), ("5", "5 percent", False),
        ("0.05", "5\\%", True), ("5\\%", "5", True), ("5\\%", "0.05", True), ("5\\%", "5\\%", True),
        ("5\\%", "6\\%", False), ("and", "or", False), ("\\,", "\\;", False),  # nothing to compare
    ],
}

ROWS = [(cls, g, p, e) for cls, rows in CLASSES.items() for g, p, e in rows]

# Written before the verifier ever saw them, as a check of the table above, in two batches
# (58 of 60 and 46 of 47 right at once; two of the misses were fixed after); kept as
# regression rows. KNOWN_MISSES is what it still gets wrong.
HELDOUT = [
 ("$\\frac{1}{2}$", "The answer is 0.5", True), ("\\{1,2\\}", "$\\boxed{\\{2,1\\}}$", True),
 ("2^{1/2}", "$\\sqrt{2}$", True), ("1000", "We get $1,000$ total.", True), ("(1,2)", "The point is $(1, 2)$.", True),
 ("[1,2)", "so $x \\in [1, 2)$", True), ("5", "Therefore $x = 5$.", True), ("\\infty", "the limit is $\\infty$", True),
 ("\\frac{\\sqrt{3}}{2}", "$\\frac{1}{2}\\sqrt{3}$", True), ("10", "$10\\text{ cm}$", True), ("A", "$\\text{A}$", True),
 ("2\\pi", "The circumference is $2\\pi$.", True), ("3", "$\\log_2 8$", True), ("-1", "$e^{i\\pi}$", True),
 ("\\frac{3}{4}", "**Final Answer:** $\\frac{3}{4}$", True), ("12", "**Answer:** 12", True),
 ("7", "The final answer is $\\boxed{7}$. I hope it is correct.", True), ("7", "The final answer is $\\boxed{8}$.", False),
 ("x^2+2x+1", "$(x+1)^2$", True), ("x^2+2x+1", "$(x+1)^3$", False), ("\\frac{1}{3}", "$0.\\overline{3}$", True),
 ("(-\\infty, 0) \\cup (0, \\infty)", "$x \\neq 0$", True), ("[2, 5]", "$2 \\leq x \\leq 5$", True),
 ("[2, 5]", "$2 < x \\leq 5$", False), ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "$\\begin{pmatrix}1\\\\2\\end{pmatrix}$", True),
 ("120", "$5!$", True), ("10", "$\\binom{5}{2}$", True), ("\\frac{\\pi}{4}", "$45^\\circ$", False),
 ("\\text{(B)}", "The correct option is (B).", True), ("\\text{(B)}", "The correct option is (C).", False),
 ("3", "There are three ways.", False), ("1/2", "\\boxed{\\dfrac12}", True), ("0.25", "\\boxed{\\frac{1}{4}}", True),
 ("-3", "$$x = -3$$", True), ("4", "x = 2 or x = 4, so the larger is $4$.", True), ("4", "$2^2$", True),
 ("6", "$3!$", True), ("\\sqrt{8}", "$2\\sqrt{2}$", True), ("\\sqrt{8}", "$3\\sqrt{2}$", False),
 ("1.5", "\\boxed{\\frac{3}{2}}", True), ("150", "\\$150", True), ("150", "150 dollars", True),
 ("\\{-2, 2\\}", "$x = \\pm 2$", True), ("\\{-2, 2\\}", "$x = 2$", False), ("y = 3x - 1", "$y=3x-1$", True),
 ("y = 3x - 1", "$3x - y = 1$", True), ("y = 3x - 1", "$y = 3x + 1$", False), ("2", "$\\sqrt{4}$", True),
 ("e", "$\\lim_{n\\to\\infty}(1+1/n)^n$", True), ("0", "$\\sin(\\pi)$", True), ("1", "$\\cos(0)$", True),
 ("\\frac{5}{2}", "2.5", True), ("\\frac{5}{3}", "1.67", False), ("20\\%", "20", True), ("0.2", "20\\%", True),
 ("3", "The answer: 3", True), ("9", "So, the result is \\(9\\).", True), ("(3, -1)", "$(x, y) = (3, -1)$", True),
 ("(3, -1)", "$(x, y) = (-1, 3)$", False), ("x=3, y=-1", "$x = 3$ and $y = -1$", True),
 ("\\frac{2}{3}", "$$\\boxed{\\frac{2}{3}}$$", True), ("\\frac{2}{3}", "\\boxed{2/3}", True), ("\\frac{2}{3}", "\\boxed{\\frac{3}{2}}", False),
 ("\\text{Tuesday}", "The answer is Tuesday.", True), ("\\text{Tuesday}", "The answer is Monday.", False),
 ("\\text{yes}", "\\boxed{\\text{Yes}}", True), ("\\text{no}", "\\boxed{\\text{Yes}}", False),
 ("(2, 3)", "The ordered pair is $\\boxed{(2,3)}$", True), ("\\{2, 3\\}", "$\\boxed{\\{3,2\\}}$", True),
 ("x^3 - 3x + 1", "\\boxed{x^3-3x+1}", True), ("x^3 - 3x + 1", "\\boxed{x^3-3x-1}", False),
 ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}", True), ("\\frac{\\sqrt{2}}{2}", "\\boxed{0.7071}", False),
 ("\\frac{\\sqrt{2}}{2}", "\\boxed{0.707107}", True), ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}", True),
 ("-\\frac{1}{2}", "\\boxed{-0.5}", True), ("-\\frac{1}{2}", "\\boxed{0.5}", False),
 ("3", "So $n = \\boxed{3}$.", True), ("8", "Thus there are $\\boxed{8}$ integers.", True),
 ("1.5", "The answer is 3/2", True), ("10", "The answer is ten.", False),
 ("\\left[ -1, \\frac{1}{2} \\right)", "\\boxed{[-1, 1/2)}", True), ("\\left[ -1, \\frac{1}{2} \\right)", "\\boxed{[-1, 1/2]}", False),
 ("(-\\infty, -3] \\cup [3, \\infty)", "\\boxed{x \\le -3 \\text{ or } x \\ge 3}", True),
 ("(-\\infty, -3] \\cup [3, \\infty)", "\\boxed{|x| \\ge 3}", True),
 ("5", "\\boxed{5.0}", True), ("5", "\\boxed{5.00001}", False), ("\\$5.00", "\\boxed{5}", True),
 ("40^\\circ", "\\boxed{40}", True), ("40", "\\boxed{40^{\\circ}}", True),
 ("\\frac{1}{6}", "The probability is $\\frac{1}{6}$.", True), ("\\frac{1}{6}", "The probability is $\\frac{1}{5}$.", False),
 ("2", "\\boxed{x=2}", True), ("x = 2", "\\boxed{2}", True), ("y = 2", "\\boxed{x = 2}", False),
 ("\\pi r^2", "\\boxed{r^2\\pi}", True), ("a+b", "\\boxed{b+a}", True), ("ab", "\\boxed{ba}", True),
 ("\\sqrt{5}", "\\boxed{5^{1/2}}", True), ("4", "\\boxed{\\sqrt{16}}", True), ("-4", "\\boxed{\\sqrt{16}}", False),
 ("1", "\\boxed{\\frac{\\sin^2 x + \\cos^2 x}{1}}", True), ("\\infty", "\\boxed{\\infty}", True),
 ("2017", "\\boxed{2017}", True), ("2017", "\\boxed{2,017}", True), ("0", "\\boxed{0}", True), ("0", "\\boxed{-0.0}", True),
]
KNOWN_MISSES = {
    ("e", "$\\lim_{n\\to\\infty}(1+1/n)^n$"): "limits are not evaluated",
}


def test_every_class_has_twenty_true_and_false_rows():
    for cls, rows in CLASSES.items():
        assert len(rows) >= 20, cls
        assert sum(e for *_, e in rows) >= 5 and sum(not e for *_, e in rows) >= 5, cls


@pytest.mark.parametrize("cls,gold,pred,expected", ROWS, ids=[f"{r[0][:2]}-{i}" for i, r in enumerate(ROWS)])
def test_class_row(cls, gold, pred, expected):
    assert verify(gold, pred) is expected


def test_decimal_rule_is_configurable():
    assert verify("\\frac13", "0.333", decimal_digits=3) is True
    assert verify("\\pi", "3.14", decimal_digits=3) is True  # irrational: decided in a sympy worker
    assert verify("\\frac13", "0.33", decimal_digits=3) is False  # two digits are fewer than three
    assert verify("\\frac13", "0.334", decimal_digits=3) is False  # not 1/3 rounded
    assert verify("\\frac13", "0.333333", decimal_digits=60) is False  # the rule effectively off
    assert verify("\\sqrt2", "1.41421", decimal_digits=60) is False
    assert verify("123456789012", "1.23456789e11", decimal_digits=1) is False  # integers stay exact
    with pytest.raises(ValueError, match="decimal_digits=0"):
        verify("1", "1", decimal_digits=0)


@pytest.mark.parametrize("gold,pred,expected", HELDOUT, ids=[f"heldout-{i}" for i in range(len(HELDOUT))])
def test_heldout_row(gold, pred, expected):
    if (gold, pred) in KNOWN_MISSES:  # still wrong; when fixed, move the row out of KNOWN_MISSES
        assert verify(gold, pred) is (not expected), KNOWN_MISSES[(gold, pred)]
        return
    assert verify(gold, pred) is expected
