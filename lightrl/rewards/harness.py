"""Test harness of the code sandbox: the programs that run inside it (stdlib only).

The launcher (lightrl/rewards/sandbox.py) copies this file into the sandbox's working dir
and runs it as the harness, ``python -I -S -B harness.py RESULT_FD KIND``. The harness is
the only process that knows the tests' expected values and holds the result fd; it makes
itself non-dumpable (no ptrace, no /proc/PID/{mem,fd} for processes of the same user) before
any model-written code runs, and every process it starts gets only the fds it needs.

Assert tests (``check_test`` says which are accepted) run in two processes. The solution
process (``harness.py serve REQ_FD REPLY_FD``) executes solution.py as module ``solution``,
then answers requests "call NAME with these plain arguments" (or "the value of NAME") with
``repr`` of the result, refusing anything but exact builtin plain types. The harness
evaluates every other part of the test itself on plain values (``ast.literal_eval`` of the
replies): literals, comparisons, ``and``/``or``/``not``, arithmetic, subscripts and a few
builtins (``HELPERS``). So the solution process never sees an expected value, a verdict or
the result fd, and no object of the solution's is ever compared: it can only return values,
and a value passes only if it equals the expected one.

Stdio tests run the solution as a fresh script per test; the harness compares its output.

The harness reports one JSON line [test index, status, message] per test on the result fd;
index -1 applies to every test not reported yet (e.g. a syntax error).
"""
from __future__ import annotations

import ast
import builtins
import json
import math
import operator
import os
import subprocess
import sys

# Builtins a test may apply to values; they run in the harness on plain values, also when the
# solution defines a function of that name: abs(f(x) - 3.5) < 1e-6 must not reach its own abs.
HELPERS = {f.__name__: f for f in (abs, all, any, bool, float, int, len, list, max, min, round, set,
                                    sorted, str, sum, tuple)}
HELPERS["math.isclose"] = math.isclose
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_PLAIN = (type(None), bool, int, float, complex, str, bytes)  # leaves of a value the solution may return
_MAX_REPLY = 1 << 20  # bytes of one reply of the solution process
FORMS = ("one `assert EXPR` statement whose EXPR uses only literals, calls of the solution's functions "
         "with such arguments (f(1, [2]), f(g(3))), its module-level names, comparisons, and/or/not, "
         "arithmetic, subscripts and " + ", ".join(sorted(HELPERS)))


def check_test(src: str) -> ast.expr:
    """The expression of assert test `src` (str), after checking that the harness can evaluate it.
    SyntaxError for invalid Python; ValueError naming the unsupported part otherwise."""
    body = ast.parse(src).body
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        raise ValueError(f"expected {FORMS}")
    _check(body[0].test)
    return body[0].test


def _helper_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name) and func.id in HELPERS:
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math" \
            and func.attr == "isclose":
        return "math.isclose"
    return None


def _check(node: ast.expr) -> None:
    if isinstance(node, ast.Call):
        if _helper_name(node.func) is None and not isinstance(node.func, ast.Name):
            raise ValueError(f"`{ast.unparse(node)}`: only the solution's functions by name (f(...)) "
                             f"and {', '.join(sorted(HELPERS))} can be called")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ValueError(f"`{ast.unparse(node)}`: no *args / **kwargs in a test")
        children = node.args + [k.value for k in node.keywords]
    elif isinstance(node, (ast.Constant, ast.Name)):
        children = []
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        if any(isinstance(e, ast.Starred) for e in node.elts):
            raise ValueError(f"`{ast.unparse(node)}`: no *unpacking in a test")
        children = node.elts
    elif isinstance(node, ast.Dict):
        if None in node.keys:
            raise ValueError(f"`{ast.unparse(node)}`: no **unpacking in a test")
        children = node.keys + node.values
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        children = [node.operand]
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        children = [node.left, node.right]
    elif isinstance(node, ast.BoolOp):
        children = node.values
    elif isinstance(node, ast.Compare):
        children = [node.left] + node.comparators
    elif isinstance(node, ast.Subscript):
        s = node.slice
        children = [node.value] + ([x for x in (s.lower, s.upper, s.step) if x] if isinstance(s, ast.Slice) else [s])
    else:
        raise ValueError(f"`{ast.unparse(node)}` ({type(node).__name__}) is not supported; expected {FORMS}")
    for child in children:
        _check(child)


def evaluate(node: ast.expr, ask):
    """Value of a checked test expression. ask(name, args, kwargs) -> value of the solution's
    name (args None) or of calling it; every value is plain."""
    ev = lambda n: evaluate(n, ask)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return ask(node.id, None, None)
    if isinstance(node, ast.Call):
        args, kwargs = [ev(a) for a in node.args], {k.arg: ev(k.value) for k in node.keywords}
        helper = _helper_name(node.func)
        return HELPERS[helper](*args, **kwargs) if helper else ask(node.func.id, args, kwargs)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](ev(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return {ev(k): ev(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](ev(node.operand))
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.BoolOp):  # short-circuits like Python
        value = None
        for v in node.values:
            value = ev(v)
            if bool(value) == isinstance(node.op, ast.Or):
                break
        return value
    if isinstance(node, ast.Compare):  # a < b < c: each operand evaluated once, stops at the first False
        left = ev(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = ev(right_node)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        s = node.slice
        key = slice(*(ev(x) if x else None for x in (s.lower, s.upper, s.step))) if isinstance(s, ast.Slice) else ev(s)
        return ev(node.value)[key]
    raise AssertionError(f"unchecked node {type(node).__name__}")  # check_test refuses it


def plain_repr(value) -> str:
    """repr of `value` if it is built only of exact builtin plain types (no subclasses), which
    ast.literal_eval reads back as an equal value; TypeError naming the first other type."""
    todo = [value]
    while todo:
        x = todo.pop()
        t = type(x)
        if t in (list, tuple, set):
            todo.extend(x)
        elif t is dict:
            todo.extend(x.keys())
            todo.extend(x.values())
        elif t not in _PLAIN:
            raise TypeError(f"returned a {t.__module__}.{t.__qualname__}; a test compares only None, bool, int, "
                            "float, complex, str, bytes and lists, tuples, sets and dicts of them")
        elif t is float and not math.isfinite(x):
            raise TypeError(f"returned {x!r}, which a test cannot compare (not a literal)")
    return repr(value)


def status_of(exc_name: str) -> str:
    """Status of a test whose evaluation raised an exception of this type name."""
    return {"AssertionError": "failed", "MemoryError": "memory"}.get(exc_name, "error")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


# ------------------------------------------------------------ the harness process


class _Raised(Exception):
    """The solution raised; args: 'ExceptionType: message'."""


class _Gone(Exception):
    """The solution process stopped answering; args: status, message."""


def _run_assert_tests(tests: list[str], report) -> None:
    exprs = [check_test(t) for t in tests]  # the caller validated them; this only parses
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    server = subprocess.Popen([sys.executable, "-I", "-S", "-B", "harness.py", "serve", str(req_r), str(rep_w)],
                              pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL)
    os.close(req_r)
    os.close(rep_w)
    requests, replies = os.fdopen(req_w, "w"), os.fdopen(rep_r, "rb")

    def receive():
        line = replies.readline(_MAX_REPLY + 1)
        if not line.endswith(b"\n"):
            if len(line) > _MAX_REPLY:
                raise _Gone("error", f"a reply of the solution's process is over {_MAX_REPLY} bytes")
            rc = server.wait()
            raise _Gone("killed" if rc < 0 else "error", f"the solution's process ended (exit status {rc})")
        try:
            kind, payload = json.loads(line)
        except (ValueError, TypeError):
            raise _Gone("error", f"the solution's process sent a malformed reply {line[:100]!r}") from None
        if kind == "raise":
            raise _Raised(str(payload))
        return payload

    def ask(name, args, kwargs):
        try:
            requests.write(json.dumps([name, None if args is None else repr((tuple(args), kwargs))]) + "\n")
            requests.flush()
        except BrokenPipeError:
            pass  # the reply read says why
        return ast.literal_eval(receive())

    try:
        receive()  # the module body ran
        for i, (test, expr) in enumerate(zip(tests, exprs)):
            try:
                ok = bool(evaluate(expr, ask))
                report(i, "passed" if ok else "failed", "" if ok else f"{test[:200]} is false")
            except _Raised as e:
                report(i, status_of(str(e).split(":")[0]), str(e))
            except _Gone:
                raise
            except Exception as e:  # noqa: BLE001 - the test's evaluation failed, e.g. 1 < "a" or a bad reply
                report(i, status_of(type(e).__name__), _describe(e))
    except _Raised as e:  # by the module body
        report(-1, status_of(str(e).split(":")[0]), str(e))
    except _Gone as e:
        report(-1, *e.args)
    finally:
        server.kill()
        server.wait()


def _run_stdio_tests(tests: list[list[str]], report) -> None:
    def norm(s):
        return [line.rstrip() for line in s.rstrip().splitlines()]

    for i, (stdin, expected) in enumerate(tests):
        with open("stdin.txt", "w") as f:
            f.write(stdin)
        with open("stdin.txt") as fin, open("stdout.txt", "w") as fout:
            rc = subprocess.run([sys.executable, "-I", "-S", "-B", "solution.py"], stdin=fin, stdout=fout,
                                stderr=subprocess.DEVNULL).returncode
        with open("stdout.txt", errors="replace") as f:
            out = f.read(2 * len(expected) + 4096)
        if rc < 0:
            report(i, "killed", f"signal {-rc}")
        elif rc != 0:
            report(i, "error", f"exit code {rc}")
        else:
            report(i, "passed" if norm(out) == norm(expected) else "failed", "wrong output")


def _harness_main(result_fd: int, kind: str) -> None:
    import ctypes
    ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE=0: processes of our user cannot ptrace or read us

    def report(i, status, msg=""):
        os.write(result_fd, (json.dumps([i, status, msg[:300]]) + "\n").encode())

    with open("tests.json") as f:
        tests = json.load(f)
    os.unlink("tests.json")  # the expected answers exist only in this process from now on
    with open("solution.py", encoding="utf-8", errors="replace") as f:
        src = f.read()
    try:
        compile(src, "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        report(-1, "syntax", _describe(e))
        return
    (_run_assert_tests if kind == "assert" else _run_stdio_tests)(tests, report)


# --------------------------------------------------- the solution process (untrusted)


def _serve(req_fd: int, reply_fd: int) -> None:
    """Run solution.py, then answer [name, repr((args, kwargs)) or None] requests, one a line.
    Whatever the solution does to this process only changes the values it answers."""
    replies = os.fdopen(reply_fd, "w")

    def send(kind, payload):
        replies.write(json.dumps([kind, payload]) + "\n")
        replies.flush()

    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        with open("solution.py", encoding="utf-8", errors="replace") as f:
            exec(compile(f.read(), "solution.py", "exec"), ns)
    except BaseException as e:  # noqa: BLE001 - any failure of the module body is its verdict
        send("raise", _describe(e))
        return
    send("ready", None)
    for line in os.fdopen(req_fd):
        name, call = json.loads(line)
        try:
            if name not in ns:
                raise NameError(f"name {name!r} is not defined by the solution")
            value = ns[name]
            if call is not None:
                args, kwargs = ast.literal_eval(call)
                value = value(*args, **kwargs)
            send("ok", plain_repr(value))
        except BaseException as e:  # noqa: BLE001
            send("raise", _describe(e))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        _harness_main(int(sys.argv[1]), sys.argv[2])
