"""Rule rewards the training loop adds to the correctness reward with its own weights.

format_reward: 1.0 when the completion ends its work with a complete \\boxed{...} answer.
overlong_penalty: DAPO's soft overlong punishment (Yu et al., 2025, "DAPO", eq. 13):
    0                                  if length <= max_length - buffer
    (max_length - buffer - length) / buffer * penalty   inside the buffer (0 down to -penalty)
    -penalty                           if length > max_length
"""
from __future__ import annotations

from lightrl.rewards.math import last_boxed


def format_reward(completion: str) -> float:
    """1.0 when `completion` contains a complete, non-empty \\boxed{...} (or \\fbox{...}), else 0.0."""
    boxed = last_boxed(completion)
    return 1.0 if boxed else 0.0


def overlong_penalty(length: int, max_length: int, buffer: int, penalty: float = 1.0) -> float:
    """DAPO soft overlong penalty for a completion of `length` tokens (a value in [-penalty, 0]).

    `max_length` is the generation limit, `buffer` the number of tokens before it over which the
    penalty ramps linearly from 0 to -penalty.
    """
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"overlong_penalty: buffer={buffer} must be in [0, max_length={max_length}]")
    if length <= max_length - buffer:
        return 0.0
    if length > max_length:
        return -float(penalty)
    return (max_length - buffer - length) / buffer * float(penalty)
