"""Sandboxed code-execution reward (lightrl/rewards/code.py).

Every test that runs hostile code first requests `limits_proven`, which shows
with a harmless child (200 sleeping forks) that the process cap holds; only
then do fork bombs and big allocations run. Each sandbox test also checks that
the machine is left as it was: no new process in another network namespace or
running the launcher, no new sandbox temp dir.
"""
import glob
import os
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

from lightrl.rewards import code as code_mod
from lightrl.rewards.code import SandboxUnavailable, code_reward, extract_code, run_code_tests

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = os.path.abspath(code_mod.__file__)


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
    """)
    before = _our_processes()
    t0 = time.monotonic()
    # The second test fails on purpose so that its message carries the count.
    res = run_code_tests(code, ["assert isinstance(err, BlockingIOError), repr(err)", "assert False, spawned"],
              max_procs=16, timeout=10)
    elapsed = time.monotonic() - t0
    assert res.statuses == ("passed", "failed"), res
    spawned = int(res.detail.split(":")[1])
    # The runner itself is one of the 16; its sleepers must all be gone with it.
    assert 0 < spawned <= 15, spawned
    assert elapsed < 8, f"sleeping children kept the sandbox alive for {elapsed:.1f}s"
    deadline = time.monotonic() + 3.0
    while (left := _our_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sleeping children survived the sandbox: {sorted(left)}"
    return spawned


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
        import os, sys
        env = dict(os.environ)
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith(("CapPrm", "CapEff"))]
        with open("here.txt", "w") as f:  # the private working dir is writable
            f.write("ok")
    """)
    tests = [
        "assert set(env) == {'PATH', 'LANG', 'HOME', 'TMPDIR'}, env",
        "assert os.getuid() != 0 and os.geteuid() != 0",
        "assert caps == ['0' * 16] * 2, caps",
        "assert sys.flags.isolated and sys.flags.no_site",
        "assert len(pids) <= 3, pids",  # its own pid namespace: init, runner (and maybe a child)
        "assert open('here.txt').read() == 'ok'",
        "import ctypes; assert ctypes.CDLL(None).unshare(0x10000000) != 0",  # no user namespace of its own
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


# ---------------------------------------------------------------- hostile


def test_process_cap_holds(limits_proven, clean_machine):
    assert 0 < limits_proven <= 15


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
    forks_once = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(7)\nstatus = os.waitpid(pid, 0)[1]\n"
    assert run_code_tests(forks_once, ["assert os.waitstatus_to_exitcode(status) == 7"]).reward == 1.0
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
    res = run_code_tests(SOLUTION, ADD_TESTS[:2] + ["while True: pass"], timeout=1.0)
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
    tests = [f"open({str(t)!r}, 'w').write('x')" for t in targets]
    tests += [
        f"open({str(REPO / 'pyproject.toml')!r}).read()",  # the repo (and any data) is not there to read
        "open('inside.txt', 'w').write('x')",  # the control: its own dir is writable
    ]
    try:
        res = run_code_tests(SOLUTION, tests)
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


# ------------------------------------------------------------- no namespaces


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_refuses_without_namespaces(clean_machine):
    """Inside a user namespace that may not create further ones, the call refuses."""
    script = textwrap.dedent(f"""
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
    tests = ["assert os.getuid() == 65534 and os.getgroups() == []", f"open({str(marker)!r}, 'w')",
             "assert add(2, 2) == 4"]
    try:
        res = run_code_tests(SOLUTION + "import os\n", tests, unsafe_no_namespaces=True, python=_unconfined_python())
        escaped = marker.exists()
    finally:
        marker.unlink(missing_ok=True)
    assert res.statuses == ("passed", "error", "passed"), res
    assert "Permission denied" in res.detail and not escaped
