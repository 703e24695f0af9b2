"""Sandboxed code-execution reward (lightrl/rewards/code.py, sandbox.py, harness.py).

Every test that runs hostile code first requests `limits_proven`, which shows
with a harmless child (200 sleeping forks) that the process cap holds; only
then do fork bombs and big allocations run. Each sandbox test also checks that
the machine is left as it was: no new process in another network namespace or
running the launcher, no new sandbox temp dir.
"""
import ast
import errno
import glob
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from lightrl.rewards import harness
from lightrl.rewards import sandbox as sandbox_mod
from lightrl.rewards.code import SandboxUnavailable, code_reward, extract_code, run_code_tests
from lightrl.rewards.code import test_kind as kind_of  # not test_*: pytest would collect it

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = os.path.abspath(sandbox_mod.__file__)


def _usable_by_all(path: str) -> bool:
    """Can a user that is neither owner nor group run `path` (mode bits only)?"""
    path = os.path.realpath(path)
    dirs = [path]
    while dirs[-1] != "/":
        dirs.append(os.path.dirname(dirs[-1]))
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in dirs)


def _unconfined_python() -> str | None:
    """An interpreter that uid 65534 can run straight from the host filesystem: the
    unsafe mode needs one when the caller is root (the namespaced sandbox mounts its own)."""
    for cand in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and (os.geteuid() != 0 or _usable_by_all(cand)):
            return cand
    return None


def _sandbox_available() -> str | None:
    """Why the sandbox cannot run here, when the kernel refuses the namespaces; any other setup
    failure (say, an interpreter the sandbox cannot start) is a bug and must fail the tests."""
    try:
        run_code_tests("x = 1", ["assert x == 1"])
    except SandboxUnavailable as e:
        if "unshare(" not in str(e):
            raise
        return str(e)
    return None


_UNAVAILABLE = _sandbox_available() if sys.platform.startswith("linux") else "not linux"
needs_sandbox = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no namespaces here: {_UNAVAILABLE}")


def _our_processes() -> set[int]:
    """Pids of processes in another network namespace than ours, or running the launcher."""
    mine = os.readlink("/proc/self/ns/net")
    found = set()
    for d in glob.glob("/proc/[0-9]*"):
        try:
            net = os.readlink(f"{d}/ns/net")
            with open(f"{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue  # gone, or not ours to see
        if net != mine or LAUNCHER.encode() in cmd:
            found.add(int(d.rsplit("/", 1)[1]))
    return found


def _sandbox_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "lightrl-sandbox-*")))


@pytest.fixture
def clean_machine():
    """Fail unless the test leaves no sandbox process and no sandbox temp dir behind."""
    procs, dirs = _our_processes(), _sandbox_dirs()
    yield
    deadline = time.monotonic() + 3.0  # a killed namespace takes a moment to be torn down
    while (left := _our_processes() - procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sandbox processes left running: {sorted(left)}"
    assert _sandbox_dirs() == dirs, f"sandbox temp dirs left: {sorted(_sandbox_dirs() - dirs)}"


@pytest.fixture(scope="module")
def limits_proven():
    """The harmless cap test: a child tries to keep 200 sleeping children alive.
    Returns how many it managed; hostile tests run only if the cap held."""
    if _UNAVAILABLE is not None:
        pytest.skip(f"no namespaces here: {_UNAVAILABLE}")
    code = textwrap.dedent("""
        import os, time
        spawned, err = 0, None
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError as e:
                err = e
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            spawned += 1
        err_name = type(err).__name__
    """)
    before = _our_processes()
    t0 = time.monotonic()
    # init, the harness and the solution's process are three of the 16; the sleepers must all go with them.
    res = run_code_tests(code, ["assert err_name == 'BlockingIOError'", "assert 0 < spawned <= 13"],
                         max_procs=16, timeout=10)
    elapsed = time.monotonic() - t0
    assert res.statuses == ("passed", "passed"), res
    assert elapsed < 8, f"sleeping children kept the sandbox alive for {elapsed:.1f}s"
    deadline = time.monotonic() + 3.0
    while (left := _our_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sleeping children survived the sandbox: {sorted(left)}"


# ------------------------------------------------------------------ pure


def test_extract_code():
    text = "Idea first.\n```python\nx = 1\n```\nthen better:\n```py\ndef f():\n    return 2\n```\nDone."
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("def f(): return 3") == "def f(): return 3"
    assert extract_code("```\nnot python\n```") == "```\nnot python\n```"  # only python fences count


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mix"):
        run_code_tests("x = 1", ["assert x", ("1", "1")])
    with pytest.raises(ValueError, match=r"tests\[1\] is not valid Python"):
        run_code_tests("x = 1", ["assert x", "assert (x"])
    with pytest.raises(ValueError, match="non-empty"):
        run_code_tests("x = 1", [])
    with pytest.raises(ValueError, match="mode"):
        run_code_tests("x = 1", ["assert x"], mode="best")
    with pytest.raises(ValueError, match=r"memory_mb / max_procs >= 32; got timeout=5.0, memory_mb=256, max_procs=16"):
        run_code_tests("x = 1", ["assert x"], memory_mb=256, max_procs=16)


def test_test_forms():
    """Which assert tests the harness evaluates; the others are refused at load time, naming the part."""
    for ok in ["assert add(1, 2) == 3", "assert not is_prime(8)", "assert x", "assert f(g(2), k=[1, -2]) == {'a': (1,)}",
               "assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert sorted(f([3, 1]))[0] in {1, 2}",
               "assert 0 < f(1) <= 2 and f(2) is None or len(f(3)[1:]) != 2 ** 3", "assert True, 'message'"]:
        assert kind_of([ok]) == "assert"
    for bad, message in [
        ("add(1, 2) == 3", "expected one `assert EXPR` statement"),
        ("import math; assert f(1) == 1", "expected one `assert EXPR` statement"),
        ("assert obj.method(1) == 2", r"`obj.method\(1\)`: only the solution's functions by name"),
        ("assert Solution().f(1) == 2", r"`Solution\(\).f\(1\)`: only the solution's functions by name"),
        ("assert (lambda: 1)() == 1", r"`\(lambda: 1\)\(\)`: only the solution's functions by name"),
        ("assert f(*xs) == 1", r"`f\(\*xs\)`: no \*args"),
        ("assert [x for x in f()] == [1]", r"`\[x for x in f\(\)\]` \(ListComp\) is not supported"),
        ("assert math.pi == f()", r"`math.pi` \(Attribute\) is not supported"),
    ]:
        with pytest.raises(ValueError, match=r"tests\[1\] " + re.escape(repr(bad)) + ": " + message):
            kind_of(["assert True", bad])


def test_harness_evaluates_tests_itself():
    """Without a sandbox: the harness asks the solution only for names and calls, with plain values,
    and computes everything else (helpers included, even where the solution has such a name)."""
    asked = []
    values = {"f": lambda x: [x, x * 2], "g": lambda x: x + 1, "abs": lambda x: 0, "n": 4}

    def ask(name, args, kwargs):
        asked.append((name, args, kwargs))
        return values[name] if args is None else values[name](*args, **kwargs)

    def ev(src):
        asked.clear()
        return harness.evaluate(harness.check_test(src), ask)

    assert ev("assert f(g(1)) == [2, 4]") is True and asked == [("g", [1], {}), ("f", [2], {})]
    assert ev("assert abs(g(-5)) == 4") is True and [a[0] for a in asked] == ["g"]  # the builtin abs
    assert ev("assert g(0) > 5 and f(n)") is False and asked == [("g", [0], {})]  # short-circuits
    assert ev("assert 0 < g(0) < 2 <= n") is True
    assert ev("assert math.isclose(g(0.5), 1.5) and sorted(f(3))[-1] % 4 == 2") is True
    value = {"a": [(1, 2.5, None, -3j)], 2: {b"x", "y", False}, "": set()}
    assert ast.literal_eval(harness.plain_repr(value)) == value
    for bad, message in [(type("Int", (int,), {})(3), r"returned a \S*\.Int;"), (float("nan"), "returned nan"),
                         ([1, {2: object()}], "returned a builtins.object")]:
        with pytest.raises(TypeError, match=message):
            harness.plain_repr(bad)


# --------------------------------------------------------------- positive

SOLUTION = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]


@needs_sandbox
def test_correct_code_passes_all(clean_machine):
    res = run_code_tests(SOLUTION, ADD_TESTS)
    assert (res.reward, res.passed, res.total, res.reason) == (1.0, 3, 3, "ok")
    assert res.statuses == ("passed",) * 3


@needs_sandbox
def test_partial_fraction_and_all_mode(clean_machine):
    wrong = "def add(a, b):\n    return 5 if a == -1 else a + b\n"
    res = run_code_tests(wrong, ADD_TESTS)
    assert res.statuses == ("passed", "failed", "passed")
    assert res.reward == pytest.approx(2 / 3)
    assert run_code_tests(wrong, ADD_TESTS, mode="all").reward == 0.0
    assert run_code_tests(SOLUTION, ADD_TESTS, mode="all").reward == 1.0


@needs_sandbox
def test_stdio_tests(clean_machine):
    prog = "n = int(input())\nprint(n * 2, '  ')\nprint()\n"
    tests = [("3\n", "6"), ("5", "10\n\n"), ("7", "15"), ("x", "0")]
    res = run_code_tests(prog, tests)
    assert res.statuses == ("passed", "passed", "failed", "error")
    assert res.reward == pytest.approx(0.5)


@needs_sandbox
def test_syntax_error(clean_machine):
    res = run_code_tests("def add(a, b)\n    return a + b\n", ADD_TESTS)
    assert (res.reward, res.reason, res.statuses) == (0.0, "syntax", ("syntax",) * 3)
    assert "SyntaxError" in res.detail


@needs_sandbox
def test_code_reward_uses_last_python_block(clean_machine):
    completion = f"First try:\n```python\ndef add(a, b):\n    return 0\n```\nFixed:\n```python\n{SOLUTION}```"
    assert code_reward(completion, ADD_TESTS) == 1.0
    assert code_reward("```python\ndef add(a, b):\n    return 0\n```", ADD_TESTS) == pytest.approx(1 / 3)


@needs_sandbox
def test_clean_environment_and_identity(clean_machine, monkeypatch):
    monkeypatch.setenv("LIGHTRL_SECRET_FOR_TEST", "leak")
    probe = textwrap.dedent("""
        import ctypes, os, sys
        env = dict(os.environ)
        ids = [os.getuid(), os.geteuid()]
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith(("CapPrm", "CapEff"))]
        flags = (sys.flags.isolated, sys.flags.no_site)
        unshare_rc = ctypes.CDLL(None).unshare(0x10000000)  # CLONE_NEWUSER
        with open("here.txt", "w") as f:  # the private working dir is writable
            f.write("ok")
        def read_here():
            return open("here.txt").read()
    """)
    tests = [
        "assert set(env) == {'PATH', 'LANG', 'HOME', 'TMPDIR'}",
        "assert 0 not in ids",
        "assert caps == ['0' * 16] * 2",
        "assert flags == (1, 1)",
        "assert len(pids) <= 4",  # its own pid namespace: init, harness, solution (and maybe a child)
        "assert read_here() == 'ok'",
        "assert unshare_rc != 0",  # no user namespace of its own
    ]
    res = run_code_tests(probe, tests)
    assert res.statuses == ("passed",) * 7, res


@needs_sandbox
def test_from_threads(clean_machine):
    results = {}

    def work(i):
        code = SOLUTION if i % 2 == 0 else "def add(a, b):\n    return abs(a) + b\n"
        results[i] = run_code_tests(code, ADD_TESTS).reward

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: 1.0, 1: pytest.approx(1 / 3), 2: 1.0, 3: pytest.approx(1 / 3)}


# ------------------------------------------------------------------ cheating
# Completions that scored 1.0 on assert tests without implementing add (issue #11). Each must
# score 0 now: the solution's process holds no result fd, no test text and no expected value,
# and the harness compares only plain values it decoded itself.

_FAKE = 'b"".join(b\'[%d, "passed", ""]\\n\' % i for i in range(-1, 8))'
HACKS = {
    "fake records on every fd": f"""
import glob, os, sys
FAKE = {_FAKE}
for fd in [int(a) for a in sys.argv[1:] if a.isdigit()] + list(range(3, 256)):
    try:
        os.write(fd, FAKE)
    except OSError:
        pass
for path in glob.glob("/proc/*/fd/*"):
    try:
        with open(path, "wb") as f:
            f.write(FAKE)
    except OSError:
        pass
def add(a, b):
    return None
""",
    "__eq__ always true": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def add(a, b):
    return Anything()
""",
    "int subclass equal to all": """
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def add(a, b):
    return Int(0)
""",
    "builtins.compile replaced": """
import builtins
real = builtins.compile
builtins.compile = lambda *a, **k: real("pass", "<nothing>", "exec")
def add(a, b):
    return None
""",
    "builtins.exec replaced": """
import builtins
builtins.exec = lambda *a, **k: None
def add(a, b):
    return None
""",
    "__main__.status_of patched": """
import __main__
__main__.status_of = lambda e: "passed"
def add(a, b):
    return None
""",
    "__main__.report patched": """
import __main__
real = getattr(__main__, "report", None)
__main__.report = lambda i, status, msg="": real(i, "passed")
def add(a, b):
    return None
""",
    "__main__.json patched": """
import __main__, json
class FakeJson:
    loads = staticmethod(json.loads)
    @staticmethod
    def dumps(obj, **kwargs):
        return json.dumps([obj[0], "passed", ""] if isinstance(obj, list) and len(obj) == 3 else obj, **kwargs)
__main__.json = FakeJson
def add(a, b):
    return None
""",
    "__main__.enumerate patched": """
import __main__
__main__.enumerate = lambda seq, start=0: [(i, "pass") for i in range(len(seq))]
def add(a, b):
    return None
""",
}


@needs_sandbox
@pytest.mark.parametrize("hack", sorted(HACKS))
def test_cheats_score_zero(hack, clean_machine):
    res = run_code_tests(HACKS[hack], ADD_TESTS)
    assert (res.reward, res.passed) == (0.0, 0), res
    assert "passed" not in res.statuses, res


LEAK_HUNTER = r"""
import __main__, ast, gc, glob, json, re, sys
seen = [repr(vars(__main__)), repr(sys.argv), repr([o for o in gc.get_objects() if isinstance(o, (list, dict))])]
for path in ["tests.json"] + glob.glob("/proc/*/cmdline") + glob.glob("/proc/*/environ"):
    try:
        seen.append(open(path, "rb").read(1 << 20).decode("latin-1"))
    except OSError:
        pass
for maps in glob.glob("/proc/*/maps"):  # every writable mapping of every process we may read
    try:
        with open(maps) as f, open(maps[:-4] + "mem", "rb") as mem:
            for line in f:
                span, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in span.split("-"))
                if perms.startswith("rw") and hi - lo < 64 << 20:
                    try:
                        mem.seek(lo)
                        seen.append(mem.read(hi - lo).decode("latin-1"))
                    except (OSError, ValueError, OverflowError):
                        pass
    except OSError:
        pass
TEXT = "\n".join(seen)
"""
ASSERT_LEAK = LEAK_HUNTER + r"""
def add(a, b):
    m = re.search(re.escape(f"add({a!r}, {b!r}) == ") + r"('[^']*'|-?\d+)", TEXT)
    return ast.literal_eval(m.group(1)) if m else None
"""
STDIO_LEAK = LEAK_HUNTER + r"""
m = re.search(re.escape(json.dumps(sys.stdin.read())) + r', "(\d+)', TEXT)
print(m.group(1) if m else "?")
"""
DOUBLE_TESTS = [("3\n", "6\n"), ("5\n", "10\n")]


@needs_sandbox
def test_expected_values_out_of_reach(clean_machine):
    """Code that searches every place it can read for the tests' expected values finds none;
    the control shows that the same search finds them once they are within its reach."""
    assert run_code_tests(ASSERT_LEAK, ADD_TESTS, timeout=10, memory_mb=4096).statuses == ("failed",) * 3
    assert run_code_tests(STDIO_LEAK, DOUBLE_TESTS, timeout=10, memory_mb=4096).statuses == ("failed",) * 2
    # The control: the tests in one of the searched places, as the old runner's __main__.tests were.
    for code, tests in [(ASSERT_LEAK, ADD_TESTS), (STDIO_LEAK, DOUBLE_TESTS)]:
        in_reach = f"TESTS = {json.dumps(tests)!r}\n" + code
        assert run_code_tests(in_reach, tests, timeout=10, memory_mb=4096).reward == 1.0


HONEST = """
import math
def add(a, b):
    return a + b
def pair(x):
    return [x, (x, "a")]
def is_prime(n):
    return n > 1 and all(n % d for d in range(2, n))
def area(r):
    return math.pi * r * r
def uniq(xs):
    return set(xs)
def table():
    return {"a": {1, 2}, "b": None, 3: b"x"}
def nothing():
    pass
def as_tuple(*xs):
    return xs
LIMIT = 10
"""
HONEST_TESTS = [
    "assert add(1, 2) == 3", "assert add(add(1, 2), -4) == -1", "assert add(1.5, 1.5) == 3",
    "assert add('a', 'b') == 'ab', 'message'", "assert pair(2) == [2, (2, 'a')]", "assert is_prime(7)",
    "assert not is_prime(8)", "assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert sorted(uniq([3, 1, 3])) == [1, 3]",
    "assert table()['a'] == {2, 1} and table()[3] == b'x'", "assert table()['b'] is None", "assert nothing() is None",
    "assert 0 < add(1, 0) <= LIMIT", "assert len(pair(1)[1:]) == 1", "assert as_tuple(1, 2) == (1, 2)",
    "assert add(x=1, y=2) == 3",  # add has no such keywords: TypeError in the solution
    "assert as_tuple(1, 2) == [1, 2]",  # a tuple is not a list, as in Python
    "assert add(1, 2) == 4", "assert add(1, 2) < 'a'",  # false; a comparison that raises
]


@needs_sandbox
def test_honest_solution_scores_its_tests(clean_machine):
    res = run_code_tests(HONEST, HONEST_TESTS)
    assert res.statuses == ("passed",) * 15 + ("error", "failed", "failed", "error"), res
    assert run_code_tests(HONEST, HONEST_TESTS[:15]).reward == 1.0


# ---------------------------------------------------------------- hostile


def test_process_cap_holds(limits_proven, clean_machine):
    pass  # the fixture's assertions are the test


@needs_sandbox
def test_fork_bomb(limits_proven, clean_machine):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    out = {}
    t0 = time.monotonic()
    def run_bomb():
        out["bomb"] = run_code_tests(bomb, ADD_TESTS, timeout=2.0, max_procs=16)

    thread = threading.Thread(target=run_bomb)
    thread.start()
    # The cap is per sandbox: a neighbour can still fork while the bomb is at its cap.
    time.sleep(0.5)
    forks_once = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(7)\ncode = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
    assert run_code_tests(forks_once, ["assert code == 7"]).reward == 1.0
    thread.join(30)
    assert time.monotonic() - t0 < 2.0 + 3
    res = out["bomb"]
    assert (res.reward, res.reason) == (0.0, "timeout")
    assert res.statuses == ("timeout",) * 3


@needs_sandbox
def test_infinite_loop(clean_machine, limits_proven):
    t0 = time.monotonic()
    res = run_code_tests(SOLUTION + "while True:\n    pass\n", ADD_TESTS, timeout=1.0)
    assert time.monotonic() - t0 < 1.0 + 3
    assert (res.reward, res.reason) == (0.0, "timeout")
    # A loop inside one test keeps the verdicts reached before it.
    res = run_code_tests(SOLUTION + "def spin():\n    while True:\n        pass\n", ADD_TESTS[:2] + ["assert spin()"],
                         timeout=1.0)
    assert res.statuses == ("passed", "passed", "timeout")
    assert res.reward == pytest.approx(2 / 3)


@needs_sandbox
def test_huge_allocation(limits_proven, clean_machine):
    t0 = time.monotonic()
    res = run_code_tests(SOLUTION + "block = bytearray(10 * 2**30)\n", ADD_TESTS, timeout=5.0)
    assert time.monotonic() - t0 < 4
    assert (res.reward, res.reason) == (0.0, "memory")
    assert "MemoryError" in res.detail


@needs_sandbox
def test_no_network(limits_proven, clean_machine):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        probe = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
        res = run_code_tests(SOLUTION + probe, ADD_TESTS)
        assert res.reward == 0.0 and res.reason == "error", res
        assert "unreachable" in res.detail.lower() or "refused" in res.detail.lower(), res.detail
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached our listener


@needs_sandbox
def test_host_filesystem_hidden_and_read_only(limits_proven, clean_machine):
    marker = f"lightrl-escape-{uuid.uuid4().hex}"
    targets = [Path(tempfile.gettempdir()) / marker, REPO / marker, Path("/dev/shm") / marker, Path("/usr") / marker]
    tests = [f"assert write({str(t)!r}) == 1" for t in targets]
    tests += [
        f"assert read({str(REPO / 'pyproject.toml')!r})",  # the repo (and any data) is not there to read
        "assert write('inside.txt') == 1",  # the control: its own dir is writable
    ]
    probe = "def write(path):\n    return open(path, 'w').write('x')\ndef read(path):\n    return open(path).read()\n"
    try:
        res = run_code_tests(probe, tests)
        escaped = [t for t in targets if t.exists()]
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
    assert not escaped, f"sandboxed code wrote {escaped}"
    # /tmp inside is the code's own private dir; the others do not exist or are read-only.
    assert res.statuses == ("passed", "error", "error", "error", "error", "passed"), res
    assert "No such file or directory" in res.detail, res.detail


@needs_sandbox
def test_huge_output(limits_proven, clean_machine):
    t0 = time.monotonic()
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    res = run_code_tests(SOLUTION + flood, ADD_TESTS, timeout=10)
    assert time.monotonic() - t0 < 5
    assert (res.reward, res.reason, res.statuses) == (0.0, "output", ("output",) * 3)


# ------------------------------------------------------- per-sandbox limits


@needs_sandbox
def test_memory_budget_is_per_sandbox(limits_proven, clean_machine):
    """5 children of 800 MB each once raised host memory by GBs: each process now gets
    memory_mb / max_procs (1024 / 8 = 128 MiB), so all of them together stay within memory_mb."""
    probe = textwrap.dedent("""
        import os
        codes = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                try:
                    block = bytearray(800 << 20)
                    os._exit(0)
                except MemoryError:
                    os._exit(3)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        size = len(bytearray(64 << 20))  # the control: within the process' share
    """)
    res = run_code_tests(probe, ["assert codes == [3] * 5", "assert size == 67108864"],
                         memory_mb=1024, max_procs=8)
    assert res.statuses == ("passed", "passed"), res


@needs_sandbox
def test_file_count_capped(limits_proven, clean_machine):
    probe = textwrap.dedent("""
        n, err = 0, None
        while n < 100_000:
            try:
                open(f"f{n}", "w").close()
            except OSError as e:
                err = e.errno
                break
            n += 1
    """)
    res = run_code_tests(probe, [f"assert err == {errno.ENOSPC}", f"assert {sandbox_mod.TMPFS_INODES} - 10 < n "
                                 f"< {sandbox_mod.TMPFS_INODES}"], timeout=10)
    assert res.statuses == ("passed", "passed"), res


def _package_dirs() -> list[str]:
    """The host's installed-package dirs below the dirs the sandbox mounts."""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    bases = [d for d in sandbox_mod._SYSTEM_DIRS + (prefix,) if os.path.isdir(d) and not os.path.islink(d)]
    return sorted({p for d in bases for pattern in sandbox_mod._PACKAGE_DIRS for p in glob.glob(f"{d}/{pattern}")})


@needs_sandbox
def test_only_the_standard_library_imports(limits_proven, clean_machine):
    dirs = [d for d in _package_dirs() if os.listdir(d)]
    if not dirs:
        pytest.skip("this host has no installed packages below the mounted dirs to hide")
    name = next((n for d in dirs for n in sorted(os.listdir(d)) if os.path.isfile(f"{d}/{n}/__init__.py")), None)
    probe = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = {dirs!r}  # what a solution after numpy would try
        listed = sorted(n for d in sys.path[:{len(dirs)}] if os.path.isdir(d) for n in os.listdir(d))
        try:
            __import__({name!r})
            outcome = "imported"
        except ImportError as e:
            outcome = type(e).__name__
        import json  # the standard library is there
    """)
    res = run_code_tests(probe, ["assert listed == []", "assert outcome == 'ModuleNotFoundError'"])
    assert res.statuses == ("passed", "passed"), (res, dirs, name)


@needs_sandbox
def test_killed_caller_takes_its_sandbox_along(limits_proven, clean_machine):
    """kill -9 of the scoring process once left the sandbox running for timeout + 5 s and a
    /tmp/lightrl-sandbox-* dir behind; now every sandbox process dies with its parent."""
    before_procs, before_dirs = _our_processes(), _sandbox_dirs()
    script = ("from lightrl.rewards.code import run_code_tests\n"
              "run_code_tests('import time\\ndef f():\\n    time.sleep(60)\\n', ['assert f()'], timeout=30)\n")
    scorer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not _solution_running(_our_processes() - before_procs):
            assert time.monotonic() < deadline and scorer.poll() is None, "the sandbox did not start"
            time.sleep(0.05)
        assert len(_our_processes() - before_procs) >= 4  # launcher, its fork, init, harness, solution
    finally:
        scorer.kill()
        scorer.wait()
    deadline = time.monotonic() + 2.0
    while (left := _our_processes() - before_procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sandbox processes outlived their killed caller: {sorted(left)}"
    assert _sandbox_dirs() == before_dirs


def _solution_running(pids) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"harness.py\0serve" in f.read():
                    return True
        except OSError:
            pass
    return False


# ------------------------------------------------------------- no namespaces


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_refuses_without_namespaces(clean_machine):
    """Inside a user namespace that may not create further ones, the call refuses."""
    script = textwrap.dedent("""
        from lightrl.rewards.code import SandboxUnavailable, run_code_tests
        try:
            run_code_tests("x = 1", ["assert x == 1"])
            print("RAN")
        except SandboxUnavailable as e:
            print("REFUSED", "unsafe_no_namespaces=True" in str(e))
    """)
    cmd = ["unshare", "--user", "--map-root-user", "sh", "-c",
           'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"', sys.executable, script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if "REFUSED" not in out.stdout and "RAN" not in out.stdout:
        pytest.skip(f"cannot build the test's user namespace: {out.stderr.strip()[-300:]}")
    assert out.stdout.split() == ["REFUSED", "True"], out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or _unconfined_python() is None,
                    reason="checks the privilege drop of a root caller; needs a Python that nobody can run")
def test_unsafe_mode_still_drops_root(clean_machine):
    marker = REPO / f"lightrl-escape-{uuid.uuid4().hex}"
    tests = ["assert ids == [65534, []]", f"assert write({str(marker)!r})", "assert add(2, 2) == 4"]
    probe = "import os\nids = [os.getuid(), os.getgroups()]\ndef write(path):\n    return open(path, 'w').write('x')\n"
    try:
        res = run_code_tests(SOLUTION + probe, tests, unsafe_no_namespaces=True, python=_unconfined_python())
        escaped = marker.exists()
    finally:
        marker.unlink(missing_ok=True)
    assert res.statuses == ("passed", "error", "passed"), res
    assert "Permission denied" in res.detail and not escaped
