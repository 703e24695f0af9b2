"""Size limits and tolerances of the verifier, and the two exceptions its guards raise."""
from __future__ import annotations

from fractions import Fraction

MAX_ANSWER_CHARS = 1000
MAX_DEPTH = 30
MAX_LITERAL_DIGITS = 200
MAX_RESULT_DIGITS = 10_000
MAX_FACTORIAL = 3_000
REL_TOL = Fraction(1, 10**9)
EXACT_TOL = 1e-40
DECIMAL_DIGITS = 6  # a decimal equals a non-integer exact value only with this many significant digits
WORKER_STARTUP_TIMEOUT = 60.0
BATCH_TIMEOUT = 20.0  # seconds of sympy work one score_batch call may take in all (its default)
CACHE_SIZE = 50_000  # (gold, answer) pairs; answers are capped at MAX_ANSWER_CHARS
_TAIL = 4000  # answer phrases ("The answer is", "####") are looked for in the last _TAIL chars


class _Reject(Exception):
    """A guard fired: the pair scores 0 without further work."""


class _ParseError(Exception):
    """The answer is not an expression this parser understands."""
