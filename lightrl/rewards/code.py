"""Code-execution reward: run model-written Python against test cases in a sandbox.

Test cases come in one of two formats (one format per call):

- assert tests, ``list[str]``: one ``assert EXPR`` statement each, such as
  ``"assert add(2, 3) == 5"``, ``"assert not is_prime(8)"`` or
  ``"assert math.isclose(area(2), 12.566, rel_tol=1e-3)"``. EXPR may use literals, calls of
  the solution's functions by name (arguments: such expressions), its module-level names,
  comparisons, ``and``/``or``/``not``, arithmetic, subscripts and the builtins in
  ``harness.HELPERS``; other tests are refused when the data is loaded (``test_kind``).
  The solution runs once (as module ``solution``, so an ``if __name__ == "__main__":`` block
  does not run) in its own process, which only answers "call f with these values" with the
  plain result (None, bool, int, float, complex, str, bytes and lists, tuples, sets, dicts
  of them; exact types). Everything else of the test, the expected values included, is
  evaluated by the harness in another process: a test passes if EXPR is true there.
- stdio tests, ``list[tuple[str, str]]``: ``(stdin, expected_stdout)`` pairs.
  The solution runs as a fresh script per test with ``stdin`` on its standard
  input. A test passes if the script exits 0 and its output equals the expected
  output after trailing whitespace is removed from every line and trailing
  blank lines are dropped.

This module is the caller's side: it starts the launcher (lightrl/rewards/sandbox.py, which
builds the sandbox: namespaces, read-only minimal root, limits; see its docstring), feeds it
the job, enforces the wall-clock timeout and the output cap, and scores the results that the
harness (lightrl/rewards/harness.py) reports. A wall-clock timeout kills the launcher's
process group, which holds the namespace's init; when the init dies the kernel kills every
process in the pid namespace. If the namespaces cannot be created the call raises
SandboxUnavailable, unless the caller passes ``unsafe_no_namespaces=True``: then only the
rlimits, the privilege drop (when root), a host temp dir and the process-group kill remain.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from lightrl.rewards import sandbox
from lightrl.rewards.harness import check_test

_MAX_OUTPUT_BYTES = 1 << 20  # stdout+stderr of the whole run; more kills it
_KILL_GRACE_S = 2.0  # after a kill, how long to wait for the pipes to close
_MIN_PROCESS_MB = 32  # RLIMIT_AS of each process; an interpreter needs about 15 MB to start

_MODES = ("fraction", "all")


class SandboxUnavailable(RuntimeError):
    """The sandbox could not be set up here (no namespaces, no permission, ...)."""


@dataclass(frozen=True)
class CodeResult:
    """Outcome of one sandboxed run.

    statuses: one per test: passed, failed (assertion false / wrong output), error
    (other exception, bad exit, a result that is not a plain value), syntax, memory,
    timeout, output (output cap), killed (died by a signal, e.g. the CPU limit).
    reason: how the run as a whole ended: ok (every test ran), or the status
    that stopped it early.
    """

    reward: float
    passed: int
    total: int
    statuses: tuple[str, ...]
    reason: str
    detail: str  # first error message, or the start of stderr; for debugging


def run_code_tests(
    code: str,
    tests: list[str] | list[tuple[str, str]],
    *,
    mode: str = "fraction",
    timeout: float = 5.0,
    memory_mb: int = 1024,
    max_procs: int = 8,
    python: str | None = None,
    unsafe_no_namespaces: bool = False,
) -> CodeResult:
    """Run `code` against `tests` in the sandbox and score it.

    mode: "fraction" -> reward = passed / total; "all" -> 1.0 only if every test passes.
    timeout: wall-clock seconds for the whole run (all tests); also the CPU-time
    limit of each process.
    memory_mb: address space of the whole sandbox: each of its at most max_procs
    processes (and threads, the harness's included) gets memory_mb / max_procs, which
    must be at least 32. The 64 MiB tmpfs working dir comes on top.
    python: interpreter that runs the code (default: this one). Its prefix
    (<prefix>/bin/python) is mounted into the sandbox; with unsafe_no_namespaces
    the sandbox user (nobody when the caller is root) must be able to run it as is.
    unsafe_no_namespaces: skip the namespaces, i.e. run WITHOUT network and
    filesystem isolation (for machines that cannot create them). Never set it
    for code you would not run yourself.
    Thread-safe; each call uses its own processes.
    """
    kind = test_kind(tests)
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r}: expected one of {_MODES}")
    if not timeout > 0 or max_procs < 3 or memory_mb // max_procs < _MIN_PROCESS_MB:
        raise ValueError(
            f"need timeout > 0, max_procs >= 3 (init, harness, solution) and memory_mb / max_procs >= "
            f"{_MIN_PROCESS_MB}; got timeout={timeout}, memory_mb={memory_mb}, max_procs={max_procs}"
        )
    uid, gid = sandbox.sandbox_ids()
    # Without namespaces the code needs a host dir; with them its root is a tmpfs that leaves nothing behind.
    workdir = tempfile.mkdtemp(prefix="lightrl-sandbox-") if unsafe_no_namespaces else None
    res_r, res_w = os.pipe()
    proc = None
    try:
        job = {
            "code": code, "tests": tests, "kind": kind, "workdir": workdir,
            "result_fd": res_w, "isolate": not unsafe_no_namespaces, "root": os.geteuid() == 0,
            "uid": uid, "gid": gid, "timeout": timeout, "memory_mb": memory_mb,
            # Resolved here, on the host: a venv's link (often under /tmp) does not exist in the new root.
            "max_procs": max_procs, "python": os.path.realpath(python or sys.executable),
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(sandbox.__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(res_w,), start_new_session=True, cwd="/", env=sandbox.clean_env(workdir or "/tmp"),
        )
        os.close(res_w)
        res_w = -1
        deadline = time.monotonic() + timeout
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the launcher died; its exit code and stderr say why
        stopped, records, stderr = _collect(proc, res_r, deadline)
    finally:
        if proc is not None:
            _kill_group(proc)  # whatever of the sandbox is still around
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
        for fd in (res_r, res_w):
            if fd >= 0:
                os.close(fd)
        if workdir is not None:
            shutil.rmtree(workdir)
    if proc.returncode == sandbox.SETUP_FAILED:
        raise SandboxUnavailable(_setup_message(stderr, unsafe_no_namespaces))
    return _score(records, len(tests), mode, stopped, proc.returncode, stderr)


def code_reward(completion: str, tests: list[str] | list[tuple[str, str]], **kwargs) -> float:
    """Reward of a model completion: the last ```python block (or the whole text) run
    against `tests`; keyword arguments go to run_code_tests."""
    return run_code_tests(extract_code(completion), tests, **kwargs).reward


_FENCE = re.compile(r"```(?:python3?|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """The last ```python (or ```py) fenced block of `completion`, else all of it."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


# ---------------------------------------------------------------- caller side


def test_kind(tests) -> str:
    """"assert" or "stdio" for a valid test list; ValueError naming what is wrong otherwise
    (also used by lightrl.data to reject bad rows at load time)."""
    if not isinstance(tests, (list, tuple)) or not tests:
        raise ValueError("tests: expected a non-empty list of assert strings or (stdin, stdout) pairs")
    if all(isinstance(t, str) for t in tests):
        for i, t in enumerate(tests):
            try:
                check_test(t)
            except SyntaxError as e:
                raise ValueError(f"tests[{i}] is not valid Python ({e.msg}): {t!r}") from None
            except ValueError as e:
                raise ValueError(f"tests[{i}] {t!r}: {e}") from None
        return "assert"
    if all(isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in tests):
        return "stdio"
    raise ValueError(
        "tests: expected all assert strings (e.g. 'assert f(1) == 2') or all "
        "(stdin, expected_stdout) string pairs, not a mix or other types"
    )


def _collect(proc, res_r, deadline):
    """Read the launcher's stdout, stderr and result pipe until they close.
    Returns (why the run was stopped or None, result lines, start of stderr)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    sel.register(res_r, selectors.EVENT_READ)
    stopped, out_bytes, results, stderr = None, 0, bytearray(), bytearray()
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            if stopped is not None:
                break  # killed and still not closed: give up waiting
            stopped = "timeout"
            _kill_group(proc)
            deadline = time.monotonic() + _KILL_GRACE_S
            continue
        for key, _ in sel.select(left):
            fd = key.fd if isinstance(key.fileobj, int) else key.fileobj.fileno()
            data = os.read(fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            if stopped is not None:
                continue  # draining after a kill
            if key.fileobj is res_r:
                results += data
                too_much = len(results) > _MAX_OUTPUT_BYTES
            else:
                out_bytes += len(data)
                if key.fileobj is proc.stderr and len(stderr) < 4096:
                    stderr += data[: 4096 - len(stderr)]
                too_much = out_bytes > _MAX_OUTPUT_BYTES
            if too_much:
                stopped = "output"
                _kill_group(proc)
                deadline = time.monotonic() + _KILL_GRACE_S
    sel.close()
    # Wait for the launcher to exit, without reaping it (see _kill_group).
    while not os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
        if time.monotonic() > deadline:
            stopped = stopped or "timeout"
            break
        time.sleep(0.005)
    lines = results.decode("utf-8", "replace").split("\n")[:-1]  # drop a torn last line
    return stopped, lines, stderr.decode("utf-8", "replace")


def _kill_group(proc) -> None:
    """SIGKILL the launcher's process group: the launcher, the namespace's init (whose
    death takes the whole pid namespace with it) and, without namespaces, the code's
    processes. Call it only before the launcher is reaped: until then its pid, which
    is the group's id, cannot be reused by an unrelated process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _score(lines, total, mode, stopped, returncode, stderr) -> CodeResult:
    statuses: list[str | None] = [None] * total
    rest, detail = None, ""
    for line in lines:
        try:
            i, status, msg = json.loads(line)
        except (ValueError, TypeError):
            continue
        if i == -1 and rest is None:
            rest, detail = status, detail or msg
        elif isinstance(i, int) and 0 <= i < total and statuses[i] is None:
            statuses[i] = status
            if status != "passed" and not detail:
                detail = msg
    if stopped is None and rest is None and None in statuses:
        stopped = "killed" if returncode >= 128 or returncode < 0 else "error"
    reason = stopped or rest or "ok"
    final = tuple(s if s is not None else (rest or stopped or "error") for s in statuses)
    passed = final.count("passed")
    reward = passed / total if mode == "fraction" else float(passed == total)
    return CodeResult(reward, passed, total, final, reason, detail or stderr[:500])


def _setup_message(stderr: str, unsafe: bool) -> str:
    msg = f"code sandbox could not be set up: {stderr.strip() or 'launcher failed without a message'}"
    if "cannot run the interpreter" in stderr:
        msg += (". Pass python=... an interpreter that the sandbox user (uid 65534 when the caller is "
                "root) can run, e.g. '/usr/bin/python3'")
    elif not unsafe and "unshare" in stderr:
        msg += (
            ". It needs Linux user, mount, network and pid namespaces (root, or unprivileged "
            "user namespaces enabled: sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0, "
            "no seccomp filter blocking unshare). To run model code WITHOUT network and filesystem "
            "isolation anyway, pass unsafe_no_namespaces=True."
        )
    return msg
