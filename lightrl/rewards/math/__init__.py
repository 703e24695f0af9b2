"""Verifiable math rewards: answer extraction and a sympy-backed equivalence check.

Public API
    extract_answer(text) -> str | None
    verify(gold, prediction, timeout=2.0) -> bool
    score_batch(golds, predictions, timeout=2.0, workers=None) -> list[float]
    get_stats(reset=False) -> dict[str, int]
    clear_cache(), last_boxed(text) -> str | None (used by rules.format_reward)

How a pair is judged
    1. The answer is cut out of the prediction (last \\boxed{}/\\fbox{}, GSM8K "####",
       "the (final) answer is", a final "Answer:" line); a prediction without any of
       these is taken as a bare answer.
    2. Cheap guards: answers over MAX_ANSWER_CHARS, nesting over MAX_DEPTH, integer
       literals over MAX_LITERAL_DIGITS, powers/factorials whose result would exceed
       MAX_RESULT_DIGITS score 0 at once.
    3. Both answers are normalised (\\dfrac, \\left, spacing, \\text units, degrees,
       \\$, thousands separators) and split into structure: text, multiple-choice
       letter, base-n number, equation, tuple/interval (order and brackets matter),
       set or comma list (order-free), union of intervals, matrix, plus-minus pairs.
    4. Leaves are converted from LaTeX to Python syntax by a small recursive-descent
       parser here (no antlr) and, in this process, evaluated exactly with Fractions.
    5. Only what that cannot settle (radicals, pi, symbols, equations) goes to sympy
       (`parse_expr` with the transformations (auto_number, rationalize) only), in
       a pool of worker processes started with subprocess. A worker that passes the
       deadline is killed and replaced; no signals are used, so this works from any
       thread and inside daemon worker processes (it never uses multiprocessing).
       Workers start once and are reused, exit with the process (atexit, and a
       watchdog if the parent dies) and run under a 3 GiB address-space limit.
       POSIX only (poll on pipes).

Numbers: exact unless written with a decimal point.
    Integers, fractions, radicals, pi, ... are exact; two rationals must be equal
    exactly (so 1/2004! != 1/2006!), two exact irrationals must agree to 40
    significant digits (60-digit evaluation). A value written with a decimal point is
    a rounded number and matches within relative tolerance REL_TOL = 1e-9. Hence
    0.333 != 1/3 (MATH asks for exact answers; a three-digit rounding is a
    different answer), 0.5 == 1/2, 0.3333333333 (10 digits) == 1/3.
    Symbols are real: x^2 == |x|^2, but sqrt(x^2) != x. Expressions with symbols
    are compared at deterministic random rational points (negative ones included).
    Percentages: 25\\% matches 25 and 0.25. Degrees are dropped (90^\\circ == 90).
    Base-n numbers: 52_8 matches 52_8, 101010_2 (same value) and the bare digits 52.

Metrics: get_stats() returns cumulative counters for this process
    n_checked, n_cache_hits, n_no_answer, n_guard_rejects, n_sympy (pairs sent to a
    worker), n_timeouts (pairs that hit the deadline; they score 0), n_errors
    (exceptions inside a worker; score 0), n_worker_restarts. The training loop
    calls get_stats(reset=True) once per step and logs e.g. n_timeouts/n_checked.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .compare import _answer_of, _judge
from .extract import extract_answer, extract_answers, last_boxed
from .limits import BATCH_TIMEOUT, CACHE_SIZE, DECIMAL_DIGITS, MAX_ANSWER_CHARS, WORKER_STARTUP_TIMEOUT, _ParseError, _Reject
from .pool import _POOL, _Timeout, _bump, get_stats

__all__ = ["verify", "score_batch", "extract_answer", "get_stats", "clear_cache", "last_boxed"]

_CACHE: OrderedDict[tuple[str, str], bool] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached verdict."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _remember(key: tuple[str, str, int], ok: bool) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = ok
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)


def _prepare(gold: str, prediction: str, digits: int) -> tuple[tuple[str, str, int] | None, bool | None]:
    """In-process part: (cache key, verdict); verdict None means 'ask a sympy worker'."""
    _bump("n_checked")
    parts = extract_answers(prediction) or [prediction.strip()]  # nothing found: a bare answer
    if not parts[0] or any(len(x) > MAX_ANSWER_CHARS for x in parts):
        _bump("n_no_answer")
        return None, False
    # several final boxes are one answer list: a set or tuple gold compares with all of
    # them, a single gold only matches when every one of them is it (a hedge scores 0)
    key = (_answer_of(gold), ", ".join(parts), digits)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
    if hit is not None:
        _bump("n_cache_hits")
        return None, hit
    try:
        verdict = _judge(key[0], key[1], use_sympy=False, digits=digits)
    except _Reject:
        _bump("n_guard_rejects")
        verdict = False
    except (_ParseError, RecursionError, ValueError, ZeroDivisionError, OverflowError):
        verdict = False
    except Exception:  # noqa: BLE001 - an unforeseen input must not crash training: let a worker decide
        verdict = None
    if verdict is not None:
        _remember(key, verdict)
    return key, verdict


def _ask_sympy(key: tuple[str, str, int], timeout: float, deadline: float) -> bool:
    """A worker's verdict, waiting at most until `deadline` (time.monotonic()) in all."""
    _bump("n_sympy")
    try:
        if time.monotonic() >= deadline:
            raise _Timeout  # past the deadline a free worker must not be spent (and killed) on a 0 s limit
        w = _POOL.acquire(deadline)
    except _Timeout:  # the batch ran out of time before a worker was free: not cached, it was never tried
        _bump("n_timeouts")
        return False
    healthy = True
    try:
        reply = w.ask({"g": key[0], "p": key[1], "d": key[2]}, max(0.001, min(timeout, deadline - time.monotonic())))
    except _Timeout:
        healthy = False
        _bump("n_timeouts")
        ok = False  # timeouts are cached too: a pathological answer repeated G times must not stall G times
    except (EOFError, BrokenPipeError, OSError):
        healthy = False
        _bump("n_errors")
        ok = False
    except BaseException:
        healthy = False
        raise
    else:
        ok = bool(reply["ok"])
        if reply.get("err"):
            _bump("n_errors")
    finally:
        _POOL.release(w, healthy)
    _remember(key, ok)
    return ok


def _check_timeout(name: str, timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"{name}={timeout!r}: must be > 0 seconds")


def _check_digits(digits: int) -> None:
    if not (isinstance(digits, int) and digits >= 1):
        raise ValueError(f"decimal_digits={digits!r}: must be an int >= 1 (default {DECIMAL_DIGITS}; "
                         "a large value such as 60 means decimals never match fractions or surds)")


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def verify(gold: str, prediction: str, timeout: float = 2.0, decimal_digits: int = DECIMAL_DIGITS) -> bool:
    """True when `prediction` (a whole response or a bare answer) states `gold`.

    Safe from any thread; sympy runs in a worker process killed after `timeout`
    seconds (a timeout returns False and counts in get_stats()['n_timeouts']). Only a
    cold pool (the first call of the process) also waits for a worker to start.
    `decimal_digits`: a decimal matches a non-integer exact value (1/3, \\sqrt2, \\pi) when
    it is that value rounded to the places written with at least this many significant
    digits (default 6: 0.333333 == 1/3, 0.333 != 1/3); integers always compare exactly.
    """
    _check_timeout("timeout", timeout)
    _check_digits(decimal_digits)
    key, verdict = _prepare(gold, prediction, decimal_digits)
    if verdict is not None:
        return verdict
    _POOL.ensure(1)
    return _ask_sympy(key, timeout, time.monotonic() + WORKER_STARTUP_TIMEOUT + timeout)


def score_batch(golds: list[str], predictions: list[str], timeout: float = 2.0,
                workers: int | None = None, batch_timeout: float = BATCH_TIMEOUT,
                decimal_digits: int = DECIMAL_DIGITS) -> list[float]:
    """Rewards (1.0 / 0.0) for each pair, in input order.

    Pairs the in-process exact check cannot settle go to `workers` sympy processes
    (default: CPU count, at most 8) in parallel, each under `timeout` seconds, and all of
    them under `batch_timeout` seconds from the first one sent: pairs still unanswered
    then score 0 and count in get_stats()['n_timeouts']. So the sympy part of a batch
    never takes longer than `batch_timeout`, whatever the answers are (the first call of
    a process also waits for its workers to start). Results are cached per
    (gold answer, predicted answer); pairs cut off by the batch deadline are not.
    `decimal_digits` is verify's decimal rule.
    """
    _check_timeout("timeout", timeout)
    _check_digits(decimal_digits)
    _check_timeout("batch_timeout", batch_timeout)
    if len(golds) != len(predictions):
        raise ValueError(f"score_batch: {len(golds)} golds but {len(predictions)} predictions; "
                         "pass one gold per prediction (repeat the gold for each sample of a group)")
    out = [0.0] * len(golds)
    pending: dict[tuple[str, str], list[int]] = {}
    for i, (g, p) in enumerate(zip(golds, predictions)):
        key, verdict = _prepare(g, p, decimal_digits)
        if verdict is None:
            pending.setdefault(key, []).append(i)
        else:
            out[i] = float(verdict)
    if pending:
        n = min(workers or _default_workers(), len(pending))
        _POOL.ensure(n)
        _POOL.wait_for_one(time.monotonic() + WORKER_STARTUP_TIMEOUT)
        deadline = time.monotonic() + batch_timeout
        keys = list(pending)
        with ThreadPoolExecutor(max_workers=n) as ex:
            for key, ok in zip(keys, ex.map(lambda k: _ask_sympy(k, timeout, deadline), keys)):
                for i in pending[key]:
                    out[i] = float(ok)
    return out


def _reset_after_fork():
    global _CACHE_LOCK
    _CACHE_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
