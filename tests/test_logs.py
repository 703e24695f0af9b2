"""Run outputs: TensorBoard events read back with TensorBoard's own reader, curves.png, the plain
log lines and the end-of-run summary, and silencing them through `logging`."""
import logging
import os
from types import SimpleNamespace

import pytest

from lightrl.logs import MetricsLog, plot_curves, read_metrics, summary


def cfg(**kw):
    base = dict(steps=10, log_every=4, progress=False, wandb=False)
    base.update(kw)
    return SimpleNamespace(**base)


def step_row(s, **kw):
    row = {"step": s, "reward_mean": s / 10, "accuracy": s / 20, "kl_mean": 0.001 * s, "entropy": 1.0 - s / 100,
           "tokens_per_s": 1234.0, "kept_frac": 1.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0,
           "completion_len_mean": 5.0 + s % 3, "completion_len_max": 8, "skipped": 0}
    row.update(kw)
    return row


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = MetricsLog(str(tmp_path), cfg(steps=3))
    for s in (1, 2, 3):
        log.write(step_row(s, eval_accuracy=0.25) if s == 3 else step_row(s))
    log.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward_mean")] == [(1, pytest.approx(0.1)),
                                                                        (2, pytest.approx(0.2)),
                                                                        (3, pytest.approx(0.3))]
    assert [(e.step, e.value) for e in acc.Scalars("eval_accuracy")] == [(3, 0.25)]
    assert "step" not in acc.Tags()["scalars"] and "tokens_per_s" in acc.Tags()["scalars"]
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]


def test_resume_drops_lines_and_events_past_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = MetricsLog(str(tmp_path), cfg(steps=4))
    for s in (1, 2, 3):
        log.write(step_row(s))
    log.close()
    log = MetricsLog(str(tmp_path), cfg(steps=4), resume_step=2)  # the checkpoint was at step 2
    log.write(step_row(3, reward_mean=0.9))
    log.write(step_row(4, reward_mean=0.8))
    log.close()
    assert [(r["step"], r["reward_mean"]) for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == \
        [(1, 0.1), (2, 0.2), (3, 0.9), (4, 0.8)]
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("reward_mean")] == [(1, 0.1), (2, 0.2), (3, 0.9), (4, 0.8)]


def test_curves_png_leaves_out_constant_series_and_marks_sparse_ones(tmp_path):
    from matplotlib.image import imread
    rows = [step_row(s, **({"eval_accuracy": s / 25} if s % 5 == 0 else {})) for s in range(1, 21)]
    png = tmp_path / "curves.png"
    titles = plot_curves(rows, str(png))
    # kept_frac and both clip fractions are constant: no panel for them.
    assert titles == ["Reward and accuracy", "KL to the reference", "Entropy", "Completion length"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(str(png)).shape[:2]
    assert (width, height) == (1408, 748)  # 2 x 2 panels of 6.4 x 3.4 in at 110 dpi
    assert plot_curves([{"step": 1, "reward_mean": 0.5}], str(png)) == ["Reward and accuracy"]
    assert plot_curves([], str(png)) == []


def test_plain_lines_every_log_every_steps_and_a_summary(tmp_path, capsys):
    log = MetricsLog(str(tmp_path), cfg(steps=10, log_every=4), started=0.0)
    for s in range(1, 11):
        log.write(step_row(s, eval_accuracy=0.5 + s / 100) if s in (5, 10) else step_row(s))
    os.makedirs(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "latest").write_text("step_000010")
    text = log.close()
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split(" | ")[0] for line in lines if line.startswith("lightrl: step ")]
    assert steps == ["lightrl: step 1/10", "lightrl: step 4/10", "lightrl: step 5/10", "lightrl: step 8/10",
                     "lightrl: step 10/10"]
    first = next(line for line in lines if line.startswith("lightrl: step 4/10"))
    assert first.startswith("lightrl: step 4/10 | reward 0.400 | acc 0.200 | kl 0.0040 | entropy 0.960 | "
                            "1,234 tok/s | ")
    assert "elapsed | ETA " in first
    assert "| eval acc 0.550 |" in next(line for line in lines if line.startswith("lightrl: step 5/10"))
    assert log.progress_line(step_row(3, reward_errors=5, skipped=1)).endswith(" | 5 reward errors | update skipped")
    assert text.splitlines()[1:3] == ["  reward_mean 0.200 (steps 1-3) -> 0.800 (steps 6-10)",
                                      "  eval accuracy: best 0.600 (step 10), final 0.600 (step 10)"]
    assert f"outputs in {tmp_path}: metrics.jsonl, curves.png" in text and "checkpoints/step_000010" in text
    assert text.splitlines()[0].startswith("done: 10 steps, wall time ")
    assert "lightrl: done: 10 steps" in "\n".join(lines)


def test_no_plain_lines_with_progress_bars_and_logging_silences_the_rest(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lightrl.logs.show_bars", lambda progress: progress)  # as if on a terminal
    log = MetricsLog(str(tmp_path), cfg(steps=2, progress=True))
    log.write(step_row(1))
    log.write(step_row(2))
    assert capsys.readouterr().out == ""  # the bars show progress; no plain lines
    logger = logging.getLogger("lightrl")
    logger.setLevel(logging.WARNING)
    try:
        log.close()
    finally:
        logger.setLevel(logging.INFO)
    assert capsys.readouterr().out == ""  # the summary is an info message: silenced


def test_summary_of_a_short_run_without_eval():
    text = summary([step_row(1)], "/x/runs/a", 65.4)
    assert text.splitlines()[:2] == ["done: 1 steps, wall time 1:05", "  reward_mean 0.100 (steps 1) -> 0.100 (steps 1)"]
    assert "eval accuracy" not in text and "checkpoints/" not in text
