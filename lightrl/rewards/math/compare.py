"""Stage 5b: compare two structures: exact arithmetic in-process, sympy (in a worker) for the rest."""
from __future__ import annotations

import random
import re
from fractions import Fraction

from .exact import _exact, numeric
from .extract import extract_answers
from .latex import _PY_NAMES, _to_py
from .limits import DECIMAL_DIGITS, EXACT_TOL, REL_TOL, _ParseError, _Reject
from .normalize import _guard_text, _normalize, _text_key, decimal_comma
from .structure import _RX_LABEL, _structure

class _Judge:
    """Compares two structures. Without sympy, undecidable leaves give None."""

    def __init__(self, use_sympy: bool, digits: int):
        self.use_sympy, self.digits = use_sympy, digits
        self._py: dict[str, tuple | None] = {}

    def py(self, latex: str):
        if latex not in self._py:
            try:
                self._py[latex] = _to_py(latex)
            except _ParseError:
                self._py[latex] = None
        return self._py[latex]

    def same(self, g, p):
        g = ("set", g[1], False) if g[0] == "pm" else g
        p = ("set", p[1], False) if p[0] == "pm" else p
        kg, kp = g[0], p[0]
        if kg == "choice":
            return (kp == "choice" and p[1] == g[1] or kp == "text" and p[1] == g[1].lower()
                    or kp == "leaf" and p[1].upper() == g[1])
        if kp == "choice":  # "(B)" against a non-choice gold: compare the bare letter
            return kg == "leaf" and g[1].replace(" ", "").upper() == p[1]
        if kg == "text":  # a word answer: case, spacing and punctuation do not matter
            return _text_key(_unparse(p)) == g[1]
        if kp == "text":  # words (or garbage like "\\s)qrt") against a math gold
            return False
        if kg == "set" and len(g[1]) == 1:
            return self.same(g[1][0], p)
        if kp == "set" and len(p[1]) == 1:
            return self.same(g, p[1][0])
        if kg == "eq" or kp == "eq":
            return self.equation(g, p)
        if kg == "set" or kp == "set":
            if kg == "set" and not g[2] and kp == "seq" and p[1] == "(" and p[2] == ")":
                p = ("set", p[3], False)  # gold is a bare unordered list: (a, b) lists the same answers
            if kp == "set" and kg == "seq" and g[1] == "(" and g[2] == ")":  # gold is ordered: so is a, b
                if p[2]:
                    return False  # but \\{a, b\\} is a set, never a tuple
                return len(g[3]) == len(p[1]) and self.all_of(self.same(a, b) for a, b in zip(g[3], p[1]))
            if g[0] != "set" and p[0] == "set" and g[0] not in ("seq", "matrix"):
                # one answer against several candidates (boxes, "3 or 4"): each must be it
                return self.set_equal([g], p[1])
            if p[0] != "set" and g[0] == "set" and p[0] not in ("seq", "matrix"):
                return self.set_equal(g[1], [p])  # a gold stating one value twice (15 39/40 or 639/40)
            if g[0] != "set" or p[0] != "set":
                return False
            return self.set_equal(g[1], p[1])
        if kg == "matrix" or kp == "matrix":
            return self.matrix(g, p)
        if kg == "seq" or kp == "seq":
            if kg != kp or g[1] != p[1] or g[2] != p[2] or len(g[3]) != len(p[3]):
                return False
            return self.all_of(self.same(a, b) for a, b in zip(g[3], p[3]))
        if kg == "base" or kp == "base":
            return self.base(g, p)
        return self.leaf(g, p)

    @staticmethod
    def all_of(results) -> bool | None:
        undecided = False
        for r in results:
            if r is False:
                return False
            undecided |= r is None
        return None if undecided else True

    def set_equal(self, gs: list, ps: list) -> bool | None:
        if len(gs) * len(ps) > 400:
            raise _Reject("sets too large")
        table = [[self.same(g, p) for p in ps] for g in gs]
        cols = list(zip(*table))
        if any(all(r is False for r in line) for line in table + cols):
            return False  # some member matches nothing: settled even when other cells are unknown
        if any(r is None for row in table for r in row):
            return None
        return all(True in row for row in table) and all(True in col for col in cols)

    def matrix(self, g, p):
        def rows(x):
            if x[0] == "matrix":
                return x[1]
            if x[0] == "seq" and x[1] == "(" and x[2] == ")":
                return [[e] for e in x[3]]
            return None

        rg, rp = rows(g), rows(p)
        if rg is None or rp is None:
            return False
        if len(rg) == 1 and len(rg[0]) > 1:  # a row vector also matches a tuple
            rg = [[e] for e in rg[0]]
        if len(rp) == 1 and len(rp[0]) > 1:
            rp = [[e] for e in rp[0]]
        if [len(r) for r in rg] != [len(r) for r in rp]:
            return False
        return self.all_of(self.same(a, b) for ra, rb in zip(rg, rp) for a, b in zip(ra, rb))

    def base(self, g, p):
        def value(x):
            if x[0] == "base":
                try:
                    return int(x[1], x[2]) if 2 <= x[2] <= 36 else None
                except ValueError:
                    return None
            return None

        if g[0] == "base" and p[0] == "base":
            return value(g) is not None and value(g) == value(p)
        if g[0] == "base":  # the gold names the base: the bare digits are that numeral
            return p[0] == "leaf" and p[1].replace(" ", "") == g[1]
        # a base-n prediction for a plain gold is its value: 101_2 is 5, not 101
        v = value(p)
        return v is not None and g[0] == "leaf" and self.leaf(g, ("leaf", str(v), False))

    def equation(self, g, p):
        """Labelled answers (x = 5, f(x) = 2x, AB = 4, (p, q) = (3, 2)) compare by value
        against an unlabelled answer and by label and value against a labelled one; other
        equations are the same when one is a nonzero multiple of the other."""
        def labelled(x):
            return x[0] == "eq" and x[1][0] == "leaf" and bool(_RX_LABEL.fullmatch(x[1][1].replace(" ", "")))

        def tuple_labelled(x):
            return (x[0] == "eq" and x[1][0] == "seq" and x[2][0] == "seq" and len(x[1][3]) == len(x[2][3])
                    and all(e[0] == "leaf" and _RX_LABEL.fullmatch(e[1].replace(" ", "")) for e in x[1][3]))

        def expand(x):  # (p, q) = (3, 2) -> p = 3, q = 2
            return ("set", [("eq", a, b) for a, b in zip(x[1][3], x[2][3])], False) if tuple_labelled(x) else x

        def eqs(x):
            return tuple_labelled(x) or x[0] == "set" and all(e[0] == "eq" for e in x[1])

        if (tuple_labelled(g) or tuple_labelled(p)) and eqs(g) and eqs(p):
            return self.same(expand(g), expand(p))
        if g[0] == "eq" and p[0] != "eq":
            return self.same(g[2], p) if labelled(g) or tuple_labelled(g) else False
        if p[0] == "eq" and g[0] != "eq":
            return self.same(g, p[2]) if labelled(p) or tuple_labelled(p) else False
        if labelled(g) and labelled(p):
            if g[1][1].replace(" ", "") == p[1][1].replace(" ", ""):
                return self.same(g[2], p[2])
            if not (_has_letters(g[2]) or _has_letters(p[2])):
                return False  # x = 5 is not y = 5
        if not all(x[0] == "leaf" for x in (g[1], g[2], p[1], p[2])):
            return False
        if not self.use_sympy:
            return None
        return _sympy_proportional(self, g, p)

    def leaf(self, g, p):
        a, b = g[1].replace(" ", ""), p[1].replace(" ", "")
        if a == b and g[2] == p[2]:
            return True
        pg, pp = self.py(g[1]), self.py(p[1])
        if pg is None or pp is None:
            return False
        inexact = pg[2] or pp[2]
        lit_g, lit_p = _decimal_literal(g[1]), _decimal_literal(p[1])
        va, vb = _exact(pg[1].body, pg[0]), _exact(pp[1].body, pp[0])
        if va is not None and vb is not None:
            return any(_close(x, y, inexact, lx, ly, self.digits)
                       for x, y, lx, ly in _pct_variants(va, vb, g[2], p[2], lit_g, lit_p))
        if not inexact:
            verdict = _numeric_same(pg, pp, g[2], p[2])
            if verdict is not None:
                return verdict
        if not self.use_sympy:
            return None
        return _sympy_equal(pg[0], pp[0], inexact, (g[2], p[2]), (lit_g, lit_p), self.digits)


def _numeric_same(pg, pp, pct_g: bool, pct_p: bool) -> bool | None:
    """Two symbol-free constants compared at 60 digits in-process, as a sympy worker would:
    equal within EXACT_TOL (1e-40 relative), different beyond 1e-20, else None (sympy
    decides). None too when an intermediate is 10^15 times the result, since 15 of the
    60 digits may have cancelled (10^{50} + \\sqrt2 - 10^{50})."""
    a, b = numeric(pg[1].body, pg[0]), numeric(pp[1].body, pp[0])
    if a is None or b is None:
        return None
    verdicts = set()
    for x, y, _, _ in _pct_variants(a[0], b[0], pct_g, pct_p, None, None):
        scale = max(abs(x), abs(y))
        if scale == 0:
            verdicts.add(True)
            continue
        if max(a[1], b[1]) > 1e15 * scale:
            return None
        diff = abs(x - y)
        verdicts.add(True if diff <= EXACT_TOL * scale else False if diff > 1e-20 * scale else None)
    return True if True in verdicts else (False if verdicts == {False} else None)


_RX_DECIMAL = re.compile(r"[+-]?(\d*)\.(\d*)(?:\s*(?:[eE]|\\times\s*10\s*\^|\\cdot\s*10\s*\^)\s*\{?\s*([+-]?\d+)\s*\}?)?")


def _decimal_literal(latex: str) -> tuple[int, int] | None:
    """(decimal places, significant digits) of a plain number written with a decimal point,
    else None: '0.333' -> (3, 3), '-2.50' -> (2, 3), '1.5e3' and '1.5\\times 10^3' -> (-2, 2)."""
    m = _RX_DECIMAL.fullmatch(latex.strip())
    if m is None or not (m.group(1) or m.group(2)):
        return None
    digits = (m.group(1) + m.group(2)).lstrip("0")
    return len(m.group(2)) - int(m.group(3) or 0), max(len(digits), 1)


def _pct_variants(a, b, pct_a: bool, pct_b: bool, lit_a, lit_b):
    """(a, b, lit_a, lit_b) readings of a pair under the percent rule: a gold 25% matches
    25%, 25 and 0.25; a prediction 25% against a gold without % is only 0.25 (so 5% != 5).
    Dividing by 100 moves a decimal literal's places by two."""
    def shifted(lit):
        return None if lit is None else (lit[0] + 2, lit[1])

    if pct_b and not pct_a:
        yield a, b / 100, lit_a, shifted(lit_b)
        return
    yield a, b, lit_a, lit_b
    if pct_a and not pct_b:
        yield a / 100, b, shifted(lit_a), lit_b


def _rounds_to(exact, decimal, lit: tuple[int, int], digits: int) -> bool:
    """The decimal rule: a number written with a decimal point equals a non-integer exact
    value when it is that value rounded to the places written and has at least `digits`
    significant digits (0.333333 == 1/3 at digits=6, 0.333 != 1/3). Works on Fractions
    and on 60-digit sympy Floats alike."""
    places, sig = lit
    return sig >= digits and abs(exact - decimal) * 2 * Fraction(10) ** places <= 1


def _close(a: Fraction, b: Fraction, inexact: bool, lit_a, lit_b, digits: int) -> bool:
    """Exact values compare exactly; two decimals compare exactly; a decimal against a
    non-integer exact value follows _rounds_to (integers must be met exactly: 1.23456789e11
    != 123456789012); a decimal inside a larger expression (1.5\\pi) is within REL_TOL."""
    if a == b or not inexact:
        return a == b
    if lit_a is not None and lit_b is not None:
        return False
    if lit_a is not None or lit_b is not None:
        exact, decimal, lit = (b, a, lit_a) if lit_a is not None else (a, b, lit_b)
        return exact.denominator != 1 and _rounds_to(exact, decimal, lit, digits)
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _has_letters(x) -> bool:
    return bool(re.search(r"[a-zA-Z]", _unparse(x)))


def _unparse(x) -> str:
    kind = x[0]
    if kind in ("text", "choice", "leaf"):
        return x[1]
    if kind == "base":
        return f"{x[1]}_{x[2]}"
    if kind == "eq":
        return f"{_unparse(x[1])}={_unparse(x[2])}"
    if kind == "seq":
        return x[1] + ",".join(_unparse(e) for e in x[3]) + x[2]
    if kind == "set":
        return ",".join(_unparse(e) for e in x[1])
    return ";".join(",".join(_unparse(e) for e in r) for r in x[1])


_RX_MATH_SPAN = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_RX_PROSE = re.compile(r"(?<![\\\w.])[A-Za-z]{2,}[,:;]?\s+[A-Za-z]{2,}\b")  # two words in a row


def _is_solution(text: str) -> bool:
    """A box, a GSM8K '####' line, or two prose words in a row outside math spans and LaTeX commands: a worked
    solution or a sentence, not a bare answer such as 'np.arcsin(10/13)' or '\\text{Evelyn}'."""
    if re.search(r"\\boxed|\\fbox|####", text):
        return True
    return bool(_RX_PROSE.search(_RX_MATH_SPAN.sub(" ", text)))


def _answer_of(text: str) -> str:
    """A gold answer: a whole worked solution or a sentence gives its final answer the way a
    prediction does (several final boxes joined by commas); a bare answer stays as it is (so
    verify(x, x) holds for any bare x the extractor would cut short)."""
    parts = extract_answers(text) if _is_solution(text) else []
    return ", ".join(parts) if parts else text.strip()


def _judge(gold_ans: str, pred_ans: str, use_sympy: bool, digits: int = DECIMAL_DIGITS) -> bool | None:
    """True/False, or None when only sympy can tell (and use_sympy is False)."""
    _guard_text(gold_ans)
    _guard_text(pred_ans)
    g, p = _normalize(gold_ans), _normalize(pred_ans)
    if not re.search(r"[0-9A-Za-z]", g) or not re.search(r"[0-9A-Za-z]", p):
        return False  # nothing left to compare ("and", "$$,"): not an answer, even if both agree
    if g == p:
        return True
    _guard_text(g)
    _guard_text(p)
    gs = _structure(g)
    if gs[0] == "leaf" and decimal_comma(p):  # one number asked for: 2,74 is 2.74, not a list
        p = decimal_comma(p)
    return _Judge(use_sympy, digits).same(gs, _structure(p))


# ----------------------------------------------------------------------------- sympy (worker side)

_SYMPY = {}


def _sympy_ns():
    if not _SYMPY:
        import sympy
        from sympy.parsing.sympy_parser import auto_number, parse_expr, rationalize

        ns = {name: getattr(sympy, name) for name in _PY_NAMES if hasattr(sympy, name)}
        ns.update(Integer=sympy.Integer, Float=sympy.Float, Rational=sympy.Rational)
        _SYMPY.update(sympy=sympy, parse_expr=parse_expr, transformations=(auto_number, rationalize), ns=ns)
    return _SYMPY


def _sympify(py: str):
    sp = _sympy_ns()
    sympy = sp["sympy"]
    names = set(re.findall(r"\bs_\w+", py))
    local = {n: sympy.Symbol(n[2:], real=True) for n in names}
    return sp["parse_expr"](py, local_dict=local, global_dict=dict(sp["ns"]),
                            transformations=sp["transformations"], evaluate=True)


def _numbers_close(a, b, inexact: bool, lit_a=None, lit_b=None, digits: int = DECIMAL_DIGITS) -> bool:
    """a, b: sympy numbers without free symbols; lit_*: _decimal_literal of each side."""
    sympy = _sympy_ns()["sympy"]
    if a == b:
        return True
    if a.is_Rational and b.is_Rational:
        return _close(Fraction(int(a.p), int(a.q)), Fraction(int(b.p), int(b.q)), inexact, lit_a, lit_b, digits)
    bad = (sympy.nan, sympy.zoo, sympy.oo, -sympy.oo)
    if a in bad or b in bad or a.has(sympy.zoo, sympy.nan) or b.has(sympy.zoo, sympy.nan):
        return False
    av, bv = sympy.N(a, 60), sympy.N(b, 60)
    if not (av.is_number and bv.is_number) or av.has(sympy.zoo, sympy.nan) or bv.has(sympy.zoo, sympy.nan):
        return False
    if inexact and (lit_a is None) != (lit_b is None):  # a decimal against an irrational: the decimal rule
        exact, decimal, lit = (bv, av, lit_a) if lit_a is not None else (av, bv, lit_b)
        return bool(_rounds_to(Fraction(str(exact)), Fraction(str(decimal)), lit, digits))
    if lit_a is not None and lit_b is not None:
        return False
    diff = sympy.Abs(av - bv)
    scale = sympy.Max(sympy.Abs(av), sympy.Abs(bv))
    tol = float(REL_TOL) if inexact else EXACT_TOL
    return bool(diff <= tol * scale + sympy.Float("1e-50", 60))


def _points(symbols, n: int):
    rng = random.Random(20240611)
    sympy = _sympy_ns()["sympy"]
    syms = sorted(symbols, key=str)
    for _ in range(n):
        yield {s: sympy.Rational(rng.choice((-1, 1)) * rng.randint(1, 60), rng.randint(1, 9)) for s in syms}


def _defined(v) -> bool:
    sympy = _sympy_ns()["sympy"]
    return v.is_number and not v.has(sympy.zoo, sympy.nan, sympy.oo)


def _sympy_equal(py_a: str, py_b: str, inexact: bool, pct: tuple[bool, bool], lits: tuple, digits: int) -> bool:
    a, b = _sympify(py_a), _sympify(py_b)
    for x, y, lx, ly in _pct_variants(a, b, *pct, *lits):
        if x == y:
            return True
        symbols = x.free_symbols | y.free_symbols
        if not symbols:
            if _numbers_close(x, y, inexact, lx, ly, digits):
                return True
            continue
        checked, ok = 0, True
        for pt in _points(symbols, 12):
            vx, vy = x.xreplace(pt), y.xreplace(pt)
            if not (_defined(vx) and _defined(vy)):
                continue
            if not _numbers_close(vx, vy, inexact):
                ok = False
                break
            checked += 1
            if checked == 5:
                break
        if ok and checked >= 3:
            return True
    return False


def _sympy_proportional(judge: _Judge, g, p) -> bool:
    """Equations g: L1 = R1 and p: L2 = R2 are the same when L1-R1 = c (L2-R2), c != 0."""
    sides = [judge.py(x[1]) for x in (g[1], g[2], p[1], p[2])]
    if any(s is None for s in sides):
        return False
    inexact = any(s[2] for s in sides)
    l1, r1, l2, r2 = (_sympify(s[0]) for s in sides)
    d1, d2 = l1 - r1, l2 - r2
    symbols = d1.free_symbols | d2.free_symbols
    if not symbols:
        return False
    ratio, checked = None, 0
    for pt in _points(symbols, 12):
        v1, v2 = d1.xreplace(pt), d2.xreplace(pt)
        if not (_defined(v1) and _defined(v2)):
            continue
        if v2 == 0 or v1 == 0:
            if v1 == 0 and v2 == 0:
                continue
            return False
        r = v1 / v2
        if ratio is None:
            ratio = r
        elif not _numbers_close(r, ratio, inexact):
            return False
        checked += 1
        if checked == 5:
            break
    return checked >= 3
