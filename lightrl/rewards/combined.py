"""The training score: a weighted sum of reward terms, built-in or your own.

`--reward` takes one or more terms (repeat the flag), each NAME or NAME=WEIGHT (weight 1 by default):
  math             1.0 / 0.0: the completion's final answer against the row's gold answer
  code             the fraction of the row's tests the completion's code passes in the sandbox
  module:function  your function, imported from an installed module or one on sys.path (the current
                   directory for `python -m lightrl.run`):

      def my_reward(completions: list[str], rows: list[dict]) -> list[float]:
          '''completions[i] answers rows[i], the data row as loaded ({"question", "answer"}, or
          {"question", "tests"} with the code reward); return one float per completion.'''

e.g. `--reward math --reward mypkg:brevity=0.1` scores 1.0 * math + 0.1 * brevity. A term that raises,
returns the wrong number of values, or returns a value that is not a finite number scores 0 for the
completions concerned; they are counted (`reward_errors`) and the first error of each term is logged,
so a buggy reward never stops a run. Each term's unweighted mean is logged as `reward_<name>`.
"""
from __future__ import annotations

import functools
import importlib
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger("lightrl")

RewardFn = Callable[[list[str], list[dict]], list[float]]


def _math(completions: list[str], rows: list[dict]) -> list[float]:
    from lightrl.rewards.math import score_batch
    return list(score_batch([r["answer"] for r in rows], completions))


def _code(completions: list[str], rows: list[dict]) -> list[float]:
    from lightrl.rewards.code import code_reward
    # Each call is its own sandboxed subprocess, mostly waiting: threads overlap them; map keeps order.
    with ThreadPoolExecutor(max_workers=min(8, len(completions)) or 1) as pool:
        return list(pool.map(code_reward, completions, [r["tests"] for r in rows]))


BUILTIN: dict[str, RewardFn] = {"math": _math, "code": _code}
USAGE = ("math, code or module:function (a callable f(completions: list[str], rows: list[dict]) -> list[float]), "
         "optionally =WEIGHT, e.g. --reward math --reward mypkg:brevity=0.1")


@dataclass(frozen=True)
class RewardTerm:
    name: str  # "math", "code" or "module:function"
    weight: float
    fn: RewardFn


def load_rewards(specs: tuple[str, ...] | list[str] | str) -> list[RewardTerm]:
    """The reward terms of `--reward` specs ("math", "code", "module:function", each optionally "=WEIGHT").

    Imports user modules (once per process); raises ValueError naming the spec, module and function.
    """
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    return _load(specs)


@functools.lru_cache(maxsize=None)
def _load(specs: tuple[str, ...]) -> list[RewardTerm]:
    if not specs:
        raise ValueError(f"--reward: no reward given; use {USAGE}")
    terms = [_term(spec) for spec in specs]
    names = [t.name for t in terms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--reward {repeated[0]} is given twice; give each term once, with its weight")
    if "math" in names and "code" in names:
        raise ValueError("--reward math and --reward code cannot be combined: a data row carries either a gold "
                         "answer (math) or tests (code)")
    return terms


def _term(spec: str) -> RewardTerm:
    name, _, weight_text = spec.strip().partition("=")
    name = name.strip()
    weight = 1.0
    if weight_text:
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(f"--reward {spec!r}: weight {weight_text!r} is not a number") from None
        if not math.isfinite(weight):
            raise ValueError(f"--reward {spec!r}: weight must be a finite number")
    if name in BUILTIN:
        return RewardTerm(name, weight, BUILTIN[name])
    module_name, colon, fn_name = name.partition(":")
    if not colon or not module_name or not fn_name:
        raise ValueError(f"--reward must be {USAGE}; got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure of user code is a configuration error
        raise ValueError(f"--reward {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}); "
                         "install it or run from the directory that holds it (or set PYTHONPATH)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        where = getattr(module, "__file__", module_name)
        raise ValueError(f"--reward {spec!r}: module {module_name!r} ({where}) has no function {fn_name!r}"
                         + ("" if fn is None else f" (it is a {type(fn).__name__})"))
    return RewardTerm(name, weight, fn)


def data_kind(specs) -> str:
    """What the data rows must carry for these terms: "code" (tests) or "math" (a gold answer)."""
    return "code" if any(t.name == "code" for t in load_rewards(specs)) else "math"


# ---- scoring ------------------------------------------------------------------------------------

_stats: dict = {"sums": {}, "count": 0, "errors": 0}
_warned: set[str] = set()


def score(specs, completions: list[str], rows: list[dict]) -> list[float]:
    """Per completion, the weighted sum of the reward terms (floats, [len(completions)]).

    specs: `--reward` values (see load_rewards); rows[i] is the data row completions[i] answers.
    Never raises for a term's own failures: those completions score 0 for that term and are counted.
    """
    terms = load_rewards(specs)
    total = [0.0] * len(completions)
    failed = [False] * len(completions)
    for term in terms:
        values = _call(term, completions, rows, failed)
        _stats["sums"][term.name] = _stats["sums"].get(term.name, 0.0) + sum(values)
        for i, v in enumerate(values):
            total[i] += term.weight * v
    _stats["count"] += len(completions)
    _stats["errors"] += sum(failed)
    return total


def _call(term: RewardTerm, completions: list[str], rows: list[dict], failed: list[bool]) -> list[float]:
    """term.fn's values, with 0.0 (and failed[i] = True) where it raised or gave a non-finite value."""
    try:
        out = list(term.fn(completions, rows))
        if len(out) != len(completions):
            raise ValueError(f"returned {len(out)} values for {len(completions)} completions")
    except Exception as e:  # noqa: BLE001 - a user's reward must not stop training
        _warn(term, f"raised {type(e).__name__}: {e}")
        for i in range(len(failed)):
            failed[i] = True
        return [0.0] * len(completions)
    values = []
    for i, v in enumerate(out):
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v):
            _warn(term, f"returned {out[i]!r} for completion {i} (not a finite number)")
            failed[i], v = True, 0.0
        values.append(v)
    return values


def _warn(term: RewardTerm, what: str) -> None:
    if term.name not in _warned:
        _warned.add(term.name)
        logger.warning(f"reward {term.name} {what}; those completions score 0 for it (counted in "
                       "reward_errors; further errors of this reward are not printed)")


def reward_stats(reset: bool = False) -> dict:
    """Since the last reset: {"reward_<name>": unweighted mean of each term, "reward_errors": completions
    for which some term failed}."""
    n = max(_stats["count"], 1)
    out = {f"reward_{name}": s / n for name, s in _stats["sums"].items()}
    out["reward_errors"] = _stats["errors"]
    if reset:
        _stats.update(sums={}, count=0, errors=0)
    return out
