"""Stage 3: one LaTeX leaf -> checked Python syntax for exact evaluation or sympy (recursive descent, no antlr)."""
from __future__ import annotations

import ast
import re
from fractions import Fraction

from .exact import _guard_sizes
from .extract import _brace_content
from .limits import MAX_DEPTH, MAX_LITERAL_DIGITS, _ParseError, _Reject
from .normalize import _FUNC_WORDS

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
