"""Hand-written (gold, prediction, expected) table for lightrl.rewards.math.verify.

Every equivalence category of the verifier has true and false rows; the `traps` rows
are pairs that careless checkers get wrong. Decisions documented in
lightrl/rewards/math/__init__.py: integers compare exactly; a decimal equals a fraction or
surd only as that value rounded to its places with >= 6 significant digits (so 0.333 != 1/3);
a prediction with % against a gold without % is read as a fraction (25% != 25);
symbols are real (x^2 == |x|^2).
"""
import pytest

from lightrl.rewards.math import verify

CASES = {
    "integers": [
        ("42", "42", True), ("42", "43", False), ("42", "042", True), ("-7", "-7", True), ("-7", "7", False),
        ("1000", "1,000", True), ("1234567", "1,234,567", True), ("10,\\!080", "10080", True),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100", True), ("58,500", "58500", True), ("58,500", "585", False),
        ("2220", "2,220", True), ("0", "-0", True), ("18", "+18", True),
    ],
    "decimals": [
        ("1.25", "1.250", True), ("1.25", "\\frac54", True), ("0.15", ".15", True),
        (".0000672", "6.72\\times 10^{-5}", True), ("3.21", "3.2", False), ("326.5", "653/2", True),
        ("4.5", "4.50", True), ("1.25", "1.26", False), ("2", "2.0", True), ("2", "2.00000001", False),
        ("2", "2.0000000000001", False),
    ],
    "fractions": [
        ("\\frac{14}{3}", "14/3", True), ("\\frac{14}{3}", "\\dfrac{14}{3}", True),
        ("\\frac{14}{3}", "\\tfrac{28}{6}", True), ("\\frac43", "\\frac{4}{3}", True), ("\\frac 59", "5/9", True),
        ("\\frac9{19}", "\\frac{9}{19}", True), ("\\frac{270}7", "\\frac{270}{7}", True),
        ("\\frac{3}{56}", "\\frac{56}{3}", False), ("-\\frac{35}{9}", "\\frac{-35}{9}", True),
        ("-\\frac{35}{9}", "\\frac{35}{9}", False), ("\\frac{1}{2}", "{1 \\over 2}", True),
        ("\\frac{2}{1005}", "2/1005", True), ("\\frac{448}{15625}", "0.028672", True),
    ],
    "mixed_numbers": [
        ("1\\frac{4}{5}", "\\frac{9}{5}", True), ("1\\frac{4}{5}", "1.8", True), ("137 \\frac{1}{2}", "137.5", True),
        ("-2\\frac{1}{2}", "-\\frac52", True), ("1\\frac{4}{5}", "\\frac45", False), ("3 1/2", "7/2", True),
    ],
    "percent": [
        ("50\\%", "50", True), ("50\\%", "0.5", True), ("50\\%", "\\frac12", True), ("0.25", "25\\%", True),
        ("25", "25%", False), ("0.25", "25%", True), ("50\\%", "5", False), ("12.5\\%", "\\frac18", True),
    ],
    "scientific": [
        ("1500", "1.5\\times 10^3", True), ("1500", "1.5 \\cdot 10^{3}", True), ("1500", "1.5e3", True),
        ("0.0015", "1.5E-3", True), ("1500", "1.5\\times 10^4", False), ("3\\times 10^{8}", "300000000", True),
    ],
    "sqrt": [
        ("3\\sqrt{13}", "\\sqrt{117}", True), ("11\\sqrt2", "11\\sqrt{2}", True), ("\\sqrt{51}", "\\sqrt{52}", False),
        ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True), ("\\frac{\\sqrt{3}}{3}", "\\sqrt{3}/3", True),
        ("2\\sqrt{5}", "\\sqrt{20}", True), ("2\\sqrt{5}", "\\sqrt{10}", False), ("\\sqrt[3]{-8}", "-2", True),
        ("\\sqrt{16}", "4", True), ("\\sqrt2", "sqrt(2)", True), ("1+2\\sqrt{3}", "2\\sqrt3+1", True),
        ("\\frac{3\\sqrt{3}}{4}", "\\frac34\\sqrt3", True),
    ],
    "pi": [
        ("\\pi", "\\pi", True), ("288 \\pi", "288\\pi", True), ("7\\pi", "\\pi \\cdot 7", True),
        ("12\\pi", "6\\pi", False), ("18+2\\pi", "2\\pi+18", True), ("\\frac{20000}{\\pi}", "20000/\\pi", True),
        ("-\\frac{\\pi}{6}", "-\\pi/6", True), ("\\pi", "3.14", False), ("8 \\pi", "8pi", True),
        ("\\frac{\\pi}{2}", "90", False),
    ],
    "e_and_powers": [
        ("e^2", "e \\cdot e", True), ("e", "2.718", False), ("2^{10}", "1024", True), ("2^{-2}", "\\frac14", True),
        ("3^{4}", "4^{3}", False), ("x^{2}", "x \\cdot x", True), ("5r^5", "5r^{5}", True), ("5r^5", "5r^4", False),
        ("(-2)^{3}", "-8", True), ("4^{1/2}", "2", True), ("e^{i\\pi}", "-1", True),
    ],
    "products": [
        ("6", "2 \\cdot 3", True), ("6", "2 \\times 3", True), ("12", "3 \\times 5", False),
        ("(a+5)(b+2)", "(b+2)(a+5)", True), ("(a+5)(b+2)", "ab+2a+5b+10", True), ("(a+5)(b+2)", "(a+2)(b+5)", False),
        ("2k+2", "2(k+1)", True),
    ],
    "degrees": [
        ("90^\\circ", "90", True), ("90^\\circ", "90^{\\circ}", True), ("30^\\circ", "30°", True),
        ("145^\\circ", "145 degrees", True), ("120^\\circ", "60^\\circ", False),
        ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ],
    "units_and_text": [
        ("5.4 \\text{ cents}", "5.4", True), ("864 \\mbox{ inches}^2", "864", True),
        ("15\\mbox{ cm}^2", "15 \\text{ cm}^2", True), ("\\$32,\\!348", "32348", True), ("\\$18.90", "18.9", True),
        ("\\$36", "36 dollars", True), ("\\$36", "\\$37", False), ("\\text{Evelyn}", "Evelyn", True),
        ("\\text{Evelyn}", "\\text{evelyn}", True), ("\\text{Evelyn}", "Navin", False),
        ("\\text{east}", "East", True), ("\\text{even}", "\\text{odd}", False), ("\\text{ellipse}", "ellipse", True),
        ("12", "12 \\text{ meters}", True),
    ],
    "assignment": [
        ("x=5", "5", True), ("5", "x = 5", True), ("x=5", "x=6", False), ("y = 2x + 3", "2x+3", True),
        ("k = 4", "4", True), ("x \\in [-2,7]", "[-2, 7]", True),
    ],
    "equations": [
        ("y = 2x + 3", "2x - y + 3 = 0", True), ("y = 2x + 3", "y = 3 + 2x", True), ("y=-2x", "2x+y=0", True),
        ("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0", True),
        ("5x - 7y + 11z + 4 = 0", "10x - 14y + 22z + 8 = 0", True),
        ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0", False), ("x^2+y^2=1", "1=y^2+x^2", True),
        ("x^2+y^2=1", "x^2+y^2=2", False), ("y = 2x + 3", "y = 2x + 4", False),
    ],
    "intervals": [
        ("(3,4]", "(3, 4]", True), ("(3,4]", "[3,4]", False), ("(2,\\infty)", "(2, \\infty)", True),
        ("(-\\infty, 0]", "(-\\infty,0)", False), ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 8/3]", True),
        ("(0,9) \\cup (9,36)", "(0,9)\\cup(9,36)", True), ("(0,9) \\cup (9,36)", "(9,36) \\cup (0,9)", True),
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2) U (3,\\infty)", True),
        ("(0,9) \\cup (9,36)", "(0,36)", False),
        ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]", True),
        ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt3,\\sqrt3)", True),
    ],
    "sets_and_lists": [
        ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}", True), ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}", True),
        ("\\{1, 2, 3\\}", "\\{1, 2\\}", False), ("1,-2", "-2, 1", True), ("3, 5, 7", "7,5,3", True),
        ("3, 5, 7", "3, 5", False), ("-2,1", "1 \\text{ and } -2", True), ("1,-2", "x=1 \\text{ or } x=-2", True),
        ("1,-2", "1,2", False), ("3, 5, 7", "3, 5, 7, 9", False),
        ("\\{1\\pm\\sqrt{5},-2\\}", "\\{1-\\sqrt{5},-2\\}, \\{1+\\sqrt{5},-2\\}", False),
        ("1 \\pm \\sqrt{19}, 0", "0, 1+\\sqrt{19}, 1-\\sqrt{19}", True),
    ],
    "tuples": [
        ("(6,31,-1)", "(6, 31, -1)", True), ("(6,31,-1)", "(31,6,-1)", False),
        ("(-2,1)", "\\left(-2,1\\right)", True), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", True),
        ("(1,-16,-4,43)", "(1,-16,-4)", False), ("(15,-29)", "(15,-29.0)", True), ("(6,31,-1)", "6, 31, -1", True),
        ("(6,31,-1)", "-1, 6, 31", False), ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", True),
    ],
    "matrices": [
        ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", True),
        ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
         "\\begin{pmatrix} 0 & -1 \\\\ -1 & 0 \\end{pmatrix}", False),
        ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}", True),
        ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "(-2,-14,-7)", True),
        ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "(-2,-7,-14)", False),
        ("\\begin{pmatrix} 16/49 \\\\ 48/49 \\\\ 24/49 \\end{pmatrix}",
         "\\begin{pmatrix} \\frac{16}{49} \\\\ \\frac{48}{49} \\\\ \\frac{24}{49} \\end{pmatrix}", True),
        ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 & 3 \\end{pmatrix}", False),
    ],
    "plus_minus": [
        ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", True),
        ("3 \\pm 2 \\sqrt{2}", "3-2\\sqrt2, 3+2\\sqrt2", True), ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}", False),
        ("\\pm 2", "2, -2", True), ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ],
    "infinity": [
        ("\\infty", "\\infty", True), ("\\infty", "-\\infty", False), ("(5,\\infty)", "(5,\\infty]", False),
        ("\\infty", "oo", False), ("(-\\infty,\\infty)", "(-\\infty, \\infty)", True),
        ("(2,\\infty)", "(2, infinity)", True), ("(-\\infty,\\infty)", "\\mathbb{R}", True),
    ],
    "inequalities": [
        ("(2,\\infty)", "x > 2", True), ("(2,\\infty)", "x \\geq 2", False), ("[2,\\infty)", "x \\ge 2", True),
        ("(-\\infty, 0]", "x \\leq 0", True), ("(2,4)", "2 < x < 4", True), ("[2,4)", "2 \\le x < 4", True),
        ("(2,4)", "4 > x > 2", True), ("x > 2", "2 < x", True), ("x > 2", "x < 2", False),
        ("(-\\infty, 2) \\cup (3, \\infty)", "x < 2 \\text{ or } x > 3", True),
        ("(-\\infty, 2) \\cup (3, \\infty)", "x < 2 \\text{ or } x \\ge 3", False),
    ],
    "choices": [
        ("\\text{(C)}", "C", True), ("\\text{(C)}", "(C)", True), ("\\text{(C)}", "\\textbf{(C)}", True),
        ("\\text{(E)}", "(D)", False), ("\\text{(B)}", "b", True), ("\\text{(C)}", "A", False),
        ("\\text{(C)}", "\\textbf{(C)}\\ 12", True), ("\\text{(C)}", "\\textbf{(D)} 12", False),
    ],
    "complex": [
        ("6 - 5i", "6-5i", True), ("6-5i", "-5i+6", True), ("1+274i", "274i+1", True), ("1 - 12i", "1+12i", False),
        ("-2 + 7i", "-2+7i", True),
    ],
    "bases": [
        ("52_8", "52_8", True), ("52_8", "52", True), ("52_8", "42", False), ("4210_{5}", "4210_5", True),
        ("2516_8", "2516", True),
    ],
    "symbolic": [
        ("p - q", "-q + p", True), ("p - q", "q - p", False), ("x^3+3x-6", "3x + x^3 - 6", True),
        ("\\cot x", "\\frac{1}{\\tan x}", True), ("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9a}{20}", True),
        ("6r^2-4r-24", "2(3r^2-2r-12)", True), ("8n^2 + 4n + 1", "8n^2+4n", False),
        ("x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1", "\\frac{x^9-1}{x-1}", True), ("3R^2", "3r^2", False),
        ("-13x+3", "3-13x", True),
    ],
    "extraction": [
        ("18", "Adding them up gives $\\boxed{18}$.", True), ("18", "The answer is $18$.", True),
        ("18", "Natalia sold 48/2 = 24 clips.\n#### 18", True), ("18", "So, the final answer is 18.", True),
        ("18", "Reasoning...\nAnswer: 18", True), ("18", "first \\boxed{17}, then corrected: \\boxed{18}", True),
        ("18", "first \\boxed{18}, then corrected: \\boxed{17}", False),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", True), ("\\frac{1}{2}", "$\\fbox{0.5}$", True),
        ("5", "\\boxed{\\boxed{5}}", True), ("5", "The answer is 5 because 2+3=5.", True),
        ("18", "I cannot solve this.", False), ("18", "", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "... are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", True),
    ],
    "traps": [
        ("\\frac{1}{2004!}", "\\frac{1}{2006!}", False),  # equal after float rounding, not exactly
        ("\\frac{1}{2004!}", "\\frac{2005 \\cdot 2006}{2006!}", True),
        ("y = 2x + 1", "y = 2x + 5", False),  # parallel lines: same slope, different line
        ("y = 2x + 1", "4x - 2y + 2 = 0", True), ("[1,2)", "[1,2]", False), ("(1,2)", "(2,1)", False),
        ("\\frac{1}{3}", "0.333", False),  # rounded decimals are not the exact answer (see module doc)
        ("\\frac{1}{3}", "0.3333333333", True),  # 1/3 rounded to 10 places
        ("\\frac{1}{3}", "0.\\overline{3}", True),
        ("x^2", "|x|^2", True),  # symbols are real
        ("\\sqrt{x^2}", "x", False), ("|x|", "x", False),
        ("10^{30}+1", "10^{30}", False),  # no float collapse of big integers
        ("\\pi", "\\frac{355}{113}", False), ("\\sqrt{2}", "1.414", False), ("2", "\\frac{1}{0}", False),
        ("0", "0/0", False), ("1+2\\sqrt{3}", "1+2\\s)qrt{3}", False),
        ("\\frac{3}{2}", "(fra}c{3}{2}", False),  # garbage, same letters
        ("\\frac{1}{3}", "frac{1}{3}", False),
    ],
}

ROWS = [(cat, g, p, e) for cat, rows in CASES.items() for g, p, e in rows]


def test_table_is_large_and_balanced():
    assert len(ROWS) >= 150
    for cat, rows in CASES.items():
        if cat not in ("choices",):
            assert any(e for _, _, e in rows) and any(not e for _, _, e in rows), cat


@pytest.mark.parametrize("cat,gold,pred,expected", ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_case(cat, gold, pred, expected):
    assert verify(gold, pred) is expected
