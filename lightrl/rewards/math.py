"""Verifiable math rewards: answer extraction and a sympy-backed equivalence check.

Public API
    extract_answer(text) -> str | None
    verify(gold, prediction, timeout=2.0) -> bool
    score_batch(golds, predictions, timeout=2.0, workers=None) -> list[float]
    get_stats(reset=False) -> dict[str, int]
    clear_cache(), last_boxed(text) -> str | None (used by rules.format_reward)

How a pair is judged
    1. The answer is cut out of the prediction (last \\boxed{}/\\fbox{}, GSM8K "####",
       "the (final) answer is", a final "Answer:" line); a prediction without any of
       these is taken as a bare answer.
    2. Cheap guards: answers over MAX_ANSWER_CHARS, nesting over MAX_DEPTH, integer
       literals over MAX_LITERAL_DIGITS, powers/factorials whose result would exceed
       MAX_RESULT_DIGITS score 0 at once.
    3. Both answers are normalised (\\dfrac, \\left, spacing, \\text units, degrees,
       \\$, thousands separators) and split into structure: text, multiple-choice
       letter, base-n number, equation, tuple/interval (order and brackets matter),
       set or comma list (order-free), union of intervals, matrix, plus-minus pairs.
    4. Leaves are converted from LaTeX to Python syntax by a small recursive-descent
       parser here (no antlr) and, in this process, evaluated exactly with Fractions.
    5. Only what that cannot settle (radicals, pi, symbols, equations) goes to sympy
       (`parse_expr` with the transformations (auto_number, rationalize) only), in
       a pool of worker processes started with subprocess. A worker that passes the
       deadline is killed and replaced; no signals are used, so this works from any
       thread and inside daemon worker processes (it never uses multiprocessing).
       Workers start once and are reused, exit with the process (atexit, and a
       watchdog if the parent dies) and run under a 3 GiB address-space limit.
       POSIX only (poll on pipes).

Numbers: exact unless written with a decimal point.
    Integers, fractions, radicals, pi, ... are exact; two rationals must be equal
    exactly (so 1/2004! != 1/2006!), two exact irrationals must agree to 40
    significant digits (60-digit evaluation). A value written with a decimal point is
    a rounded number and matches within relative tolerance REL_TOL = 1e-9. Hence
    0.333 != 1/3 (MATH asks for exact answers; a three-digit rounding is a
    different answer), 0.5 == 1/2, 0.3333333333 (10 digits) == 1/3.
    Symbols are real: x^2 == |x|^2, but sqrt(x^2) != x. Expressions with symbols
    are compared at deterministic random rational points (negative ones included).
    Percentages: 25\\% matches 25 and 0.25. Degrees are dropped (90^\\circ == 90).
    Base-n numbers: 52_8 matches 52_8, 101010_2 (same value) and the bare digits 52.

Metrics: get_stats() returns cumulative counters for this process
    n_checked, n_cache_hits, n_no_answer, n_guard_rejects, n_sympy (pairs sent to a
    worker), n_timeouts (pairs that hit the deadline; they score 0), n_errors
    (exceptions inside a worker; score 0), n_worker_restarts. The training loop
    calls get_stats(reset=True) once per step and logs e.g. n_timeouts/n_checked.
"""
from __future__ import annotations

import ast
import atexit
import json
import math
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

MAX_ANSWER_CHARS = 1000
MAX_DEPTH = 30
MAX_LITERAL_DIGITS = 200
MAX_RESULT_DIGITS = 10_000
MAX_FACTORIAL = 3_000
REL_TOL = Fraction(1, 10**9)
EXACT_TOL = 1e-40
WORKER_STARTUP_TIMEOUT = 60.0
CACHE_SIZE = 50_000  # (gold, answer) pairs; answers are capped at MAX_ANSWER_CHARS
_TAIL = 4000  # answer phrases ("The answer is", "####") are looked for in the last _TAIL chars


class _Reject(Exception):
    """A guard fired: the pair scores 0 without further work."""


class _ParseError(Exception):
    """The answer is not an expression this parser understands."""


# ----------------------------------------------------------------------------- extraction


_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.S)


def _brace_content(text: str, start: int, limit: int) -> str | None:
    """Content of the {...} group opening at text[start]; None if it does not close
    within `limit` chars (truncated output, or longer than any answer we accept)."""
    depth = 0
    end = min(len(text), start + limit)
    for m in _BRACE_TOKENS.finditer(text, start, end):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:m.start()]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} or \\fbox{...} (also `\\boxed 5`)."""
    pos = len(text)
    for _ in range(5):  # bounded: a string of unclosed boxes must not cost O(n^2)
        i = max(text.rfind("\\boxed", 0, pos), text.rfind("\\fbox", 0, pos))
        if i < 0:
            return None
        j = i + (6 if text.startswith("\\boxed", i) else 5)
        k = j
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            content = _brace_content(text, k, 4 * MAX_ANSWER_CHARS)
            if content is not None:
                return content.strip()
        elif k > j:
            m = re.match(r"[^\s$]+", text[k:k + MAX_ANSWER_CHARS])
            if m:
                return m.group()
        pos = i
    return None


_ANSWER_IS = re.compile(r"(?:final answer|the answer)(?: to [^\n]*?)?\s*(?:is|:|=)\s*:?\s*(.+)", re.I)
_ANSWER_LINE = re.compile(r"^[\s*#>]*answer\s*[:：]\**\s*(.+)$", re.I | re.M)


def _clean_phrase(ans: str) -> str:
    """'$\\frac12$ because ...' -> '\\frac12'; 'x = 5.' -> 'x = 5'."""
    ans = ans.strip().strip("*").strip()
    m = re.search(r"\$\$?(.+?)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", ans)
    if m:
        return next(g for g in m.groups() if g is not None).strip()
    ans = re.split(r"\.(?:\s|$)|\s(?:because|since|as|which|so|where|for)\b", ans, maxsplit=1)[0]
    return ans.strip().rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer in a response, or None.

    Order: last \\boxed{}/\\fbox{} anywhere; else, in the tail of the text, the last
    GSM8K `#### x`; else the last "the (final) answer is x" / "Answer: x".
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tail = text[-_TAIL:]
    i = tail.rfind("####")
    if i >= 0:
        ans = tail[i + 4:].strip().split("\n", 1)[0].strip()
        return ans or None
    best = None
    for rx in (_ANSWER_IS, _ANSWER_LINE):
        for m in rx.finditer(tail):
            if best is None or m.start() > best.start():
                best = m
    if best is not None:
        ans = _clean_phrase(best.group(1))
        return ans or None
    return None


# ----------------------------------------------------------------------------- normalisation

_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "/", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt", "≤": "\\le ", "≥": "\\ge ", "±": "\\pm ", "∪": "\\cup ", "°": "", "％": "%",
            "²": "^2", "³": "^3"}
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|textup|mbox|hbox|mathrm|mathbf|mathit|"
                       r"mathsf|operatorname)\s*\{")
_UNIT_WORDS = (r"units?|cm|mm|km|meters?|metres?|centimeters?|kilometers?|inches|inch|feet|foot|ft|yards?|"
               r"miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|dollars?|cents?|"
               r"degrees?|radians?|mph|kg|grams?|pounds?|lbs?|ounces?|oz|liters?|litres?|gallons?|"
               r"people|students|cups?|pieces?|points?|ways|sq|square|cubic")
_TRAILING_UNITS = re.compile(r"(?<=[\d}).\s])(?:\s*(?:%s)\b\.?(?:\^\{?[23]\}?)?)+\s*$" % _UNIT_WORDS, re.I)
_FUNC_WORDS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan",
               "sinh", "cosh", "tanh", "log", "ln", "exp", "pi", "infty"}


def _replace_text_groups(s: str) -> tuple[str, str]:
    """(s with \\text{..} groups and a following ^2 removed, s with them inlined)."""
    without, inlined, pos = [], [], 0
    while True:
        m = _TEXT_CMD.search(s, pos)
        if not m:
            break
        content = _brace_content(s, m.end() - 1, len(s))
        if content is None:
            raise _ParseError("unbalanced \\text{")
        end = m.end() + len(content) + 1
        without.append(s[pos:m.start()])
        inlined.append(s[pos:m.start()])
        word = content.strip()
        if word.lower() in ("or", "and", ","):
            without.append(",")
            inlined.append(",")
        elif re.fullmatch(r"\([A-Ea-e]\)", word):  # \textbf{(C)} 12: the choice letter is the answer
            without.append(word + " ")
            inlined.append(word + " ")
        else:
            inlined.append(" " + content + " ")
            unit_pow = re.match(r"\s*\^\s*\{?\s*[23]\s*\}?", s[end:])
            if unit_pow and re.search(r"[A-Za-z]", word):
                end += unit_pow.end()
        pos = end
    without.append(s[pos:])
    inlined.append(s[pos:])
    return "".join(without), "".join(inlined)


def _normalize(s: str) -> str:
    """LaTeX/plain answer -> canonical LaTeX-ish string (spaces kept as separators)."""
    for _ in range(3):  # \boxed{\boxed{5}}
        inner = last_boxed(s) if ("\\boxed" in s or "\\fbox" in s) else None
        if inner is None:
            break
        s = inner
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    s = re.sub(r"\{([^{}]*)\\over(?![a-zA-Z])([^{}]*)\}", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\(?:left|right)\s*\.", "", s)
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])", "", s)
    s = s.replace("\\\\", "\0")  # protect matrix row breaks from the spacing rules below
    s = re.sub(r",\\!\s*", ",", s).replace("{,}", ",")
    s = re.sub(r"\\[!]", "", s)
    s = re.sub(r"\\[,;: ]|\\q?quad(?![a-zA-Z])|~", " ", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = re.sub(r"\\(?:\(|\)|\[|\])", "", s)
    s = s.replace("\0", "\\\\")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", "", s)
    s = re.sub(r"\\(?:inf|infinity)(?![a-zA-Z])|(?<![\\a-zA-Z])(?:infinity|infty|inf)(?![a-zA-Z])", "\\\\infty", s)
    s = re.sub(r"^\s*\\mathbb\s*\{?R\}?\s*$", "(-\\\\infty,\\\\infty)", s)
    without, inlined = _replace_text_groups(s)
    s = without if re.search(r"[0-9A-Za-z\\]", without) else inlined
    s = re.sub(r"\bpercent\b", "%", s)
    s = re.sub(r"(?i)^\s*(?:[a-z]\s*\\in|[a-z]\s*∈)\s*", "", s)
    s = re.sub(r"(?i)\b(?:or|and)\b", ",", s)
    s = _TRAILING_UNITS.sub("", s)
    s = s.strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"\s+", " ", s)
    while len(s) >= 2 and s[0] == "{" and _brace_content(s, 0, len(s)) == s[1:-1]:
        s = s[1:-1].strip()
    return s


def _has_words(s: str) -> bool:
    for w in re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}", s):
        if w.lower() not in _FUNC_WORDS:
            return True
    return False


def _text_key(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _guard_text(s: str) -> None:
    if len(s) > MAX_ANSWER_CHARS:
        raise _Reject("answer too long")
    depth = best = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            best = max(best, depth)
        elif ch in ")}]":
            depth -= 1
    if best > MAX_DEPTH:
        raise _Reject("nesting too deep")
    if re.search(r"\d{%d}" % (MAX_LITERAL_DIGITS + 1), s):
        raise _Reject("integer literal too long")


# ----------------------------------------------------------------------------- LaTeX -> Python

_FUNCS = {"sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
          "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh",
          "tanh": "tanh", "log": "log", "ln": "log", "lg": "log", "exp": "exp"}
_INVERSE = {"sin": "asin", "cos": "acos", "tan": "atan", "cot": "acot", "sec": "asec", "csc": "acsc"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
          "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
          "chi", "psi", "omega", "ell", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"}
_ATOM_CMDS = {"frac", "sqrt", "pi", "infty", "binom", "lfloor", "lceil", "lvert", "vert", "overline"} \
    | set(_FUNCS) | _GREEK
_PY_NAMES = {"sqrt", "real_root", "pi", "E", "I", "oo", "factorial", "factorial2", "binomial", "Abs",
             "floor", "ceiling", "log", "exp", "asin", "acos", "atan", "acot", "asec", "acsc"} \
    | set(_FUNCS.values())


_RX_CMD = re.compile(r"\\([a-zA-Z]+)")
_RX_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_RX_REPEAT = re.compile(r"\s*\\overline\s*\{(\d+)\}")
_RX_SCI = re.compile(r"[eE]([+-]?\d{1,4})(?![a-zA-Z\d])")
_RX_MIXED_TEX = re.compile(r"\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}")  # 1\frac{4}{5}
_RX_MIXED_TEXT = re.compile(r"\s+(\d+)\s*/\s*(\d+)\s*$")  # 3 1/2
_RX_WORD = re.compile(r"[a-zA-Z]+")
_FUNC_WORDS_LONGEST_FIRST = sorted(_FUNC_WORDS - {"infty"}, key=len, reverse=True)


def _is_digit(c: str) -> bool:
    return len(c) == 1 and "0" <= c <= "9"


def _is_letter(c: str) -> bool:
    return len(c) == 1 and ("a" <= c <= "z" or "A" <= c <= "Z")


class _LatexToPy:
    """Recursive descent over one LaTeX expression, emitting Python syntax for sympy.

    Letters become real symbols named s_<letter>[_<subscript>]; e -> E, i -> I.
    Implicit multiplication is made explicit. Sets `inexact` when a decimal appears.
    """

    def __init__(self, s: str):
        self.s, self.i, self.depth, self.in_abs, self.inexact = s, 0, 0, 0, False

    def convert(self) -> str:
        out = self.expr()
        self.skip()
        if self.i != len(self.s):
            raise _ParseError(f"unexpected {self.s[self.i:self.i + 10]!r}")
        return out

    # -- helpers
    def skip(self):
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def peek(self) -> str:
        self.skip()
        return self.s[self.i] if self.i < len(self.s) else ""

    def cmd_at(self) -> str | None:
        m = _RX_CMD.match(self.s, self.i)
        return m.group(1) if m else None

    def eat_cmd(self, name: str) -> bool:
        self.skip()
        if self.s.startswith("\\" + name, self.i) and not self.s[self.i + 1 + len(name):][:1].isalpha():
            self.i += 1 + len(name)
            return True
        return False

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject("expression nested too deep")

    def starts_atom(self) -> bool:
        c = self.peek()
        if not c:
            return False
        if _is_digit(c) or c == "." or _is_letter(c) or c in "([{":
            return True
        if c == "|":
            return self.in_abs == 0
        if c == "\\":
            return self.cmd_at() in _ATOM_CMDS
        return False

    # -- grammar
    def expr(self) -> str:
        self.enter()
        out = self.term()
        while self.peek() in ("+", "-"):
            op = self.s[self.i]
            self.i += 1
            out = f"{out} {op} {self.term()}"
        self.depth -= 1
        return out

    def term(self) -> str:
        out = self.unary()
        while True:
            c = self.peek()
            if c in ("*", "/"):
                self.i += 1
                op = c
            elif self.eat_cmd("cdot") or self.eat_cmd("times") or self.eat_cmd("ast"):
                op = "*"
            elif self.eat_cmd("div"):
                op = "/"
            elif self.starts_atom():
                op = "*"
            else:
                return out
            out = f"{out}{op}{self.unary()}"

    def unary(self) -> str:
        negative = False
        while self.peek() in ("-", "+"):  # a loop: 1000 minus signs must not recurse 1000 deep
            negative ^= self.s[self.i] == "-"
            self.i += 1
        out = self.power()
        return f"(-{out})" if negative else out

    def power(self) -> str:
        base = self.postfix(self.atom())
        if self.peek() == "^":
            self.i += 1
            exp = self.arg(exponent=True)
            return self.postfix(f"({base})**({exp})")
        return base

    def postfix(self, x: str) -> str:
        while self.peek() == "!":
            if self.s.startswith("!!", self.i):
                self.i += 2
                x = f"factorial2({x})"
            else:
                self.i += 1
                x = f"factorial({x})"
        return x

    def arg(self, exponent: bool = False) -> str:
        """A macro argument: {group}, one digit, one letter or one command atom."""
        c = self.peek()
        if c and c in "{(":  # sqrt(2) in plain-text answers
            return self.group(c, "}" if c == "{" else ")")
        if _is_digit(c):
            self.i += 1
            return c
        if c == "-" and exponent:
            self.i += 1
            return f"(-{self.arg(exponent=True)})"
        if _is_letter(c) or c == "\\":
            return self.atom()
        raise _ParseError(f"missing argument at {self.i}")

    def group(self, open_: str, close: str) -> str:
        self.i += len(open_)
        inner = self.expr()
        self.skip()
        if not self.s.startswith(close, self.i):
            raise _ParseError(f"expected {close!r} at {self.i}")
        self.i += len(close)
        return f"({inner})"

    def number(self) -> str:
        m = _RX_NUMBER.match(self.s, self.i)
        if m is None:
            raise _ParseError(f"stray '.' at {self.i}")
        text = m.group()
        self.i = m.end()
        if len(text) > MAX_LITERAL_DIGITS:
            raise _Reject("integer literal too long")
        rep = _RX_REPEAT.match(self.s, self.i)
        if rep:  # repeating decimal, exact: 0.1\overline{6} = 1/6
            self.i = rep.end()
            whole, _, frac = text.partition(".")
            period = rep.group(1)
            value = (Fraction(int(whole + frac + period) - int(whole + frac or "0"),
                              (10 ** len(period) - 1) * 10 ** len(frac)))
            return f"({value.numerator}/{value.denominator})"
        if "." in text:
            self.inexact = True
            text = ("0" + text if text.startswith(".") else text).rstrip(".") or "0"
            if text.endswith("."):
                text = text[:-1]
        sci = _RX_SCI.match(self.s, self.i)
        if sci:
            self.i = sci.end()
            return f"({text}*10**({int(sci.group(1))}))"
        if "." in text:
            return text
        text = str(int(text))  # 042 -> 42 (leading zeros are a syntax error in Python)
        mixed = _RX_MIXED_TEX.match(self.s, self.i) or _RX_MIXED_TEXT.match(self.s, self.i)
        if mixed and int(mixed.group(1)) < int(mixed.group(2)):
            self.i = mixed.end()
            return f"({text}+{int(mixed.group(1))}/{int(mixed.group(2))})"
        return text

    def symbol(self, name: str) -> str:
        if name == "e":
            return "E"
        if name == "i":
            return "I"
        if self.s.startswith("_", self.i):
            self.i += 1
            c = self.peek()
            if c == "{":
                content = _brace_content(self.s, self.i, len(self.s))
                if content is None:
                    raise _ParseError("unbalanced subscript")
                self.i += len(content) + 2
            elif _is_digit(c) or _is_letter(c):
                content = c
                self.i += 1
            else:
                raise _ParseError("bad subscript")
            sub = re.sub(r"[^A-Za-z0-9]", "", content)
            if not sub:
                raise _ParseError("bad subscript")
            name = f"{name}_{sub}"
        return f"s_{name}"

    def atom(self) -> str:
        self.enter()
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self) -> str:
        c = self.peek()
        if _is_digit(c) or c == ".":
            return self.number()
        if c == "(":
            return self.group("(", ")")
        if c == "[":
            return self.group("[", "]")
        if c == "{":
            return self.group("{", "}")
        if c == "|" and self.in_abs == 0:
            self.in_abs += 1
            inner = self.group("|", "|")
            self.in_abs -= 1
            return f"Abs{inner}"
        if _is_letter(c):
            word = _RX_WORD.match(self.s, self.i).group()
            for fn in _FUNC_WORDS_LONGEST_FIRST:  # plain-text sqrt(2), 2pi
                if word.startswith(fn):
                    self.i += len(fn)
                    return self.command(fn)
            self.i += 1
            return self.symbol(c)
        if c == "\\":
            name = self.cmd_at()
            if name is None:
                raise _ParseError(f"unknown command at {self.s[self.i:self.i + 5]!r}")
            self.i += 1 + len(name)
            return self.command(name)
        raise _ParseError(f"unexpected {c!r}")

    def command(self, name: str) -> str:
        if name == "frac":
            num = self.arg()
            return f"(({num})/({self.arg()}))"
        if name == "binom":
            n = self.arg()
            return f"binomial({n}, {self.arg()})"
        if name == "sqrt":
            if self.peek() == "[":
                self.i += 1
                idx = self.expr()
                if self.peek() != "]":
                    raise _ParseError("unclosed \\sqrt[")
                self.i += 1
                return f"real_root({self.arg()}, {idx})"
            return f"sqrt({self.arg()})"
        if name == "pi":
            return "pi"
        if name == "infty":
            return "oo"
        if name in _GREEK:
            return f"s_{name}"
        if name in ("lfloor", "lceil"):
            fn, close = ("floor", "\\rfloor") if name == "lfloor" else ("ceiling", "\\rceil")
            inner = self.expr()
            if not self.eat_cmd(close[1:]):
                raise _ParseError(f"missing {close}")
            return f"{fn}({inner})"
        if name in ("lvert", "vert"):
            inner = self.expr()
            if not (self.eat_cmd("rvert") or self.eat_cmd("vert")):
                raise _ParseError("missing \\rvert")
            return f"Abs({inner})"
        if name in _FUNCS:
            return self.function(name)
        raise _ParseError(f"unsupported command \\{name}")

    def function(self, name: str) -> str:
        fn, power, base = _FUNCS[name], None, None
        if self.peek() == "^":
            self.i += 1
            power = self.arg(exponent=True)
            if power in ("(-1)", "((-1))") and name in _INVERSE:
                fn, power = _INVERSE[name], None
        if self.peek() == "_" and fn == "log":
            self.i += 1
            base = self.arg()
        c = self.peek()
        if c in "({[" and c:
            arg = self.group(c, {"(": ")", "{": "}", "[": "]"}[c])
        else:  # \sin 2x -> sin(2x): implicit product up to the next operator or function
            parts = [self.unary()]
            while self.starts_atom() and self.cmd_at() not in _FUNCS and not self._word_function():
                parts.append(self.power())
            arg = "*".join(parts)
        out = f"{fn}({arg}, {base})" if base is not None else f"{fn}({arg})"
        return f"({out})**({power})" if power is not None else out

    def _word_function(self) -> bool:
        m = _RX_WORD.match(self.s, self.i)
        return bool(m) and any(m.group().startswith(f) for f in _FUNCS)


_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Constant, ast.Load,
                  ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)


def _to_py(latex: str) -> tuple[str, ast.Expression, bool]:
    """LaTeX leaf -> (python source, its checked AST, inexact flag)."""
    conv = _LatexToPy(latex)
    try:
        py = conv.convert()
    except (IndexError, KeyError, ValueError, AttributeError) as exc:  # untrusted text: fail closed
        raise _ParseError(f"cannot parse {latex[:40]!r}: {exc}") from exc
    try:
        tree = ast.parse(py, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise _ParseError(f"generated bad python {py!r}") from exc
    for node in ast.walk(tree):  # defence in depth: parse_expr eval()s this text
        if not isinstance(node, _ALLOWED_NODES):
            raise _ParseError(f"node {type(node).__name__} not allowed")
        if isinstance(node, ast.Name) and not (node.id in _PY_NAMES or node.id.startswith("s_")):
            raise _ParseError(f"name {node.id} not allowed")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.keywords):
            raise _ParseError("bad call")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise _ParseError("bad constant")
    _guard_sizes(tree.body, py)
    return py, tree, conv.inexact


# ----------------------------------------------------------------------------- exact evaluation


def _digits(q: Fraction) -> float:
    """log10 of the larger of |numerator| and denominator."""
    return math.log10(max(abs(q.numerator), q.denominator, 1))


def _exact(node: ast.AST, src: str) -> Fraction | None:
    """Exact rational value of a checked AST node, None when it is not a plain rational
    (symbols, pi, irrational roots, ...). Raises _Reject for values too large to build
    (every intermediate stays under MAX_RESULT_DIGITS, so gcds stay cheap) and for
    division by zero."""
    v = _exact_node(node, src)
    if v is not None and _digits(v) > MAX_RESULT_DIGITS:
        raise _Reject("number too large")
    return v


def _exact_node(node: ast.AST, src: str) -> Fraction | None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, float):
            return Fraction(ast.get_source_segment(src, node))
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        v = _exact(node.operand, src)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp):
        a = _exact(node.left, src)
        b = _exact(node.right, src)
        if a is None or b is None:
            return None
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise _Reject("division by zero")
            return a / b
        if b.denominator != 1:
            return _exact_root(a, b)
        e = b.numerator
        if a == 0 and e < 0:
            raise _Reject("division by zero")
        if a in (0, 1):
            return a
        if a == -1:
            return Fraction(1 if e % 2 == 0 else -1)
        if abs(e) * _digits(a) > MAX_RESULT_DIGITS:
            raise _Reject("power too large")
        return a ** e
    if isinstance(node, ast.Call):
        name = node.func.id
        args = [_exact(a, src) for a in node.args]
        if any(a is None for a in args):
            return None
        if name in ("factorial", "factorial2") and len(args) == 1:
            n = args[0]
            if n.denominator != 1 or n < 0:
                return None
            if n > MAX_FACTORIAL:
                raise _Reject("factorial too large")
            n = n.numerator
            return Fraction(math.factorial(n) if name == "factorial" else math.prod(range(n, 0, -2)))
        if name == "binomial" and len(args) == 2:
            n, k = args
            if n.denominator != 1 or k.denominator != 1:
                return None
            if n > 10 * MAX_FACTORIAL:
                raise _Reject("binomial too large")
            return Fraction(math.comb(n.numerator, k.numerator)) if 0 <= k <= n else Fraction(0)
        if name == "Abs" and len(args) == 1:
            return abs(args[0])
        if name == "floor" and len(args) == 1:
            return Fraction(math.floor(args[0]))
        if name == "ceiling" and len(args) == 1:
            return Fraction(math.ceil(args[0]))
        if name == "sqrt" and len(args) == 1:
            return _exact_root(args[0], Fraction(1, 2))
        if name == "real_root" and len(args) == 2 and args[1].denominator == 1 and args[1] > 0:
            if args[1] > MAX_RESULT_DIGITS:
                raise _Reject("root index too large")
            return _exact_root(args[0], 1 / args[1], real=True)
        return None
    return None


def _iroot(n: int, k: int) -> int | None:
    """Exact integer k-th root of n >= 0, or None."""
    if n < 2:
        return n if n >= 0 else None
    x = 1 << -(-n.bit_length() // k)  # >= the root; Newton descends from above
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            break
        x = y
    return x if x**k == n else None


def _exact_root(a: Fraction, e: Fraction, real: bool = False) -> Fraction | None:
    """a**e for rational e = p/q when the q-th root of a is rational, else None."""
    p, q = e.numerator, e.denominator
    if q > 64 or abs(p) > MAX_RESULT_DIGITS:
        return None
    sign = 1
    if a < 0:
        if not (real or q == 1) or q % 2 == 0:
            return None
        sign, a = -1, -a
    num, den = _iroot(a.numerator, q), _iroot(a.denominator, q)
    if num is None or den is None:
        return None
    root = Fraction(sign * num, den)
    if root == 0 and p < 0:
        raise _Reject("division by zero")
    if abs(p) * _digits(root) > MAX_RESULT_DIGITS:
        raise _Reject("power too large")
    return root ** p


def _guard_sizes(node: ast.AST, src: str, power: Fraction = Fraction(1)) -> None:
    """Reject exponent towers and huge factorials before sympy ever sees them.

    `power` is the product of the exponents applied to `node`: (x^100)^200 is x^20000,
    which sympy would expand into 20000-digit numbers at every sample point."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        e = _exact(node.right, src)
        if e is not None:
            power *= max(abs(e), 1)
            if power > MAX_RESULT_DIGITS:
                raise _Reject("exponent too large")
        _exact(node, src)  # raises for numeric bases that would blow up
        _guard_sizes(node.left, src, power)
        _guard_sizes(node.right, src)
        return
    if isinstance(node, ast.Call) and node.func.id in ("factorial", "factorial2", "binomial"):
        for a in node.args:
            v = _exact(a, src)
            if v is not None and abs(v) > 10 * MAX_FACTORIAL:
                raise _Reject("factorial too large")
    for child in ast.iter_child_nodes(node):
        _guard_sizes(child, src, power)


# ----------------------------------------------------------------------------- structure

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
    choice = re.fullmatch(r"\(([A-Ea-e])\)(?:\s.*)?|([A-E])\)?", s, re.S)
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


# ----------------------------------------------------------------------------- comparison


class _Judge:
    """Compares two structures. Without sympy, undecidable leaves give None."""

    def __init__(self, use_sympy: bool):
        self.use_sympy = use_sympy
        self._py: dict[str, tuple | None] = {}

    def py(self, latex: str):
        if latex not in self._py:
            try:
                self._py[latex] = _to_py(latex)
            except _ParseError:
                self._py[latex] = None
        return self._py[latex]

    def same(self, g, p):
        g = ("set", g[1]) if g[0] == "pm" else g
        p = ("set", p[1]) if p[0] == "pm" else p
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
            if kg == "set" and kp == "seq" and p[1] == "(" and p[2] == ")":
                p = ("set", p[3])  # gold is an unordered list: (a, b) lists the same answers
            if kp == "set" and kg == "seq" and g[1] == "(" and g[2] == ")":  # gold is ordered: so is a, b
                return len(g[3]) == len(p[1]) and self.all_of(self.same(a, b) for a, b in zip(g[3], p[1]))
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
        b, other = (g, p) if g[0] == "base" else (p, g)
        if other[0] != "leaf":
            return False
        digits = other[1].replace(" ", "")
        return digits == b[1]

    def equation(self, g, p):
        def simple_lhs(x):
            return x[0] == "eq" and x[1][0] == "leaf" and bool(_RX_VARIABLE.fullmatch(x[1][1]))

        if g[0] == "eq" and p[0] != "eq":
            return self.same(g[2], p) if simple_lhs(g) else False
        if p[0] == "eq" and g[0] != "eq":
            return self.same(g, p[2]) if simple_lhs(p) else False
        if simple_lhs(g) and simple_lhs(p) and g[1][1].replace(" ", "") == p[1][1].replace(" ", ""):
            return self.same(g[2], p[2])
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
        va, vb = _exact(pg[1].body, pg[0]), _exact(pp[1].body, pp[0])
        if va is not None and vb is not None:
            return any(_close(x, y, inexact) for x, y in _pct_variants(va, vb, g[2], p[2]))
        if not self.use_sympy:
            return None
        return _sympy_equal(pg[0], pp[0], inexact, g[2], p[2])


def _pct_variants(a, b, pct_a: bool, pct_b: bool):
    """25% matches 25 and 0.25: the marked side may be read either way."""
    yield a, b
    if pct_a and not pct_b:
        yield a / 100, b
    if pct_b and not pct_a:
        yield a, b / 100


def _close(a: Fraction, b: Fraction, inexact: bool) -> bool:
    if not inexact:
        return a == b
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


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


def _answer_of(text: str) -> str:
    if "\\boxed" in text or "\\fbox" in text or "####" in text:
        return extract_answer(text) or text
    return text


def _judge(gold_ans: str, pred_ans: str, use_sympy: bool) -> bool | None:
    """True/False, or None when only sympy can tell (and use_sympy is False)."""
    _guard_text(gold_ans)
    _guard_text(pred_ans)
    g, p = _normalize(gold_ans), _normalize(pred_ans)
    if g == p:
        return True
    if not g or not p:
        return False
    _guard_text(g)
    _guard_text(p)
    return _Judge(use_sympy).same(_structure(g), _structure(p))


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


def _numbers_close(a, b, inexact: bool) -> bool:
    """a, b: sympy numbers without free symbols."""
    sympy = _sympy_ns()["sympy"]
    if a == b:
        return True
    if a.is_Rational and b.is_Rational:
        return _close(Fraction(int(a.p), int(a.q)), Fraction(int(b.p), int(b.q)), inexact)
    bad = (sympy.nan, sympy.zoo, sympy.oo, -sympy.oo)
    if a in bad or b in bad or a.has(sympy.zoo, sympy.nan) or b.has(sympy.zoo, sympy.nan):
        return False
    av, bv = sympy.N(a, 60), sympy.N(b, 60)
    if not (av.is_number and bv.is_number) or av.has(sympy.zoo, sympy.nan) or bv.has(sympy.zoo, sympy.nan):
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


def _sympy_equal(py_a: str, py_b: str, inexact: bool, pct_a: bool, pct_b: bool) -> bool:
    a, b = _sympify(py_a), _sympify(py_b)
    variants = [(a, b)]
    if pct_a and not pct_b:
        variants.append((a / 100, b))
    if pct_b and not pct_a:
        variants.append((a, b / 100))
    for x, y in variants:
        if x == y:
            return True
        symbols = x.free_symbols | y.free_symbols
        if not symbols:
            if _numbers_close(x, y, inexact):
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


def _worker_main() -> None:
    """Loop of a sympy worker process: JSON lines in on stdin, JSON lines out."""
    try:
        import resource

        limit = 3 * 1024**3  # a memory bomb becomes MemoryError (score 0), not an OOM kill
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    parent = os.getppid()

    def exit_with_parent():  # a worker stuck in sympy must not outlive a parent that died
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray prints from libraries must not corrupt the protocol
    _sympy_ns()
    sys.setrecursionlimit(10_000)
    out.write(b'{"ready": 1}\n')
    for line in sys.stdin.buffer:
        req = json.loads(line)
        err = None
        try:
            ok = _judge(req["g"], req["p"], use_sympy=True) is True
        except _Reject:
            ok = False
        except Exception as exc:  # noqa: BLE001 - any failure of sympy scores 0 and is counted
            ok, err = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        out.write(json.dumps({"ok": ok, "err": err}).encode() + b"\n")


# ----------------------------------------------------------------------------- worker pool (caller side)


class _Timeout(Exception):
    pass


_THIS_FILE = os.path.abspath(__file__)  # at import: the trainer may chdir later


class _Worker:
    """One sympy process, run from this file by path so `import lightrl` (and whatever the
    package __init__ pulls in, e.g. torch) never loads in it; talks JSON lines on its pipes."""

    def __init__(self):
        code = ("import sys, runpy; sys.path = [p for p in sys.path if p not in ('', '.')]; "
                f"runpy.run_path({_THIS_FILE!r}, run_name='__lightrl_verifier_worker__')")
        # own session: a Ctrl-C in the terminal reaches the trainer, not its verifier workers
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0, close_fds=True, start_new_session=True)
        self.poll = select.poll()  # not select(): a trainer may hold more than FD_SETSIZE descriptors
        self.poll.register(self.proc.stdout.fileno(), select.POLLIN)
        self.ready = False
        self.buf = b""

    def _readline(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.poll.poll(max(1, int(left * 1000))):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError("verifier worker exited")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ask(self, gold: str, pred: str, timeout: float) -> dict:
        if not self.ready:
            line = self._readline(time.monotonic() + WORKER_STARTUP_TIMEOUT)
            if line is None:
                raise RuntimeError(f"math verifier worker did not start within {WORKER_STARTUP_TIMEOUT}s "
                                   f"({sys.executable}); check that sympy imports in a fresh interpreter")
            self.ready = True
        self.proc.stdin.write(json.dumps({"g": gold, "p": pred}).encode() + b"\n")
        line = self._readline(time.monotonic() + timeout)
        if line is None:
            raise _Timeout
        return json.loads(line)

    def kill(self):
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    """Grow-only set of sympy workers shared by all threads of this process."""

    def __init__(self):
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.count = 0
        self.size = 0

    def ensure(self, n: int) -> None:
        with self.cond:
            self.size = max(self.size, n)
            missing = self.size - self.count
            self.count += missing
        new: list[_Worker] = []
        try:
            for _ in range(missing):  # start now; they import sympy in parallel
                new.append(_Worker())
        finally:
            with self.cond:
                self.count -= missing - len(new)
                self.idle.extend(new)
                self.cond.notify_all()

    def acquire(self) -> _Worker:
        with self.cond:
            while not self.idle:
                self.cond.wait()
            return self.idle.pop()

    def release(self, w: _Worker, healthy: bool) -> None:
        if not healthy:
            w.kill()
            _bump("n_worker_restarts")
            try:
                w = _Worker()
            except BaseException:
                with self.cond:
                    self.count -= 1
                    self.cond.notify()
                raise
        with self.cond:
            self.idle.append(w)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            idle, self.idle, self.count, self.size = self.idle, [], 0, 0
        for w in idle:
            w.kill()


_POOL = _Pool()
atexit.register(lambda: _POOL.close())


def _reset_after_fork():
    global _POOL, _LOCK
    _POOL = _Pool()  # the parent's workers belong to the parent
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# ----------------------------------------------------------------------------- public API

_LOCK = threading.Lock()
_STATS = dict.fromkeys(("n_checked", "n_cache_hits", "n_no_answer", "n_guard_rejects", "n_sympy",
                        "n_timeouts", "n_errors", "n_worker_restarts"), 0)
_CACHE: OrderedDict[tuple[str, str], bool] = OrderedDict()


def _bump(name: str, k: int = 1) -> None:
    with _LOCK:
        _STATS[name] += k


def get_stats(reset: bool = False) -> dict[str, int]:
    """Counters since import (or the last reset): n_checked, n_cache_hits, n_no_answer,
    n_guard_rejects, n_sympy, n_timeouts, n_errors, n_worker_restarts."""
    with _LOCK:
        snap = dict(_STATS)
        if reset:
            for k in _STATS:
                _STATS[k] = 0
    return snap


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _remember(key: tuple[str, str], ok: bool) -> None:
    with _LOCK:
        _CACHE[key] = ok
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)


def _prepare(gold: str, prediction: str) -> tuple[tuple[str, str] | None, bool | None]:
    """In-process part: (cache key, verdict); verdict None means 'ask a sympy worker'."""
    _bump("n_checked")
    pred = extract_answer(prediction)
    if pred is None:
        pred = prediction.strip()
        if not pred or len(pred) > MAX_ANSWER_CHARS:
            _bump("n_no_answer")
            return None, False
    key = (_answer_of(gold).strip(), pred)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            _STATS["n_cache_hits"] += 1
    if hit is not None:
        return None, hit
    try:
        verdict = _judge(key[0], key[1], use_sympy=False)
    except _Reject:
        _bump("n_guard_rejects")
        verdict = False
    except (_ParseError, RecursionError, ValueError, ZeroDivisionError, OverflowError):
        verdict = False
    except Exception:  # noqa: BLE001 - an unforeseen input must not crash training: let a worker decide
        verdict = None
    if verdict is not None:
        _remember(key, verdict)
    return key, verdict


def _ask_sympy(key: tuple[str, str], timeout: float) -> bool:
    _bump("n_sympy")
    w = _POOL.acquire()
    healthy = True
    try:
        reply = w.ask(key[0], key[1], timeout)
    except _Timeout:
        healthy = False
        _bump("n_timeouts")
        ok = False  # timeouts are cached too: a pathological answer repeated G times must not stall G times
    except (EOFError, BrokenPipeError, OSError):
        healthy = False
        _bump("n_errors")
        ok = False
    except BaseException:
        healthy = False
        raise
    else:
        ok = bool(reply["ok"])
        if reply.get("err"):
            _bump("n_errors")
    finally:
        _POOL.release(w, healthy)
    _remember(key, ok)
    return ok


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: the sympy time limit per pair must be > 0 seconds (default 2.0)")


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def verify(gold: str, prediction: str, timeout: float = 2.0) -> bool:
    """True when `prediction` (a whole response or a bare answer) states `gold`.

    Safe from any thread; sympy runs in a worker process killed after `timeout`
    seconds (a timeout returns False and counts in get_stats()['n_timeouts']).
    """
    _check_timeout(timeout)
    key, verdict = _prepare(gold, prediction)
    if verdict is not None:
        return verdict
    _POOL.ensure(1)
    return _ask_sympy(key, timeout)


def score_batch(golds: list[str], predictions: list[str], timeout: float = 2.0,
                workers: int | None = None) -> list[float]:
    """Rewards (1.0 / 0.0) for each pair, in input order.

    Pairs the in-process exact check cannot settle go to `workers` sympy processes
    (default: CPU count, at most 8) in parallel, each under `timeout` seconds.
    Results are cached per (gold answer, predicted answer).
    """
    _check_timeout(timeout)
    if len(golds) != len(predictions):
        raise ValueError(f"score_batch: {len(golds)} golds but {len(predictions)} predictions; "
                         "pass one gold per prediction (repeat the gold for each sample of a group)")
    out = [0.0] * len(golds)
    pending: dict[tuple[str, str], list[int]] = {}
    for i, (g, p) in enumerate(zip(golds, predictions)):
        key, verdict = _prepare(g, p)
        if verdict is None:
            pending.setdefault(key, []).append(i)
        else:
            out[i] = float(verdict)
    if pending:
        n = min(workers or _default_workers(), len(pending))
        _POOL.ensure(n)
        keys = list(pending)
        with ThreadPoolExecutor(max_workers=n) as ex:
            for key, ok in zip(keys, ex.map(lambda k: _ask_sympy(k, timeout), keys)):
                for i in pending[key]:
                    out[i] = float(ok)
    return out


if __name__ == "__lightrl_verifier_worker__":
    _worker_main()
