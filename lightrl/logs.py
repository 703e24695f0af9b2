"""Run outputs and messages: metrics.jsonl, TensorBoard events, optional wandb, curves.png, and the
plain-text log a person reads.

Messages go through Python's `logging`, logger "lightrl" (by default a "lightrl: ..." line on stdout,
warnings as "lightrl: warning: ..." on stderr):
`logging.getLogger("lightrl").setLevel(logging.WARNING)` silences the info lines, and replacing its
handlers (`.handlers = [my_handler]`) redirects them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger("lightrl")


class _TqdmHandler(logging.Handler):
    """Writes info records to the current sys.stdout and warnings to sys.stderr (as `lightrl: warning: ...`)
    through tqdm.write, so live progress bars are not torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            warning = record.levelno >= logging.WARNING
            text = f"lightrl: {'warning: ' if warning else ''}{record.getMessage()}"
            tqdm.write(text, file=sys.stderr if warning else sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


if not logger.handlers:
    logger.addHandler(_TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the handler above already prints; a configured root logger would repeat it


def show_bars(progress: bool) -> bool:
    """Progress bars only when asked for and both stdout and stderr are terminals (piped bars are noise)."""
    return progress and sys.stdout.isatty() and sys.stderr.isatty()


# ---- metrics.jsonl + fan-out ------------------------------------------------------------------


class MetricsLog:
    """One JSON line per step, the same scalars to TensorBoard (and wandb), a plain log line every
    `cfg.log_every` steps when there are no progress bars, and the curves and a summary at the end.

    On resume, lines (and TensorBoard events) past the checkpoint's step are dropped: the resumed
    run writes those steps again. `started` is when the run began (time.time()), for the wall time.
    """

    def __init__(self, run_dir: str, cfg, resume_step: int = 0, started: float | None = None):
        from tensorboardX import SummaryWriter  # imported here: ~1 s, and only a run needs it

        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "metrics.jsonl")
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self.rows = kept
        self.file = open(self.path, "a")
        # The suffix keeps a resumed run's file apart from (and sorted after) one opened in the same second;
        # purge_step hides the old file's events past the checkpoint.
        self.tb = SummaryWriter(run_dir, purge_step=resume_step + 1 if resume_step else None,
                                filename_suffix=f".{time.time_ns()}")
        self.wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("--wandb needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, name=os.path.basename(run_dir), config=cfg.to_dict(),
                                    dir=run_dir, resume="allow")
        self.total, self.log_every, self.plain = cfg.steps, cfg.log_every, not show_bars(cfg.progress)
        self.loop_start, self.loop_first = time.time(), resume_step
        self.started = self.loop_start if started is None else started

    def write(self, metrics: dict) -> None:
        """Record one step's metrics (a dict with "step" and float/int values)."""
        self.rows.append(metrics)
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        step = metrics["step"]
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, float(v), step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.plain and (step % self.log_every == 0 or step == self.total or step == self.loop_first + 1
                           or "eval_accuracy" in metrics):
            logger.info(self.progress_line(metrics))

    def progress_line(self, m: dict) -> str:
        """'step 20/80 | reward 0.412 | acc 0.398 | kl 0.0012 | entropy 0.85 | 2,345 tok/s | 0:12 elapsed | ETA 0:36'."""
        now = time.time()
        done = m["step"] - self.loop_first
        eta = (self.total - m["step"]) * (now - self.loop_start) / max(done, 1)
        parts = [f"step {m['step']}/{self.total}", f"reward {m['reward_mean']:.3f}", f"acc {m['accuracy']:.3f}",
                 f"kl {m.get('kl_mean', 0.0):.4f}", f"entropy {m.get('entropy', 0.0):.3f}",
                 f"{m.get('tokens_per_s', 0.0):,.0f} tok/s", f"{_clock(now - self.started)} elapsed",
                 f"ETA {_clock(eta)}"]
        if "eval_accuracy" in m:
            parts.insert(3, f"eval acc {m['eval_accuracy']:.3f}")
        if m.get("reward_errors"):
            parts.append(f"{m['reward_errors']} reward errors")
        if m.get("skipped"):
            parts.append("update skipped")
        return " | ".join(parts)

    def close(self) -> str:
        """Close the files, draw curves.png, log the summary and return it."""
        self.file.close()
        self.tb.close()
        plot_curves(self.rows, os.path.join(self.run_dir, "curves.png"))
        if self.wandb is not None:
            self.wandb.finish()
        text = summary(self.rows, self.run_dir, time.time() - self.started)
        logger.info(text)
        return text


def summary(rows: list[dict], run_dir: str, wall_s: float) -> str:
    """The end-of-run report: first vs last reward, best and final eval accuracy, wall time, outputs."""
    lines = [f"done: {rows[-1]['step'] if rows else 0} steps, wall time {_clock(wall_s)}"]
    if rows:
        # The demo's reward moves within a few steps, then flattens: a short window at the start.
        first, last = rows[:max(1, min(3, len(rows) // 2))], rows[-max(1, min(10, len(rows) // 2)):]
        mean = lambda rs: sum(r["reward_mean"] for r in rs) / len(rs)  # noqa: E731
        lines.append(f"  reward_mean {mean(first):.3f} (steps {_span(first)}) -> {mean(last):.3f} "
                     f"(steps {_span(last)})")
    evals = [r for r in rows if "eval_accuracy" in r]
    if evals:
        best = max(evals, key=lambda r: r["eval_accuracy"])
        lines.append(f"  eval accuracy: best {best['eval_accuracy']:.3f} (step {best['step']}), "
                     f"final {evals[-1]['eval_accuracy']:.3f} (step {evals[-1]['step']})")
    run = os.path.abspath(run_dir)
    latest = os.path.join(run, "checkpoints", "latest")
    ckpt = ""
    if os.path.exists(latest):
        with open(latest) as f:
            ckpt = f", checkpoints/{f.read().strip()} (the latest)"
    lines.append(f"  outputs in {run}: metrics.jsonl, curves.png, TensorBoard events "
                 f"(tensorboard --logdir {os.path.dirname(run)}){ckpt}")
    return "\n".join(lines)


def _span(rows: list[dict]) -> str:
    a, b = rows[0]["step"], rows[-1]["step"]
    return f"{a}" if a == b else f"{a}-{b}"


def _clock(seconds: float) -> str:
    """'1:02:03' or '2:03' (h:mm:ss / m:ss)."""
    s = int(round(max(seconds, 0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl (a torn last line from a crash is ignored)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


# ---- curves.png -------------------------------------------------------------------------------

# (title, y label, metric keys) per panel; reward terms (reward_<name>) join the first panel.
PANELS = [
    ("Reward and accuracy", "mean over samples", ["reward_mean", "accuracy", "eval_accuracy"]),
    ("KL to the reference", "KL (nats / token)", ["kl_mean"]),
    ("Entropy", "nats / token", ["entropy"]),
    ("Completion length", "tokens", ["completion_len_mean", "completion_len_max"]),
    ("Clipped tokens", "fraction", ["clip_frac_low", "clip_frac_high"]),
    ("Kept samples", "fraction", ["kept_frac"]),
]
LABELS = {"reward_mean": "reward", "accuracy": "accuracy (train)",
          "eval_accuracy": "eval accuracy (held out)", "kl_mean": "KL", "entropy": "entropy",
          "completion_len_mean": "mean", "completion_len_max": "max", "clip_frac_low": "clipped low",
          "clip_frac_high": "clipped high", "kept_frac": "kept"}


def _label(key: str) -> str:
    return LABELS.get(key) or (f"{key[len('reward_'):]} reward" if key.startswith("reward_") else key)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_curves(rows: list[dict], path: str) -> list[str]:
    """Draw curves.png from metrics rows with matplotlib (Agg, no display needed).

    One panel per entry of PANELS on a shared step axis; series that are constant (or absent) are left
    out, and so is a panel left with none; series logged on only some steps (evaluation) get markers.
    A series equal to one already drawn is folded into its label. Returns the titles of the panels drawn.
    """
    from matplotlib.figure import Figure

    terms = sorted({k for r in rows for k in r if k.startswith("reward_") and k not in ("reward_mean", "reward_errors")})
    n_steps = len({r["step"] for r in rows})
    panels = []
    for title, ylabel, keys in PANELS:
        drawn = []  # (label, steps, values, sparse)
        for key in keys + (terms if title.startswith("Reward") else []):
            steps, values = _series(rows, key)
            if not values or (len(values) > 1 and max(values) - min(values) <= 1e-12 * max(1.0, abs(values[0]))):
                continue
            same = [d for d in drawn if d[1] == steps and d[2] == values]
            if same:
                same[0][0] += f" = {_label(key)}"
                continue
            drawn.append([_label(key), steps, values, len(steps) < max(2, n_steps // 2)])
        if drawn:
            panels.append((title, ylabel, drawn))

    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(6.4 * ncols, 3.4 * nrows), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax, (title, ylabel, drawn) in zip(axes, panels):
        for label, steps, values, sparse in drawn:
            ax.plot(steps, values, label=label, linewidth=1.4, marker="o" if sparse else None, markersize=5)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    # With a hidden last panel the axis above it is the bottom of its column: it needs the step labels.
    for i, ax in enumerate(axes[:len(panels)]):
        if i + ncols >= len(panels):
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("step")
    if not panels:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no varying metrics logged", ha="center", va="center")
    fig.suptitle(f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}: {n_steps} steps", fontsize=12)
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return [title for title, _, _ in panels]
