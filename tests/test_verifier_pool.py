"""Class 10 of issue 15: a timed-out call does not slow the next one, and a batch of
pathological answers returns by its deadline with every late pair scored 0 and counted."""
import threading
import time

from lightrl.rewards import math as M
from lightrl.rewards.math import get_stats, score_batch, verify

SLOW = "\\tan(e^{{e^{{e^{{3}}}}}}+{k})"  # passes every guard; sympy needs minutes for 60 digits of it


def test_next_call_after_a_timeout_does_not_wait_for_the_replacement():
    assert verify("\\sqrt{2}", "\\frac{2}{\\sqrt{2}}")  # warm pool: one worker plus the spare
    time.sleep(2.0)  # let the spare finish importing sympy
    t0 = time.monotonic()
    assert verify("1", SLOW.format(k=0), timeout=1.0) is False
    timed_out = time.monotonic() - t0
    t0 = time.monotonic()
    assert verify("\\sqrt{5}", "\\frac{5}{\\sqrt{5}}")  # served by the spare at once
    after = time.monotonic() - t0
    assert 1.0 <= timed_out < 1.5, timed_out
    assert after < 0.5, after


def test_batch_of_128_pathological_answers_returns_by_its_deadline():
    M.clear_cache()
    score_batch(["\\sqrt{2}"], ["\\frac{2}{\\sqrt2}"], workers=2)  # the cold start is not part of the figure
    before = get_stats()
    out = {}

    def run():
        t0 = time.monotonic()
        out["scores"] = score_batch(["1"] * 128, [SLOW.format(k=k) for k in range(128)], timeout=1.0,
                                    workers=2, batch_timeout=3.0)
        out["seconds"] = time.monotonic() - t0

    th = threading.Thread(target=run)  # from a thread, as the trainer's reward phase may call it
    th.start()
    th.join(timeout=60)
    assert not th.is_alive()
    assert out["scores"] == [0.0] * 128
    assert 3.0 <= out["seconds"] < 4.0, out["seconds"]
    after = get_stats()
    assert after["n_timeouts"] - before["n_timeouts"] == 128
    assert after["n_sympy"] - before["n_sympy"] == 128
    # late pairs were never tried, so they are not cached as wrong: asked again they reach sympy
    again = score_batch(["1"], [SLOW.format(k=127)], timeout=0.5, workers=1, batch_timeout=5.0)
    assert again == [0.0] and get_stats()["n_sympy"] - after["n_sympy"] == 1


def test_pool_answers_correctly_after_a_storm():
    score_batch(["1"] * 16, [SLOW.format(k=1000 + k) for k in range(16)], timeout=0.5, workers=2,
                batch_timeout=1.0)
    t0 = time.monotonic()
    golds = [f"\\sqrt{{{k * k * 3}}}" for k in range(2, 10)]
    assert score_batch(golds, [f"{k}\\sqrt3" for k in range(2, 10)], workers=2) == [1.0] * 8
    assert score_batch(golds, [f"{k + 1}\\sqrt3" for k in range(2, 10)], workers=2) == [0.0] * 8
    assert time.monotonic() - t0 < 10.0
