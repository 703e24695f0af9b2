"""--reward module:function and weighted sums of rewards (lightrl.rewards.combined), down to a training run."""
import math
import os
import textwrap

import pytest

from lightrl.config import Config, parse_args, validate
from lightrl.logs import read_metrics
from lightrl.rewards.combined import load_rewards, reward_stats, score
from lightrl.train import train

MODULE = "lightrl_test_user_rewards"
SOURCE = textwrap.dedent('''
    import math

    CALLS = []

    def brevity(completions, rows):
        """-0.1 per character: shorter is better."""
        CALLS.append(len(completions))
        return [-0.1 * len(c) for c in completions]

    def broken(completions, rows):
        raise RuntimeError("bug in my reward")

    def nan_on_second(completions, rows):
        return [1.0, math.nan] + [0.5] * (len(completions) - 2)

    def too_few(completions, rows):
        return [1.0]

    not_a_function = 3
''')


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward_stats(reset=True)
    return MODULE


ROWS = [{"question": "1+1=", "answer": "2"}] * 3
TEXTS = ["\\boxed{2}", "\\boxed{3}", "\\boxed{2} because"]


def test_weighted_sum_and_per_term_means(user_module):
    scores = score(("math", f"{user_module}:brevity=0.1"), TEXTS, ROWS)
    assert scores == pytest.approx([1 - 0.09, 0 - 0.09, 1 - 0.17])
    stats = reward_stats(reset=True)
    assert stats == pytest.approx({"reward_math": 2 / 3, f"reward_{user_module}:brevity": -(0.9 + 0.9 + 1.7) / 3,
                                   "reward_errors": 0})
    assert reward_stats() == {"reward_errors": 0}  # reset


def test_failing_rewards_score_zero_are_counted_and_warned_once(user_module, capsys):
    specs = ("math", f"{user_module}:broken", f"{user_module}:nan_on_second=2")
    assert score(specs, TEXTS, ROWS) == [1.0 + 2.0, 0.0 + 0.0, 1.0 + 1.0]
    assert score(specs, TEXTS, ROWS) == [3.0, 0.0, 2.0]
    assert reward_stats(reset=True)["reward_errors"] == 6  # broken fails all 3 completions, twice
    out = capsys.readouterr().err
    assert out.count(f"reward {user_module}:broken raised RuntimeError: bug in my reward") == 1
    assert out.count(f"reward {user_module}:nan_on_second returned nan for completion 1") == 1
    assert score((f"{user_module}:too_few",), TEXTS, ROWS) == [0.0, 0.0, 0.0]
    assert "returned 1 values for 3 completions" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("regex", r"--reward must be math, code or module:function .*; got 'regex'"),
    ("no_such_module_xyz:f", r"--reward 'no_such_module_xyz:f': cannot import module 'no_such_module_xyz' "
                             r"\(ModuleNotFoundError"),
    (f"{MODULE}:missing", rf"--reward '{MODULE}:missing': module '{MODULE}' \(.*{MODULE}\.py\) has no function "
                          r"'missing'$"),
    (f"{MODULE}:not_a_function", r"has no function 'not_a_function' \(it is a int\)"),
    (f"{MODULE}:brevity=abc", rf"--reward '{MODULE}:brevity=abc': weight 'abc' is not a number"),
])
def test_bad_specs_name_the_module_and_function(user_module, spec, message):
    with pytest.raises(ValueError, match=message):
        load_rewards((spec,))


def test_specs_from_the_command_line_and_configs(user_module):
    cfg, _ = parse_args(["--reward", "math", "--reward", f"{user_module}:brevity=0.1"])
    assert cfg.reward == ("math", f"{user_module}:brevity=0.1")
    assert parse_args([])[0].reward == ("math",) and Config(reward="code").reward == ("code",)
    validate(cfg)
    with pytest.raises(ValueError, match="--reward math is given twice"):
        validate(parse_args(["--reward", "math", "--reward", "math=2"])[0])
    with pytest.raises(ValueError, match="math and --reward code cannot be combined"):
        load_rewards(("math", "code"))
    with pytest.raises(ValueError, match=f"cannot import module '{user_module}x'"):
        validate(parse_args(["--reward", f"{user_module}x:brevity"])[0])


def test_training_logs_each_reward_and_survives_a_broken_one(user_module, warm_model, tmp_path):
    run = train(Config(model=warm_model, data="arithmetic", eval_data="", instruction="", steps=2,
                       prompts_per_step=4, group_size=4, max_new_tokens=6, warm_start_steps=0, out_dir=str(tmp_path),
                       run_name="r", progress=False, save_every=0, threads=1, micro_batch=8,
                       reward=("math", f"{user_module}:brevity=0.1", f"{user_module}:broken")))
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and [r["reward_errors"] for r in rows] == [16, 16]
    for r in rows:
        assert r[f"reward_{user_module}:broken"] == 0.0 and r[f"reward_{user_module}:brevity"] < 0
        # reward = math + 0.1 * brevity (+ 0 for the broken term); accuracy is that same score here.
        assert r["reward_mean"] == pytest.approx(r["reward_math"] + 0.1 * r[f"reward_{user_module}:brevity"])
        assert math.isfinite(r["loss"])
