"""Stage 5a: a normalised answer -> nested structure (sets, tuples, intervals, equations, leaves)."""
from __future__ import annotations

import re

from .normalize import _has_words, _text_key

_RX_VARIABLE = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?")
_CMP_OPS = re.compile(r"\\(?:leq?|geq?|lt|gt|leqslant|geqslant)(?![a-zA-Z])|<=|>=|<|>")


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
    ('leaf', latex, pct) ('eq', lhs, rhs) ('seq', open, close, items) ('set', items)
    ('pm', [plus, minus]) ('matrix', rows)."""
    s = s.strip()
    m = re.fullmatch(r"\\begin\{([pbBvV]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s, re.S)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        return ("matrix", [[_structure(c) for c in r.split("&")] for r in rows])
    choice = re.fullmatch(r"\(([A-Ea-e])\)(?:\s[^,()]*)?|([A-E])\)?", s, re.S)  # "(C) 12", not "(C), (D)"
    if choice:
        return ("choice", (choice.group(1) or choice.group(2)).upper())
    if _has_words(s):
        return ("text", _text_key(s))
    s = re.sub(r"(?<=[)\]])\s*U\s*(?=[(\[])", "\\\\cup ", s)
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("set", [_structure(p) for p in parts])
    group = _outer_group(s)
    if group and group[0] == "\\{":
        return ("set", _flatten_sets([_structure(p) for p in _split_top(group[1], ",") if p]))
    if group and len(_split_top(group[1], ",")) > 1:
        return ("seq", group[0], group[2], [_structure(p) for p in _split_top(group[1], ",")])
    parts = _split_top(s, ",")
    if len(parts) > 1:
        return ("set", _flatten_sets([_structure(p) for p in parts if p]))
    if _CMP_OPS.search(s):
        return _inequality(s)
    parts = _split_top(s, "=")
    if len(parts) == 2 and parts[0] and parts[1]:
        return ("eq", _structure(parts[0]), _structure(parts[1]))
    if len(parts) > 2:
        return _structure(parts[-1]) if _RX_VARIABLE.fullmatch(parts[0]) else ("leaf", s, False)
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


_OPS = {"<": "<", "\\lt": "<", ">": ">", "\\gt": ">", "<=": "<=", "\\le": "<=", "\\leq": "<=",
        "\\leqslant": "<=", ">=": ">=", "\\ge": ">=", "\\geq": ">=", "\\geqslant": ">="}
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def _inequality(s: str):
    """a < x < b, x >= a, ... on one variable -> interval ('seq'); else an opaque leaf."""
    pieces = [p.strip() for p in _CMP_OPS.split(s)]
    ops = [_OPS[o] for o in _CMP_OPS.findall(s)]
    is_var = _RX_VARIABLE.fullmatch
    if len(ops) == 1 and is_var(pieces[0]) and pieces[1]:  # x < a
        bound, op = pieces[1], ops[0]
    elif len(ops) == 1 and is_var(pieces[1]) and pieces[0]:  # a < x  is  x > a
        bound, op = pieces[0], _FLIP[ops[0]]
    elif len(ops) == 2 and is_var(pieces[1]) and ops[0][0] == ops[1][0]:  # a < x <= b, b > x > a
        lo, hi, op_lo, op_hi = pieces[0], pieces[2], ops[0], ops[1]
        if op_lo[0] == ">":
            lo, hi, op_lo, op_hi = hi, lo, _FLIP[op_hi], _FLIP[op_lo]
        return ("seq", "(" if op_lo == "<" else "[", ")" if op_hi == "<" else "]",
                [_structure(lo), _structure(hi)])
    else:
        return ("leaf", s, False)
    if op[0] == "<":
        return ("seq", "(", ")" if op == "<" else "]", [("leaf", "-\\infty", False), _structure(bound)])
    return ("seq", "(" if op == ">" else "[", ")", [_structure(bound), ("leaf", "\\infty", False)])
