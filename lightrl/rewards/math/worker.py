"""A sympy worker process: JSON lines {"g", "p"} in on stdin, {"ok", "err"} out on stdout.

Started by pool.py as `python -c "...; from lightrl.rewards.math import worker; worker.main()"`
with the repository root first on sys.path, so nothing else of lightrl (torch) is imported.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from .compare import _judge, _sympy_ns
from .limits import _Reject

ADDRESS_SPACE_LIMIT = 3 * 1024**3  # a memory bomb becomes MemoryError (score 0), not an OOM kill


def main() -> None:
    """Serve requests until stdin closes or the parent process dies."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    except (ImportError, ValueError, OSError):
        pass
    parent = os.getppid()

    def exit_with_parent():  # a worker stuck in sympy must not outlive a parent that died
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray prints from libraries must not corrupt the protocol
    _sympy_ns()
    sys.setrecursionlimit(10_000)
    try:
        _serve(out)
    except BrokenPipeError:  # the parent exited (or killed us) while we were busy: nothing to report to
        os._exit(0)


def _serve(out) -> None:
    out.write(b'{"ready": 1}\n')
    for line in sys.stdin.buffer:
        req = json.loads(line)
        err = None
        try:
            ok = _judge(req["g"], req["p"], use_sympy=True, digits=req["d"]) is True
        except _Reject:
            ok = False
        except Exception as exc:  # noqa: BLE001 - any failure of sympy scores 0 and is counted
            ok, err = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        out.write(json.dumps({"ok": ok, "err": err}).encode() + b"\n")


if __name__ == "__main__":
    main()
