"""--reward code: tests fields in the data, the sandboxed verifier scores in the loop, config errors."""
import json
import math
import os

import pytest

from lightrl.config import Config, parse_args, validate
from lightrl.data import BadRow, load_rows
from lightrl.logs import read_metrics
from lightrl.rollout import rewards, verifier_scores
from lightrl.train import train


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4", "assert add(0, 5) == 5"]
ECHO_TESTS = [["3\n", "6\n"], ["10\n", "20\n"]]


def code_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "code.jsonl", [
        {"prompt": "Write add(a, b).", "tests": ADD_TESTS},
        {"question": "Read n from stdin and print 2n.", "test_cases": ECHO_TESTS},
    ])


def test_code_rows_and_bad_rows(tmp_path):
    rows, bad = load_rows(code_file(tmp_path), reward="code")
    assert bad == 0
    assert rows == [{"question": "Write add(a, b).", "tests": ADD_TESTS},
                    {"question": "Read n from stdin and print 2n.", "tests": [("3\n", "6\n"), ("10\n", "20\n")]}]
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"question": "ok", "test_list": ["assert True"]},
        {"question": "no tests"},
        {"question": "empty", "tests": []},
        {"question": "mixed", "tests": ["assert True", ["1", "1"]]},
        {"question": "not python", "tests": ["assert (("]},
        {"question": "a string", "tests": "assert True"},
        {"question": "triple", "tests": [["1", "1", "1"]]},
        '{"question": "broken", ',
        {"q": "custom field", "checks": [["", "hi\n"]]},
        {"question": "a method call", "tests": ["assert obj.f(1) == 2"]},
    ])
    for line, message in [(2, "missing tests field 'tests'"), (3, "field 'tests': tests: expected a non-empty list"),
                          (4, "field 'tests': tests: expected all assert strings"),
                          (5, r"field 'tests': tests\[0\] is not valid Python"),
                          (6, "field 'tests': tests: expected a non-empty list"),
                          (7, "field 'tests': tests: expected all assert strings"), (8, "malformed JSON"),
                          (10, r"field 'tests': tests\[0\] 'assert obj.f\(1\) == 2': `obj.f\(1\)`: only the "
                               "solution's functions by name")]:
        where = f"bad{line}.jsonl:{line}" + (":24" if line == 8 else "")  # a JSON error also names its column
        lines = [json.dumps({"question": "ok", "tests": ["assert True"]})] * (line - 1)
        g = write_jsonl(tmp_path / f"bad{line}.jsonl", lines + [open(f).read().splitlines()[line - 1]])
        with pytest.raises(BadRow, match=rf"{where}: {message}"):
            load_rows(g, reward="code")
    rows, bad = load_rows(f, reward="code", skip_bad_rows=True)
    assert bad == 9 and rows == [{"question": "ok", "tests": ["assert True"]}]
    rows, bad = load_rows(f, "q", reward="code", tests_field="checks", skip_bad_rows=True)
    assert bad == 9 and rows == [{"question": "custom field", "tests": [("", "hi\n")]}]
    with pytest.raises(BadRow, match=r"bad.jsonl:1: missing tests field 'checks'.*set --tests-field"):
        load_rows(f, reward="code", tests_field="checks")
    # The answer field is not needed for code, and math mode is unchanged (it still wants one).
    with pytest.raises(BadRow, match="missing answer field 'answer'"):
        load_rows(f)


GOOD = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\n"
HALF = "```python\ndef add(a, b):\n    return a + b if a != 2 else 0\n```"  # fails add(2, 2) only
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"  # passes none of the four
FORK_BOMB = "```python\nimport os\nwhile True:\n    os.fork()\n```"
DOUBLE = "```python\nprint(2 * int(input()))\n```"
CHEAT = "```python\nclass Same:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Same()\n```"


class TextTokenizer:
    """batch_decode of 'token ids' that are the texts themselves: rewards on hand-written completions."""

    def batch_decode(self, comps, skip_special_tokens=True):
        return list(comps)


class Row:
    overlong_penalty = 0.0

    def overlong_buffer_tokens(self, max_new_tokens):
        return 0


def test_rewards_score_completions_in_the_sandbox(tmp_path):
    rows, _ = load_rows(code_file(tmp_path), reward="code")
    add, double = rows
    comps = [GOOD, HALF, WRONG, FORK_BOMB, "no code at all", CHEAT, DOUBLE, GOOD]
    per_comp = [add, add, add, add, add, add, double, double]
    cfg = Config(reward="code", format_weight=0.0)
    scores, shaping = rewards(comps, per_comp, TextTokenizer(), cfg, Row())
    assert scores == [1.0, 0.75, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert shaping == [0.0] * len(comps)


def test_math_scores_unchanged():
    rows = [{"question": "q", "answer": "4"}] * 3
    assert verifier_scores(["\\boxed{4}", "\\boxed{5}", "4"], rows, "math") == [1.0, 0.0, 1.0]


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--reward code: --data 'arithmetic' is a built-in math set without tests"):
        validate(parse_args(["--reward", "code"])[0])
    data = code_file(tmp_path)
    with pytest.raises(ValueError, match=r"--eval-data 'arithmetic-test' .* or --eval-data '' for no evaluation"):
        validate(parse_args(["--reward", "code", "--data", data])[0])
    with pytest.raises(ValueError, match=r"--reward must be math, code or module:function .*; got 'regex'"):
        validate(parse_args(["--reward", "regex"])[0])
    with pytest.raises(ValueError, match=r"--warm-start-steps 0"):
        validate(parse_args(["--reward", "code", "--data", data, "--eval-data", data])[0])
    validate(parse_args(["--reward", "code", "--data", data, "--eval-data", data, "--tests-field", "tests",
                         "--warm-start-steps", "0"])[0])
    # train() stops on the same error before any model is built or run directory written.
    with pytest.raises(ValueError, match="built-in math set"):
        train(Config(reward="code", out_dir=str(tmp_path / "runs")))
    assert not os.path.exists(tmp_path / "runs")


def test_one_step_on_the_tiny_model(tmp_path):
    # The random tiny model writes no code: every reward is 0, and the step must still be finite.
    data = code_file(tmp_path)
    run = train(Config(reward="code", data=data, eval_data=data, instruction="", steps=1, prompts_per_step=2,
                       group_size=2, max_new_tokens=4, warm_start_steps=0, out_dir=str(tmp_path), run_name="code",
                       progress=False, save_every=0, threads=1, micro_batch=8))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 1 and steps[0]["reward_mean"] == 0.0 and math.isfinite(steps[0]["loss"])
    assert [r["eval_accuracy"] for r in rows if "eval_accuracy" in r] == [0.0]
