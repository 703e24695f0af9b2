"""Verifiable math rewards: answer extraction and an exact, sympy-backed equivalence check.

Public API
    extract_answer(text) -> str | None, extract_answers(text) -> list[str] | None
    verify(gold, prediction, timeout=2.0, decimal_digits=6) -> bool
    score_batch(golds, predictions, timeout=2.0, workers=None, batch_timeout=20.0,
                decimal_digits=6) -> list[float]
    get_stats(reset=False) -> dict[str, int]
    clear_cache(), last_boxed(text) -> str | None (used by rules.format_reward)

Stages (one module each): extract -> normalize -> structure -> latex (LaTeX to checked
Python syntax) -> exact (Fractions, and 60-digit mpmath for constants) -> compare; what
they cannot settle goes to sympy in worker processes (pool, worker).

How a pair is judged
    1. Extraction, the same for the prediction and the gold (so a gold may be a whole
       worked solution or a sentence): the last \\boxed{}/\\fbox{} together with the
       boxes just before it that only connectives separate ("\\boxed{1} and \\boxed{2}");
       a "the (final) answer is" stated after the last box wins over it; else the last
       GSM8K "####", "the (final) answer is x" (its last math span before the sentence
       ends: "the answer is $ABCD$ with side $12$" gives 12) or "Answer: x" line; else
       the last math span or number of a text with $..$, \\(..\\), \\[..\\], $$..$$ or
       prose ("... is 2/3."). Anything else is a bare answer.
    2. Several final boxes (or math spans that only connectives separate) are one answer
       list: a set or tuple gold compares with all of them (in order for a tuple); a gold
       with one answer matches only when every part is that answer, so a hedge
       ("\\boxed{3} or \\boxed{4}", "(C) or (D)", "$2$ or $3$") scores 0.
    3. Guards: answers over MAX_ANSWER_CHARS, nesting over MAX_DEPTH, integer literals
       over MAX_LITERAL_DIGITS, powers/factorials whose result would exceed
       MAX_RESULT_DIGITS score 0 at once.
    4. Normalisation (\\dfrac, \\left, spacing, \\text, units, degrees, currency, percent
       words, thousands separators, one spelling per relation: \\geqslant = \\geq = >=)
       and structure: text, choice letter, base-n number, equation or labelled answer,
       tuple/interval (order and brackets matter), \\{set\\} and bare list (order-free),
       union, matrix, plus-minus pairs, inequality.
    5. Leaves are parsed by a small recursive-descent LaTeX parser (no antlr) and
       evaluated in this process: exactly with Fractions, and symbol-free constants
       (radicals, pi, e, logs, trig) with 60-digit mpmath, every step bounded first.
    6. Only what that cannot settle (symbols, equations, decimals against irrationals,
       digits lost to cancellation) goes to sympy (`parse_expr` with the transformations
       (auto_number, rationalize) only) in worker processes started with subprocess.

Rules (what is accepted, what is refused)
    Integers and exact values compare exactly: 1/2004! != 1/2006!, 1.23456789e11 !=
    123456789012, 2.0000000000001 != 2; two exact irrationals must agree to 40 digits.
    Decimals: a number written with a decimal point equals a non-integer exact value when
    it is that value rounded to the places written and has at least `decimal_digits`
    significant digits (default 6): 0.333333 == 1/3, 3.14159 == pi, but 0.333 != 1/3,
    0.666666 != 2/3 (truncated, not rounded); two decimals compare exactly; a decimal
    inside a larger expression (1.5\\pi) matches within REL_TOL = 1e-9. This holds inside
    sets, tuples, intervals and matrices too.
    Percent: a gold 25\\% matches 25\\%, 25 and 0.25; a prediction 25\\% against a gold
    without % is read as 0.25 only (so 5\\% != 5; verify does not see the problem text).
    Base-n: a gold 52_8 matches 52_8, 101010_2 (same value) and the bare digits 52; a
    prediction 101_2 against a plain gold is its value 5 (not 101). 0^0 is undefined.
    Relations: an inequality in one variable with rational coefficients is the interval
    it defines (-x > -1 == x < 1 == (-\\infty, 1), |x - 2| <= 3 == [-1, 5]); x \\ne a is
    the union around a.
    Labels: x = 5, f(x) = 2x, AB = 4, (p, q) = (3, 2) compare by value against an
    unlabelled gold, by label and value against a labelled one (x = 5 != y = 5); an
    \\approx chain keeps its exact value (x = \\sqrt2 \\approx 1.41 is \\sqrt2).
    Sets vs tuples: \\{1, 2\\} != (1, 2); a bare list 1, 2 matches either (in order for a
    tuple); brackets of intervals matter. Matrices: pmatrix, bmatrix, array in brackets,
    and sums, differences and products of literal rational matrices; a vector matches
    its tuple. Decimal commas (2,74) are decimals when the gold is one number.
    Symbols are real: x^2 == |x|^2, but sqrt(x^2) != x; expressions with symbols are
    compared at deterministic random rational points (negative ones included).
    Not yet: limits, sums and integrals written out.

Time: a worker that passes `timeout` is killed; replacements start on background
    threads and one warm spare is kept, so the next call does not wait for sympy to
    import. score_batch's sympy part ends within `batch_timeout` seconds whatever the
    answers are (pairs still unanswered score 0 and count in n_timeouts); the first call
    of a process also waits for its workers to start. No signals are used, so this works
    from any thread and inside daemon worker processes (it never uses multiprocessing);
    workers exit with the process (atexit, and a watchdog if the parent dies) and run
    under a 3 GiB address-space limit. POSIX only (poll on pipes).

Metrics: get_stats() returns cumulative counters for this process
    n_checked, n_cache_hits, n_no_answer, n_guard_rejects, n_sympy (pairs sent to a
    worker), n_timeouts (pairs that hit a deadline; they score 0), n_errors
    (exceptions inside a worker; score 0), n_worker_restarts. The training loop
    calls get_stats(reset=True) once per step and logs n_timeouts as verifier_timeouts.
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

__all__ = ["verify", "score_batch", "extract_answer", "extract_answers", "get_stats", "clear_cache", "last_boxed"]

_CACHE: OrderedDict[tuple[str, str, int], bool] = OrderedDict()  # (gold answer, predicted answer, decimal_digits)
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
