"""The sympy worker pool (caller side) and the verifier's counters.

Workers are separate processes started with subprocess (never multiprocessing, so this
works inside daemonic worker processes) and talk JSON lines over pipes; a worker that
passes its deadline is killed and replaced. No signals are used, so any thread may call.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

from .limits import WORKER_STARTUP_TIMEOUT

# the directory holding the lightrl package, fixed at import: the trainer may chdir later
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class _Timeout(Exception):
    pass


class _Worker:
    """One sympy process running lightrl.rewards.math.worker; talks JSON lines on its pipes.

    This checkout's root goes first on the worker's sys.path (and the working directory is
    dropped), so the worker runs the same code as its parent whatever the cwd is."""

    def __init__(self):
        code = (f"import sys; sys.path = [{_ROOT!r}] + [p for p in sys.path if p not in ('', '.')]; "
                "from lightrl.rewards.math import worker; worker.main()")
        # own session: a Ctrl-C in the terminal reaches the trainer, not its verifier workers
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     bufsize=0, close_fds=True, start_new_session=True)
        self.poll = select.poll()  # not select(): a trainer may hold more than FD_SETSIZE descriptors
        self.poll.register(self.proc.stdout.fileno(), select.POLLIN)
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

    def wait_ready(self) -> None:
        """Block until the worker has imported sympy; RuntimeError when it does not."""
        try:
            line = self._readline(time.monotonic() + WORKER_STARTUP_TIMEOUT)
        except EOFError:
            line = None
        if line is None:
            raise RuntimeError(f"math verifier worker did not start within {WORKER_STARTUP_TIMEOUT}s "
                               f"({sys.executable}); check that sympy imports in a fresh interpreter")

    def ask(self, request: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
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


SPARE_WORKERS = 1  # kept ready beyond the requested size, so a killed worker's replacement never delays a caller


class _Pool:
    """Grow-only set of sympy workers shared by all threads of this process.

    Only workers that have finished starting are handed out. Starting and killing happen
    on background threads, so a timed-out call returns at its deadline and the next
    caller takes the spare instead of waiting for a fresh interpreter to import sympy.
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []  # ready, not in use
        self.count = 0  # alive or starting, in use or not
        self.size = 0
        self.start_error: str | None = None
        self.all: set[_Worker] = set()  # every live process, for close()

    def ensure(self, n: int) -> None:
        """Have n workers (plus the spare) running or starting."""
        with self.cond:
            self.size = max(self.size, n)
            missing = self.size + SPARE_WORKERS - self.count
            self.count += max(missing, 0)
        for _ in range(missing):
            threading.Thread(target=self._start, daemon=True, name="lightrl-verifier-start").start()

    def _start(self) -> None:
        w = None
        try:
            w = _Worker()
            with self.cond:
                self.all.add(w)
            w.wait_ready()
        except (OSError, RuntimeError) as exc:
            if w is not None:
                w.kill()
            with self.cond:
                self.all.discard(w)
                self.count -= 1
                self.start_error = str(exc)
                self.cond.notify_all()
            return
        with self.cond:
            self.start_error = None
            self.idle.append(w)
            self.cond.notify()

    def acquire(self, deadline: float) -> _Worker:
        """A ready worker; _Timeout when none is free by `deadline` (time.monotonic())."""
        with self.cond:
            while not self.idle:
                if self.count == 0 and self.start_error:
                    raise RuntimeError(self.start_error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Timeout
                self.cond.wait(left)
            return self.idle.pop()

    def wait_for_one(self, deadline: float) -> None:
        """Wait (at most until `deadline`) until some worker is ready: a cold pool's start-up
        is not charged to the batch deadline."""
        with self.cond:
            while not self.idle and time.monotonic() < deadline:
                if self.count == 0 and self.start_error:
                    raise RuntimeError(self.start_error)
                self.cond.wait(max(0.0, deadline - time.monotonic()))

    def release(self, w: _Worker, healthy: bool) -> None:
        if healthy:
            with self.cond:
                self.idle.append(w)
                self.cond.notify()
            return
        _bump("n_worker_restarts")
        with self.cond:
            self.count -= 1
            self.all.discard(w)
        threading.Thread(target=w.kill, daemon=True, name="lightrl-verifier-kill").start()
        self.ensure(0)

    def close(self) -> None:
        with self.cond:
            procs, self.all, self.idle, self.count, self.size = self.all, set(), [], 0, 0
        for w in procs:
            w.kill()


_POOL = _Pool()
atexit.register(lambda: _POOL.close())


def _reset_after_fork():
    global _LOCK
    _POOL.__init__()  # the parent's workers belong to the parent; the object stays the one others imported
    _LOCK = threading.Lock()


_LOCK = threading.Lock()
_STATS = dict.fromkeys(("n_checked", "n_cache_hits", "n_no_answer", "n_guard_rejects", "n_sympy",
                        "n_timeouts", "n_errors", "n_worker_restarts"), 0)

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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
