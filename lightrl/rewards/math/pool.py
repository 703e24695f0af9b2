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
