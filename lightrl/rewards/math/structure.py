"""Stage 5a: a normalised answer -> nested structure (sets, tuples, intervals, equations, leaves)."""
from __future__ import annotations

import ast
import re
from fractions import Fraction

from .exact import _exact
from .latex import _to_py
from .limits import _ParseError, _Reject
from .normalize import _has_words, _text_key

_RX_VARIABLE = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?")
# what may name a value: x, x_1, f(x), g(x, y), AB, ABC, \angle ABC, m\angle A
_RX_LABEL = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?(?:\s*\(\s*[a-z](?:\s*,\s*[a-z])*\s*\))?|[A-Z]{2,3}"
                       r"|(?:m\s*)?\\angle\s*[A-Z]{1,3}")
_CMP_OPS = re.compile(r"\\(?:le|ge|ne)(?![a-zA-Z])|<|>")  # normalize spelt every relation this way
_MATRIX = re.compile(r"\\begin\{([pbB]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}", re.S)


def _split_top(s: str, sep: str) -> list[str]:
    """Split on `sep` (',' '=' or '\\cup') outside any brackets; \\{ \\} count as brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif (depth == 0 and s.startswith(sep, i)
              and not (sep[0] == "\\" and s[i + len(sep):i + len(sep) + 1].isalpha())):  # \cup, not \cupfoo
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _outer_group(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when s is one bracket group from its first to its last char."""
    if s.startswith("\\{") and s.endswith("\\}"):
        open_, inner, close = "\\{", s[2:-2], "\\}"
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        open_, inner, close = s[0], s[1:-1], s[-1]
    else:
        return None
    depth = 0
    i = 0
    while i < len(inner):  # the opening bracket must not close before the end
        c = inner[i]
        if c == "\\" and inner[i + 1:i + 2] in ("{", "}"):
            depth += 1 if inner[i + 1] == "{" else -1
            i += 2
            if depth < 0:
                return None
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return None
        i += 1
    return (open_, inner, close) if depth == 0 else None


def _structure(s: str):
    """Normalised answer -> nested tuples: ('text', key) ('choice', L) ('base', digits, b)
    ('leaf', latex, pct) ('eq', lhs, rhs) ('seq', open, close, items) ('set', items, braced)
    ('pm', [plus, minus]) ('matrix', rows). `braced` marks a \\{...\\} set: unlike a bare
    list it never equals a tuple."""
    s = s.strip()
    m = re.fullmatch(r"[\[(]\s*(\\begin\{array\}.*\\end\{array\})\s*[\])]", s, re.S)
    if m:  # \left[\begin{array}{cc}..\end{array}\right] is a matrix written with its brackets
        s = m.group(1)
    m = _MATRIX.fullmatch(s)
    if m and "\\begin" not in m.group(2):
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        return ("matrix", [[_structure(c) for c in r.split("&")] for r in rows])
    if len(_MATRIX.findall(s)) > 1:
        return _matrix_arithmetic(s)
    choice = re.fullmatch(r"\(([A-Ea-e])\)(?:\s[^,()]*)?|([A-E])\)?", s, re.S)  # "(C) 12", not "(C), (D)"
    if choice:
        return ("choice", (choice.group(1) or choice.group(2)).upper())
    if _has_words(s):
        return ("text", _text_key(s))
    s = re.sub(r"(?<=[)\]])\s*U\s*(?=[(\[])", "\\\\cup ", s)
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("set", [_structure(p) for p in parts], False)
    group = _outer_group(s)
    if group and group[0] == "\\{":
        return ("set", _flatten_sets([_structure(p) for p in _split_top(group[1], ",") if p]), True)
    if group and len(_split_top(group[1], ",")) > 1:
        return ("seq", group[0], group[2], [_structure(p) for p in _split_top(group[1], ",")])
    parts = _split_top(s, ",")
    if len(parts) > 1:
        return ("set", _flatten_sets([_structure(p) for p in parts if p]), False)
    if _CMP_OPS.search(s):
        return _inequality(s)
    parts = _split_top(s, "=")
    if len(parts) == 2 and parts[0] and parts[1]:
        return ("eq", _structure(parts[0]), _structure(parts[1]))
    if len(parts) > 2:
        return _structure(parts[-1]) if _RX_LABEL.fullmatch(parts[0]) else ("leaf", s, False)
    pm = re.search(r"\\(?:pm|mp)(?![a-zA-Z])", s)
    if pm:
        plus = s[:pm.start()] + "+" + s[pm.end():]
        minus = s[:pm.start()] + "-" + s[pm.end():]
        return ("pm", _flatten_sets([_structure(plus), _structure(minus)]))
    m = re.fullmatch(r"(\d+)\s*_\s*\{?\s*(\d+)\s*\}?", s)
    if m:
        return ("base", m.group(1), int(m.group(2)))
    pct = s.endswith("%")
    if pct:
        s = s[:-1].strip()
    if s.startswith("+"):
        s = s[1:].strip()
    return ("leaf", s, pct)


def _flatten_sets(items: list) -> list:
    """Splice plus-minus pairs into the enclosing list: 1\\pm\\sqrt5, -2 has three members."""
    out = []
    for it in items:
        out.extend(it[1] if it[0] == "pm" else [it])
    return out


_OPS = {"<": "<", ">": ">", "\\le": "<=", "\\ge": ">=", "\\ne": "!="}
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}


def _linear(lhs: str, rhs: str) -> tuple[Fraction, Fraction] | None:
    """(k, m) with lhs - rhs = k*v + m, k != 0, when lhs - rhs is linear in one variable v
    with rational coefficients (2x + 1 > 7 - x: (3, -6)); else None."""
    try:
        py, _, _ = _to_py(f"({lhs})-({rhs})")
    except (_ParseError, _Reject, RecursionError):
        return None
    names = set(re.findall(r"\bs_\w+", py))
    if len(names) != 1:
        return None
    name, values = names.pop(), {}
    for x in (0, 1, -7, 3):  # linear iff all four points lie on one line; exact, so no tolerance
        src = re.sub(r"\b%s\b" % name, f"({x})", py)
        try:
            v = _exact(ast.parse(src, mode="eval").body, src)
        except (_Reject, SyntaxError, RecursionError, ZeroDivisionError, ValueError):
            return None
        if v is None:
            return None
        values[x] = v
    m, k = values[0], values[1] - values[0]
    if k == 0 or values[-7] != m - 7 * k or values[3] != m + 3 * k:  # |x| and x^2 fail at -7
        return None
    return k, m


def _inequality(s: str):
    """a < x < b, x >= a, 2x + 1 > 7 - x, x \\ne 3, ... on one variable -> interval ('seq')
    or union ('set'); else an opaque leaf."""
    pieces = [p.strip() for p in _CMP_OPS.split(s)]
    ops = [_OPS[o] for o in _CMP_OPS.findall(s)]
    is_var = _RX_VARIABLE.fullmatch
    if len(ops) == 1 and is_var(pieces[0]) and pieces[1]:  # x < a
        bound, op = pieces[1], ops[0]
    elif len(ops) == 1 and is_var(pieces[1]) and pieces[0]:  # a < x  is  x > a
        bound, op = pieces[0], _FLIP[ops[0]]
    elif len(ops) == 2 and is_var(pieces[1]) and ops[0][0] == ops[1][0] and "!" not in ops[0]:  # a < x <= b
        lo, hi, op_lo, op_hi = pieces[0], pieces[2], ops[0], ops[1]
        if op_lo[0] == ">":
            lo, hi, op_lo, op_hi = hi, lo, _FLIP[op_hi], _FLIP[op_lo]
        return ("seq", "(" if op_lo == "<" else "[", ")" if op_hi == "<" else "]",
                [_structure(lo), _structure(hi)])
    elif len(ops) == 1 and pieces[0] and pieces[1] and (lin := _linear(pieces[0], pieces[1])):
        k, m = lin  # k x + m op 0  is  x op -m/k, the relation flipped when k < 0
        bound, op = str(-m / k), ops[0] if k > 0 else _FLIP[ops[0]]
    elif len(ops) == 1 and (absolute := _abs_linear(pieces[0], pieces[1], ops[0])):
        return absolute
    else:
        return ("leaf", s, False)
    if op == "!=":
        return ("set", [("seq", "(", ")", [("leaf", "-\\infty", False), _structure(bound)]),
                        ("seq", "(", ")", [_structure(bound), ("leaf", "\\infty", False)])], False)
    if op[0] == "<":
        return ("seq", "(", ")" if op == "<" else "]", [("leaf", "-\\infty", False), _structure(bound)])
    return ("seq", "(" if op == ">" else "[", ")", [_structure(bound), ("leaf", "\\infty", False)])


def _abs_linear(lhs: str, rhs: str, op: str):
    """|k x + m| op c, c > 0 rational -> the interval (< and <=) or the union of two rays
    (> and >=) it defines; None for anything else."""
    if rhs.startswith("|") and not lhs.startswith("|"):
        lhs, rhs, op = rhs, lhs, _FLIP[op]
    inner = re.fullmatch(r"\|([^|]+)\|", lhs)
    if inner is None or op == "!=":
        return None
    try:
        lin, c = _linear(inner.group(1), "0"), _entry(rhs)
    except (_ParseError, _Reject, RecursionError, ValueError):
        return None
    if lin is None or c is None or c <= 0:
        return None
    k, m = lin
    lo, hi = sorted(((-c - m) / k, (c - m) / k))
    lo, hi = ("leaf", str(lo), False), ("leaf", str(hi), False)
    closed = op in ("<=", ">=")
    if op[0] == "<":
        return ("seq", "[" if closed else "(", "]" if closed else ")", [lo, hi])
    return ("set", [("seq", "(", "]" if closed else ")", [("leaf", "-\\infty", False), lo]),
                    ("seq", "[" if closed else "(", ")", [hi, ("leaf", "\\infty", False)])], False)


def _matrix_arithmetic(s: str):
    """A sum, difference or product of literal matrices with rational entries -> its result
    ('matrix'); anything else -> an opaque leaf."""
    mats, ops, pos = [], [], 0
    for m in _MATRIX.finditer(s):
        op = s[pos:m.start()].strip()
        if mats or op:
            ops.append({"+": "+", "-": "-", "": "*", "\\cdot": "*", "\\times": "*"}.get(op))
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        try:
            mats.append([[_entry(c) for c in r.split("&")] for r in rows])
        except (_ParseError, _Reject, RecursionError, ValueError):
            return ("leaf", s, False)
        pos = m.end()
    if s[pos:].strip() or None in ops or len(ops) != len(mats) - 1 or None in (e for M in mats for r in M for e in r):
        return ("leaf", s, False)
    out = mats[0]
    for op, b in zip(ops, mats[1:]):
        if op == "*":
            if len(out[0]) != len(b) or any(len(r) != len(b[0]) for r in b):
                return ("leaf", s, False)
            out = [[sum(r[k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for r in out]
        else:
            if [len(r) for r in out] != [len(r) for r in b]:
                return ("leaf", s, False)
            sign = 1 if op == "+" else -1
            out = [[x + sign * y for x, y in zip(ra, rb)] for ra, rb in zip(out, b)]
    return ("matrix", [[("leaf", str(x), False) for x in r] for r in out])


def _entry(latex: str) -> Fraction | None:
    """Exact rational value of one matrix entry, None when it is not rational."""
    py, tree, _ = _to_py(latex.strip())
    return _exact(tree.body, py)
