"""Launcher of the code sandbox: builds the namespaces and limits, then starts the harness.

lightrl.rewards.code runs this file as ``python -I -S -B sandbox.py CALLER_PID`` (stdlib only,
as the caller's user) and writes the job as JSON on its stdin. The launcher forks a child that
unshares user, mount, network, pid, IPC and UTS namespaces; the launcher maps one unprivileged
id into the user namespace (nobody/65534 when the caller is root, the caller's own id
otherwise). Inside:
- no network: the new network namespace has only a loopback device, and it is down;
- a minimal root (chroot): /usr, /etc, /lib*, /bin, /sbin and the interpreter's prefix
  bind-mounted read-only and nosuid, with every ``lib/python3*/{site,dist}-packages`` under
  them covered by an empty directory (stdlib only); /dev/{null,zero,full,random,urandom}; a
  fresh /proc that shows only the sandbox (where the kernel allows it); a private tmpfs /tmp,
  limited in size and inodes, as the working directory. The root is a tmpfs mounted over /tmp
  in the new mount namespace only: the host gets no directory to clean up;
- the code runs as the unprivileged id with no capabilities, no_new_privs, no user namespaces
  of its own, an environment of PATH, LANG, HOME and TMPDIR only, and ``python -I -S -B``;
- RLIMIT_NPROC (counted per user namespace, so concurrent sandboxes do not share the cap) and
  RLIMIT_AS = memory budget / process cap, so all processes together stay within the budget;
  RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, no core files;
- every process of the sandbox dies with its parent (PR_SET_PDEATHSIG), up to the caller: a
  killed caller takes the whole sandbox with it. When the namespace's init dies the kernel
  kills every process in the pid namespace, including ones that left the process group.
The first program run inside is lightrl/rewards/harness.py (copied into the working dir).
"""
from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import resource
import signal
import sys

SETUP_FAILED = 97  # launcher exit code: the sandbox could not be built
MAX_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE: largest file the code may write
TMPFS_BYTES = 64 << 20  # the working directory's total size
TMPFS_INODES = 4096  # and its file count: a tmpfs' size limit does not bound the memory of empty files
MAX_OPEN_FILES = 256
# Host dirs the code sees (read-only), besides the interpreter's prefix.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
# Where installed packages live below such a dir; each match is hidden under an empty tmpfs.
_PACKAGE_DIRS = ("lib/python3*/site-packages", "lib/python3*/dist-packages", "local/lib/python3*/site-packages",
                 "local/lib/python3*/dist-packages")
_NEW_ROOT = "/tmp"  # mount point of the code's root, inside the new mount namespace only
_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")
_NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 1 << 18
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
SYS_MOUNT_SETATTR = 442  # same number on every architecture (Linux >= 5.12)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def sandbox_ids() -> tuple[int, int]:
    """(uid, gid) the code runs as: nobody when the caller is root, else the caller's own."""
    return (_NOBODY, _NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def clean_env(home: str) -> dict[str, str]:
    """The whole environment of the launcher and of the code."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}


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
    """Mount and enter the code's filesystem: system dirs and the interpreter's prefix
    read-only without installed packages, a few devices, a fresh /proc and a private
    writable /tmp. The rest of the host (home dirs, data, the repo, the host's /tmp) does
    not exist there. prefix_fd: an O_PATH fd of `prefix`, opened before we dropped to the
    sandbox user, so an interpreter under e.g. /root (0700), or under the host's /tmp that
    the new root covers, still works."""
    new = _NEW_ROOT
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks out
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    mounted = []
    for path in _SYSTEM_DIRS + (prefix,):
        inside = new + path
        source = f"/proc/self/fd/{prefix_fd}" if path == prefix else path
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(path), inside)
        elif os.path.isdir(source) and not os.path.exists(inside):
            os.makedirs(inside)
            _mount(source, inside, None, MS_BIND | MS_REC)
            mounted.append(inside)
    for packages in sorted({p for d in mounted for pattern in _PACKAGE_DIRS for p in glob.glob(f"{d}/{pattern}")}):
        if os.path.isdir(packages) and not os.path.islink(packages):
            _mount("tmpfs", packages, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,nr_inodes=1,mode=0555")
    os.mkdir(new + "/dev")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(new + "/dev/" + dev, "w").close()
        _mount("/dev/" + dev, new + "/dev/" + dev, None, MS_BIND)
    os.symlink("/proc/self/fd", new + "/dev/fd")
    os.mkdir(new + "/proc")
    os.mkdir(new + "/tmp")
    _make_readonly(new)
    _mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={TMPFS_BYTES},nr_inodes={TMPFS_INODES},mode=0700,uid={job['uid']},gid={job['gid']}")
    try:
        _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        # No user namespaces of its own for the code: they would hand it
        # capabilities, the usual way into kernel bugs.
        _write(new + "/proc/sys/user/max_user_namespaces", "0")
    except OSError:
        pass  # e.g. a container masking parts of the host's /proc: the code gets no /proc
    os.chroot(new)
    os.chdir("/")


def _become_sandbox_user(job, parent: int) -> None:
    """Drop to the sandbox user (when root); `parent`: the pid whose death must still kill us."""
    if job["root"]:
        # Root ignores RLIMIT_NPROC and file permissions. Inside the new user
        # namespace this keeps the capabilities there until exec.
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
        _die_with_parent(parent)  # a change of uid clears PR_SET_PDEATHSIG


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL us when the process that forked us dies. `parent`: its pid, to exit now if it
    died before the prctl (we were reparented); None for pid 1 of a new pid namespace, which
    sees no parent."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if parent is not None and os.getppid() != parent:
        os._exit(SETUP_FAILED)


def _exit_code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)


def _launcher_main(caller: int) -> None:
    _die_with_parent(caller)
    job = json.loads(sys.stdin.buffer.read())
    with open(_HARNESS, encoding="utf-8") as f:
        job["harness"] = f.read()
    # Should the caller hang without killing us, this still ends the run; our
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
    with os.fdopen(status_r, "rb") as status:  # EOF once the harness is exec'd or setup failed
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
        os._exit(SETUP_FAILED)
    code = _exit_code(st)
    os._exit(1 if code == SETUP_FAILED else code)


def _child(job, launcher: int, status_w: int, go_r: int) -> None:
    """Fork of the launcher: build the namespaces, then become the harness. Never returns."""
    stage = "start"
    try:
        _die_with_parent(launcher)
        if job["isolate"]:
            stage = "unshare"
            _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
                                 | CLONE_NEWIPC | CLONE_NEWUTS), "unshare(user, mount, net, pid, ipc, uts)")
            os.write(status_w, b"unshared\n")
            if os.read(go_r, 1) != b"g":
                os._exit(SETUP_FAILED)
            stage = "opening the interpreter's directory"
            prefix = os.path.dirname(os.path.dirname(job["python"]))  # <prefix>/bin/python
            prefix_fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
            _become_sandbox_user(job, launcher)
            init = os.fork()  # pid 1 of the new pid namespace
            if init:
                os.close(status_w)
                os._exit(_exit_code(os.waitpid(init, 0)[1]))
            stage = "pid-1 setup"
            _die_with_parent(None)
            # Safety net for the race where our parent died before the prctl above.
            # pid 1 ignores default-action signals, hence the handler.
            signal.signal(signal.SIGALRM, lambda *_: os._exit(1))
            signal.alarm(math.ceil(job["timeout"]) + 5)
            _build_root(job, prefix, prefix_fd)
            harness = os.fork()
            if harness:
                os.close(status_w)
                os.close(job["result_fd"])  # only the harness writes results
                while True:  # reap orphans until the harness ends; our exit kills the rest
                    pid, st = os.waitpid(-1, 0)
                    if pid == harness:
                        os._exit(_exit_code(st))
        stage = "harness setup"
        _exec_harness(job, launcher)
    except BaseException as e:  # noqa: BLE001 - report anything, then leave
        try:
            os.write(status_w, f"{stage}: {e}\n".encode())
        finally:
            os._exit(SETUP_FAILED)


def _exec_harness(job, launcher: int) -> None:
    cpu = math.ceil(job["timeout"])
    per_process = (job["memory_mb"] << 20) // job["max_procs"]
    for res, soft, hard in [
        (resource.RLIMIT_AS, per_process, per_process),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_NPROC, job["max_procs"], job["max_procs"]),
        (resource.RLIMIT_FSIZE, MAX_FILE_BYTES, MAX_FILE_BYTES),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0, 0),
    ]:
        resource.setrlimit(res, (soft, hard))
    if not job["isolate"]:
        if job["root"]:
            os.chown(job["workdir"], job["uid"], job["gid"])
        _become_sandbox_user(job, launcher)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    home = "/tmp" if job["isolate"] else job["workdir"]
    os.chdir(home)
    _write("solution.py", job["code"])
    _write("tests.json", json.dumps(job["tests"]))
    _write("harness.py", job["harness"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    py = job["python"]
    try:
        os.execve(py, [py, "-I", "-S", "-B", "harness.py", str(job["result_fd"]), job["kind"]], clean_env(home))
    except OSError as e:
        raise OSError(e.errno, f"cannot run the interpreter {py} as uid {job['uid']}: {e.strerror}") from None


if __name__ == "__main__":
    _launcher_main(int(sys.argv[1]))
