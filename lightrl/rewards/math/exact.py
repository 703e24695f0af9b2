"""Stage 4: exact rational arithmetic on a checked AST, with size guards."""
from __future__ import annotations

import ast
import math
import threading
from fractions import Fraction

from .limits import MAX_FACTORIAL, MAX_RESULT_DIGITS, _Reject

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
        if a == 0 and e == 0:
            raise _Reject("0^0 is undefined")
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


# ----------------------------------------------------------------------------- 60-digit numbers

_MP = threading.local()  # one mpmath context per thread: its functions change the precision while they run
_NUMERIC_DIGITS = 60
_MAX_ARG = 1e6  # trig of larger arguments needs argument reduction costing time we cannot bound here


def _ctx():
    ctx = getattr(_MP, "ctx", None)
    if ctx is None:
        from mpmath.ctx_mp import MPContext  # mpmath comes with sympy; imported on first use

        ctx = _MP.ctx = MPContext()
        ctx.dps = _NUMERIC_DIGITS
    return ctx


class _Unknown(Exception):
    """Not a real constant this evaluator can bound: leave it to sympy."""


def numeric(node: ast.AST, src: str):
    """(value, largest intermediate magnitude) of a symbol-free real constant expression
    (radicals, pi, e, logs, trig, ...) at 60 significant digits, or None when it has symbols,
    i, infinity, a decimal, a non-real or undefined step, or needs more work than a fixed
    small bound (exponents, factorials and trig arguments are capped). Never slow: every
    step is checked before it is taken, so it runs in-process without a time limit."""
    ctx = _ctx()
    peak = [ctx.mpf(0)]
    try:
        v = _num(node, src, ctx, peak)
    except (_Unknown, ZeroDivisionError, ValueError, OverflowError):
        return None
    return v, peak[0]


def _num(node, src, ctx, peak):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, float):
            raise _Unknown  # decimals follow the decimal rule, decided exactly elsewhere
        v = ctx.mpf(node.value)
    elif isinstance(node, ast.UnaryOp):
        v = _num(node.operand, src, ctx, peak)
        v = -v if isinstance(node.op, ast.USub) else v
    elif isinstance(node, ast.BinOp):
        a, b = _num(node.left, src, ctx, peak), _num(node.right, src, ctx, peak)
        if isinstance(node.op, ast.Add):
            v = a + b
        elif isinstance(node.op, ast.Sub):
            v = a - b
        elif isinstance(node.op, ast.Mult):
            v = a * b
        elif isinstance(node.op, ast.Div):
            if b == 0:
                raise _Unknown
            v = a / b
        else:
            v = _num_pow(a, b, ctx)
    elif isinstance(node, ast.Name):
        if node.id == "pi":
            v = +ctx.pi
        elif node.id == "E":
            v = +ctx.e
        else:
            raise _Unknown  # symbols, I, oo
    elif isinstance(node, ast.Call):
        v = _num_call(node.func.id, [_num(a, src, ctx, peak) for a in node.args], ctx)
    else:
        raise _Unknown
    if not ctx.isfinite(v) or isinstance(v, ctx.mpc):
        raise _Unknown
    peak[0] = max(peak[0], abs(v))
    return v


def _num_pow(a, b, ctx):
    if a == 0:
        if b > 0:
            return ctx.mpf(0)
        raise _Unknown
    if a < 0 and not ctx.isint(b):
        raise _Unknown
    if abs(b * ctx.log(abs(a))) > 2000:
        raise _Unknown
    v = ctx.power(a, b)
    if isinstance(v, ctx.mpc):
        raise _Unknown
    return v


def _num_call(name: str, args: list, ctx):
    x = args[0] if args else None
    if name == "sqrt" and x >= 0:
        return ctx.sqrt(x)
    if name == "real_root" and len(args) == 2 and ctx.isint(args[1]) and 1 <= args[1] <= 64:
        n = int(args[1])
        if x >= 0:
            return ctx.root(x, n)
        if n % 2:
            return -ctx.root(-x, n)
        raise _Unknown
    if name == "Abs":
        return abs(x)
    if name in ("log",) and x > 0:
        if len(args) == 2:
            if args[1] <= 0 or args[1] == 1:
                raise _Unknown
            return ctx.log(x) / ctx.log(args[1])
        return ctx.log(x)
    if name == "exp" and abs(x) < 2000:
        return ctx.exp(x)
    if name in ("sinh", "cosh", "tanh") and abs(x) < 2000:
        return getattr(ctx, name)(x)
    if name in ("sin", "cos", "tan", "cot", "sec", "csc") and abs(x) < _MAX_ARG:
        return getattr(ctx, name)(x)
    if name in ("asin", "acos") and abs(x) <= 1:
        return getattr(ctx, name)(x)
    if name in ("asec", "acsc") and abs(x) >= 1:
        return getattr(ctx, name)(x)
    if name in ("atan", "acot"):
        return getattr(ctx, name)(x)
    if name == "factorial" and ctx.isint(x) and 0 <= x <= 1000:
        return ctx.factorial(x)
    if name == "binomial" and len(args) == 2 and all(ctx.isint(a) for a in args) and 0 <= x <= 10_000:
        return ctx.binomial(x, args[1])
    raise _Unknown  # floor/ceiling jump at integers, where 60 digits cannot tell the side
