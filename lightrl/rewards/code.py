"""Code-execution reward: run model-written Python against test cases in a sandbox.

Test cases come in one of two formats (one format per call):

- assert tests, ``list[str]``: Python statements such as ``"assert add(2, 3) == 5"``.
  The solution is executed once (as module ``solution``, so an
  ``if __name__ == "__main__":`` block does not run), then each test is executed
  in the solution's namespace. A test passes if it raises nothing.
- stdio tests, ``list[tuple[str, str]]``: ``(stdin, expected_stdout)`` pairs.
  The solution runs as a fresh script per test with ``stdin`` on its standard
  input. A test passes if the script exits 0 and its output equals the expected
  output after trailing whitespace is removed from every line and trailing
  blank lines are dropped.

The sandbox (Linux only). A launcher process (this file run as a script, as the
caller's user) forks a child that unshares user, mount, network, pid, IPC and
UTS namespaces; the launcher maps one unprivileged id into the user namespace
(nobody/65534 when the caller is root, the caller's own id otherwise). Inside:
- no network: the new network namespace has only a loopback device, and it is down;
- a minimal root (chroot): /usr, /etc, /lib*, /bin, /sbin and the interpreter's
  prefix bind-mounted read-only and nosuid, /dev/{null,zero,full,random,urandom},
  a fresh /proc that shows only the sandbox (where the kernel allows it), and a
  private size-limited tmpfs /tmp as the working directory. Home dirs, the repo,
  data sets and the host's /tmp are not there. Everything lives on a tmpfs over
  a host temp dir that stays empty and is removed afterwards;
- the code runs as the unprivileged id with no capabilities, no_new_privs, no
  user namespaces of its own, an environment of PATH, LANG, HOME and TMPDIR
  only, and ``python -I -S -B`` (stdlib only, no site-packages);
- RLIMIT_AS (memory per process), RLIMIT_CPU, RLIMIT_NPROC (counted per user
  namespace, so concurrent sandboxes do not share the cap), RLIMIT_FSIZE,
  RLIMIT_NOFILE, no core files;
- a wall-clock timeout kills the launcher's process group, which holds the
  namespace's init; when the init dies the kernel kills every process in the
  pid namespace, including ones that left the process group;
- stdout+stderr are capped; exceeding the cap kills the run.
If the namespaces cannot be created the call raises SandboxUnavailable, unless
the caller passes ``unsafe_no_namespaces=True``: then only the rlimits, the
privilege drop (when root), the temp dir and the process-group kill remain.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

_NOBODY = 65534
_MAX_OUTPUT_BYTES = 1 << 20  # stdout+stderr of the whole run; more kills it
_MAX_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE: largest file the code may write
_TMPFS_BYTES = 64 << 20  # the working directory's total size
_MAX_OPEN_FILES = 256
_SETUP_FAILED = 97  # launcher exit code: the sandbox could not be built
_KILL_GRACE_S = 2.0  # after a kill, how long to wait for the pipes to close
# Host dirs the code sees (read-only), besides the interpreter's prefix.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")

_MODES = ("fraction", "all")


class SandboxUnavailable(RuntimeError):
    """The sandbox could not be set up here (no namespaces, no permission, ...)."""


@dataclass(frozen=True)
class CodeResult:
    """Outcome of one sandboxed run.

    statuses: one per test: passed, failed (assertion / wrong output), error
    (other exception or bad exit), syntax, memory, timeout, output (output cap),
    killed (died by a signal, e.g. the CPU limit).
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
    max_procs: int = 32,
    python: str | None = None,
    unsafe_no_namespaces: bool = False,
) -> CodeResult:
    """Run `code` against `tests` in the sandbox and score it.

    mode: "fraction" -> reward = passed / total; "all" -> 1.0 only if every test passes.
    timeout: wall-clock seconds for the whole run (all tests); also the CPU-time
    limit of each process. memory_mb: address-space limit per process.
    max_procs: processes (and threads) the code may have at once.
    python: interpreter that runs the code (default: this one). Its prefix
    (<prefix>/bin/python) is mounted into the sandbox; with unsafe_no_namespaces
    the sandbox user (nobody when the caller is root) must be able to run it as is.
    unsafe_no_namespaces: skip the namespaces, i.e. run WITHOUT network and
    filesystem isolation (for machines that cannot create them). Never set it
    for code you would not run yourself.
    Thread-safe; each call uses its own processes and temp dir.
    """
    kind = test_kind(tests)
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r}: expected one of {_MODES}")
    if not timeout > 0 or memory_mb < 64 or max_procs < 1:
        raise ValueError(
            f"need timeout > 0, memory_mb >= 64, max_procs >= 1; "
            f"got timeout={timeout}, memory_mb={memory_mb}, max_procs={max_procs}"
        )
    root = os.geteuid() == 0
    uid, gid = (_NOBODY, _NOBODY) if root else (os.getuid(), os.getgid())
    workdir = tempfile.mkdtemp(prefix="lightrl-sandbox-")
    res_r, res_w = os.pipe()
    proc = None
    try:
        job = {
            "code": code, "tests": tests, "kind": kind, "workdir": workdir,
            "result_fd": res_w, "isolate": not unsafe_no_namespaces, "root": root,
            "uid": uid, "gid": gid, "timeout": timeout, "memory_mb": memory_mb,
            # Resolved here, on the host: a venv's link (often under /tmp) does not exist in the new root.
            "max_procs": max_procs, "python": os.path.realpath(python or sys.executable),
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(res_w,), start_new_session=True, cwd="/", env=_clean_env(workdir),
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
        shutil.rmtree(workdir)
    if proc.returncode == _SETUP_FAILED:
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
                compile(t, f"<test {i}>", "exec")
            except SyntaxError as e:
                raise ValueError(f"tests[{i}] is not valid Python ({e.msg}): {t!r}") from None
        return "assert"
    if all(isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in tests):
        return "stdio"
    raise ValueError(
        "tests: expected all assert strings (e.g. 'assert f(1) == 2') or all "
        "(stdin, expected_stdout) string pairs, not a mix or other types"
    )


def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


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


# -------------------------------------------------------- inside the sandbox
# The runner is the first program the sandboxed user executes. It reports one
# JSON line [test index, status, message] per test on the result fd; index -1
# applies to every test not reported yet (e.g. a syntax error).

_RUNNER = r'''
import json, os, sys
FD, KIND = int(sys.argv[1]), sys.argv[2]
def report(i, status, msg=""):
    os.write(FD, (json.dumps([i, status, msg[:300]]) + "\n").encode())
def status_of(e):
    if isinstance(e, AssertionError): return "failed"
    if isinstance(e, MemoryError): return "memory"
    return "error"
with open("tests.json") as f:
    tests = json.load(f)
os.unlink("tests.json")  # the code under test must not read the expected answers
with open("solution.py", encoding="utf-8", errors="replace") as f:
    src = f.read()
try:
    code = compile(src, "solution.py", "exec")
except (SyntaxError, ValueError) as e:
    report(-1, "syntax", f"{type(e).__name__}: {e}")
    sys.exit(0)
if KIND == "assert":
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(code, ns)
    except BaseException as e:
        report(-1, status_of(e), f"{type(e).__name__}: {e}")
        sys.exit(0)
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"<test {i}>", "exec"), ns)
            report(i, "passed")
        except BaseException as e:
            report(i, status_of(e), f"{type(e).__name__}: {e}")
else:
    import ctypes, subprocess
    ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE=0: the solution may not ptrace or read us
    def norm(s):
        return [line.rstrip() for line in s.rstrip().splitlines()]
    for i, (stdin, expected) in enumerate(tests):
        with open("stdin.txt", "w") as f:
            f.write(stdin)
        with open("stdin.txt") as fin, open("stdout.txt", "w") as fout:
            rc = subprocess.run([sys.executable, "-I", "-S", "-B", "solution.py"], stdin=fin,
                                stdout=fout, stderr=subprocess.DEVNULL).returncode
        with open("stdout.txt", errors="replace") as f:
            out = f.read(2 * len(expected) + 4096)
        if rc < 0:
            report(i, "killed", f"signal {-rc}")
        elif rc != 0:
            report(i, "error", f"exit code {rc}")
        else:
            report(i, "passed" if norm(out) == norm(expected) else "failed", "wrong output")
'''

# ------------------------------------------------------------- launcher side
# Everything below runs in the launcher process (`python -I -S -B code.py`) and
# its forks, never in the caller.

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 1 << 18
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
SYS_MOUNT_SETATTR = 442  # same number on every architecture (Linux >= 5.12)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {fstype or ''} {target}")


def _make_readonly(path: str) -> None:
    """Make every mount at or below `path` read-only and nosuid."""
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)  # struct mount_attr
    ret = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(path.encode()),
                        ctypes.c_long(AT_RECURSIVE), attr, ctypes.c_long(ctypes.sizeof(attr)))
    _check(ret, f"mount_setattr {path} read-only (needs Linux >= 5.12)")


def _build_root(job, prefix: str, prefix_fd: int) -> None:
    """Mount and enter the code's filesystem: system dirs and the interpreter's
    prefix read-only, a few devices, a fresh /proc and a private writable /tmp.
    The rest of the host (home dirs, data, the repo, the host's /tmp) does not
    exist there. The new root is a tmpfs over the host temp dir, which stays empty.
    prefix_fd: an O_PATH fd of `prefix`, opened before we dropped to the sandbox
    user, so an interpreter under e.g. /root (0700) still works."""
    new = job["workdir"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks out
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in _SYSTEM_DIRS + (prefix,):
        inside = new + path
        source = f"/proc/self/fd/{prefix_fd}" if path == prefix else path
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(path), inside)
        elif os.path.isdir(source) and not os.path.exists(inside):
            os.makedirs(inside)
            _mount(source, inside, None, MS_BIND | MS_REC)
    os.mkdir(new + "/dev")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(new + "/dev/" + dev, "w").close()
        _mount("/dev/" + dev, new + "/dev/" + dev, None, MS_BIND)
    os.symlink("/proc/self/fd", new + "/dev/fd")
    os.mkdir(new + "/proc")
    os.mkdir(new + "/tmp")
    _make_readonly(new)
    _mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={_TMPFS_BYTES},mode=0700,uid={job['uid']},gid={job['gid']}")
    try:
        _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        # No user namespaces of its own for the code: they would hand it
        # capabilities, the usual way into kernel bugs.
        _write(new + "/proc/sys/user/max_user_namespaces", "0")
    except OSError:
        pass  # e.g. a container masking parts of the host's /proc: the code gets no /proc
    os.chroot(new)
    os.chdir("/")


def _become_sandbox_user(job) -> None:
    if job["root"]:
        # Root ignores RLIMIT_NPROC and file permissions. Inside the new user
        # namespace this keeps the capabilities there until exec.
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _exit_code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)


def _launcher_main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    # Should the caller die without killing us, this still ends the run; our
    # children follow through PR_SET_PDEATHSIG.
    signal.setitimer(signal.ITIMER_REAL, job["timeout"] + 5)
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    launcher = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(status_r)
        os.close(go_w)
        _child(job, launcher, status_w, go_r)
    os.close(status_w)
    os.close(go_r)
    errors = []
    with os.fdopen(status_r, "rb") as status:  # EOF once the runner is exec'd or setup failed
        for line in status:
            if line != b"unshared\n":
                errors.append(line.decode("utf-8", "replace").strip())
                continue
            try:
                # Only a process outside the new user namespace may map ids into it.
                if not job["root"]:
                    _write(f"/proc/{pid}/setgroups", "deny")  # required to map a gid unprivileged
                _write(f"/proc/{pid}/uid_map", f"{job['uid']} {job['uid']} 1")
                _write(f"/proc/{pid}/gid_map", f"{job['gid']} {job['gid']} 1")
                os.write(go_w, b"g")
            except OSError as e:
                errors.append(f"writing the id map of the user namespace: {e}")
            os.close(go_w)
    _, st = os.waitpid(pid, 0)
    if errors:
        sys.stderr.write("; ".join(errors) + "\n")
        os._exit(_SETUP_FAILED)
    code = _exit_code(st)
    os._exit(1 if code == _SETUP_FAILED else code)


def _child(job, launcher: int, status_w: int, go_r: int) -> None:
    """Fork of the launcher: build the namespaces, then become the runner. Never returns."""
    stage = "start"
    try:
        _die_with_parent()
        if os.getppid() != launcher:
            os._exit(_SETUP_FAILED)
        if job["isolate"]:
            stage = "unshare"
            _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
                                 | CLONE_NEWIPC | CLONE_NEWUTS), "unshare(user, mount, net, pid, ipc, uts)")
            os.write(status_w, b"unshared\n")
            if os.read(go_r, 1) != b"g":
                os._exit(_SETUP_FAILED)
            stage = "opening the interpreter's directory"
            prefix = os.path.dirname(os.path.dirname(job["python"]))  # <prefix>/bin/python
            prefix_fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
            _become_sandbox_user(job)
            init = os.fork()  # pid 1 of the new pid namespace
            if init:
                os.close(status_w)
                os._exit(_exit_code(os.waitpid(init, 0)[1]))
            stage = "pid-1 setup"
            _die_with_parent()
            # Safety net for the race where our parent died before the prctl above.
            # pid 1 ignores default-action signals, hence the handler.
            signal.signal(signal.SIGALRM, lambda *_: os._exit(1))
            signal.alarm(math.ceil(job["timeout"]) + 5)
            _build_root(job, prefix, prefix_fd)
            runner = os.fork()
            if runner:
                os.close(status_w)
                while True:  # reap orphans until the runner ends; our exit kills the rest
                    pid, st = os.waitpid(-1, 0)
                    if pid == runner:
                        os._exit(_exit_code(st))
        stage = "runner setup"
        _exec_runner(job)
    except BaseException as e:  # noqa: BLE001 - report anything, then leave
        try:
            os.write(status_w, f"{stage}: {e}\n".encode())
        finally:
            os._exit(_SETUP_FAILED)


def _exec_runner(job) -> None:
    cpu = math.ceil(job["timeout"])
    for res, soft, hard in [
        (resource.RLIMIT_AS, job["memory_mb"] << 20, job["memory_mb"] << 20),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_NPROC, job["max_procs"], job["max_procs"]),
        (resource.RLIMIT_FSIZE, _MAX_FILE_BYTES, _MAX_FILE_BYTES),
        (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES, _MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0, 0),
    ]:
        resource.setrlimit(res, (soft, hard))
    if not job["isolate"]:
        if job["root"]:
            os.chown(job["workdir"], job["uid"], job["gid"])
        _become_sandbox_user(job)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    home = "/tmp" if job["isolate"] else job["workdir"]
    os.chdir(home)
    _write("solution.py", job["code"])
    _write("tests.json", json.dumps(job["tests"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    py = job["python"]
    try:
        os.execve(py, [py, "-I", "-S", "-B", "-c", _RUNNER, str(job["result_fd"]), job["kind"]],
                  _clean_env(home))
    except OSError as e:
        raise OSError(e.errno, f"cannot run the interpreter {py} as uid {job['uid']}: {e.strerror}") from None


if __name__ == "__main__":
    _launcher_main()
