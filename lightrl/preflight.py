"""Every check a run can make before it imports torch, loads a model or creates its run directory.

`preflight(cfg)` validates the configuration, the resume target (checkpoint names, manifest,
metrics history), the data files, the model path and the device, and returns what the
trainer needs to start (Start). Errors are ValueError (UserError or config.validate's), which
`python -m lightrl.run` prints as one `lightrl: error:` line with exit status 2; warnings for
silent traps go to stderr as `lightrl: warning:` lines.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import time
from dataclasses import dataclass

from lightrl import checkpoint
from lightrl.algos import AlgoRow
from lightrl.config import MAX_SAMPLES, Config, validate
from lightrl.data import load_rows
from lightrl.rewards.combined import data_kind
from lightrl.errors import UserError
from lightrl.logs import logger

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Start:
    """What preflight found: the algorithm row, where the run lives and the loaded data."""
    row: AlgoRow
    run_dir: str
    ckpt: str | None          # checkpoint to resume from (None: a new run)
    rows: list[dict]
    eval_rows: list[dict]     # already cut to eval_limit
    bad_rows: int             # rows skipped with --skip-bad-rows (train and eval data)


def preflight(cfg: Config) -> Start:
    """Check everything that can be checked cheaply; returns Start, raises ValueError, creates nothing."""
    row = validate(cfg)
    run_dir, ckpt = _run_dir(cfg)
    if ckpt:
        _check_resume(cfg, row, run_dir, ckpt)
    rows, eval_rows, bad_rows = _data(cfg)
    _check_model(cfg)
    _check_device(cfg)
    return Start(row, run_dir, ckpt, rows, eval_rows, bad_rows)


def warn(message: str) -> None:
    logger.warning(message)


def _run_dir(cfg: Config) -> tuple[str, str | None]:
    if cfg.resume:
        ckpt = checkpoint.find(cfg.resume)
        if ckpt is None:
            raise UserError(f"--resume {cfg.resume}: no complete checkpoint there (checkpoints/latest missing); "
                            "pass a run directory that has saved a checkpoint, or start a new run")
        return os.path.dirname(os.path.dirname(ckpt)), ckpt
    name = cfg.run_name or f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(cfg.out_dir, name)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir} is a file; pick another --run-name or --out-dir")
    if os.path.exists(os.path.join(run_dir, "checkpoints", "latest")):
        raise UserError(f"{run_dir} already holds checkpoints: continue it with --resume {run_dir}, "
                        "or pick another --run-name")
    parent = next(p for p in _ancestors(os.path.abspath(run_dir)) if os.path.exists(p))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {run_dir}: {parent} is not writable; pass another --out-dir")
    return run_dir, None


def _ancestors(path: str):
    while True:
        yield path
        if os.path.dirname(path) == path:
            return
        path = os.path.dirname(path)


def _check_resume(cfg: Config, row: AlgoRow, run_dir: str, ckpt: str) -> None:
    step = checkpoint.step_of(ckpt)
    if step >= cfg.steps:
        raise UserError(f"nothing to do: {run_dir} is already at step {step} (--steps {cfg.steps}); "
                        f"pass --steps M with M > {step} to continue")
    checkpoint.verify(ckpt, checksums=not cfg.resume_ignore_checksum)
    _check_metrics(os.path.join(run_dir, "metrics.jsonl"))
    # A critic and a refreshed reference live only in the checkpoint: nothing could rebuild them.
    for needed, name, why in ((row.critic, "critic", "a critic"), (row.ref_refresh, "reference",
                                                                    "a refreshed reference (ref_refresh)")):
        path = os.path.join(ckpt, name, "model.safetensors")
        if needed and not os.path.isfile(path):
            raise UserError(f"{path} is missing: algo {cfg.algo!r} has {why}, which the resume needs; "
                            "resume a checkpoint written by a run of this algorithm")
    if cfg.model == "tiny":
        # The reference policy (and vLLM's starting weights) of a tiny-model run is its warm start.
        warm = os.path.join(run_dir, "warm_start")
        vllm = cfg.engine == "vllm" or (cfg.engine == "auto" and cfg.device != "cpu"
                                        and importlib.util.find_spec("vllm") is not None)
        if os.path.exists(warm) or row.needs_ref or vllm:
            for name in ("config.json", "model.safetensors"):
                if not os.path.isfile(os.path.join(warm, name)):
                    raise UserError(f"{os.path.join(warm, name)} is missing: this run's warm-started starting "
                                    "policy, which the resume needs and cannot rebuild; restore it or start a "
                                    "new run")


def _check_metrics(path: str) -> None:
    """Refuse to resume over a metrics history with a garbage line: the resume would drop it and all
    lines after it. Only a torn last line (a crash while writing it) is expected and fine."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for i, raw in enumerate(lines[:-1], 1):
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and "step" in record):
            raise UserError(f"{path}:{i}: not a metrics line ({raw[:40]!r}); resuming would drop it and the "
                            f"{len(lines) - i} line(s) after it; delete or repair that line, then resume")


def _data(cfg: Config) -> tuple[list[dict], list[dict], int]:
    rows, bad_rows = load_rows(cfg.data, cfg.question_field, cfg.answer_field, skip_bad_rows=cfg.skip_bad_rows,
                               seed=cfg.seed, reward=data_kind(cfg.reward), tests_field=cfg.tests_field)
    eval_rows = []
    if cfg.eval_data:
        eval_rows, bad_eval = load_rows(cfg.eval_data, cfg.question_field, cfg.answer_field,
                                        skip_bad_rows=cfg.skip_bad_rows, seed=cfg.seed, reward=data_kind(cfg.reward),
                                        tests_field=cfg.tests_field)
        bad_rows += bad_eval
        eval_rows = eval_rows[:cfg.eval_limit] if cfg.eval_limit else eval_rows
        if cfg.eval_k * len(eval_rows) > MAX_SAMPLES:
            raise UserError(f"--eval-k x eval rows = {cfg.eval_k} x {len(eval_rows)} = {cfg.eval_k * len(eval_rows)} "
                            f"completions per evaluation; at most {MAX_SAMPLES} fit (all are held in memory); "
                            "lower --eval-k or --eval-limit")
    if cfg.model == "tiny":
        from lightrl.tiny import CHARS, unknown_chars
        for name, data in (("--data", rows), ("--eval-data", eval_rows)):
            odd = [r for r in data if unknown_chars(r["question"])]
            if odd:
                chars = sorted(set().union(*(unknown_chars(r["question"]) for r in odd)))
                warn(f"--model tiny: {len(odd)} of {len(data)} {name} questions (first: {odd[0]['question'][:40]!r}) "
                     f"hold characters the tiny tokenizer reads as <unk>: {''.join(chars[:20])!r}; it knows only "
                     f"{''.join(CHARS)!r} and \\boxed{{ (use a real --model for text)")
    return rows, eval_rows, bad_rows


def _check_model(cfg: Config) -> None:
    """A local model directory must hold a config and a tokenizer; a hub id must be cached or reachable."""
    model = cfg.model
    if model == "tiny":
        return
    if os.path.isdir(model):
        _check_model_dir(model, model, cfg.instruction)
        return
    if not HUB_ID.fullmatch(model) or model.startswith((".", "~")):
        raise UserError(f"--model {model}: no such local directory (a Hugging Face id looks like org/name)")
    cached = _hub_cached(model)
    if cached:  # its snapshot directory is checked like a local one
        _check_model_dir(model, os.path.dirname(cached), cfg.instruction)
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or not _hub_reachable():
        raise UserError(f"--model {model}: not a local directory, not in the Hugging Face cache, and this machine "
                        "has no hub access; download it on a machine that has, then pass its local directory")


def _check_model_dir(model: str, path: str, instruction: str) -> None:
    """model: as the user wrote it; path: its directory (the hub cache's snapshot for a hub id)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"--model {model}: no config.json in {path}; pass a Hugging Face model directory "
                        "(save_pretrained output)")
    if not any(os.path.isfile(os.path.join(path, n)) for n in checkpoint.TOKENIZER_FILES):
        raise UserError(f"--model {model}: no tokenizer file ({', '.join(checkpoint.TOKENIZER_FILES)}) in {path}")
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            checkpoint.check_safetensors(os.path.join(path, name))
    if instruction and not _has_chat_template(path):
        warn(f"--model {model} has no chat template: each prompt is sent as the question, a newline, "
             f"--instruction ({instruction[:40]!r}...) and a newline; pass --instruction '' to send the bare "
             "question")


def _has_chat_template(model_dir: str) -> bool:
    if any(os.path.isfile(os.path.join(model_dir, n)) for n in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
            return bool(json.load(f).get("chat_template"))
    except (OSError, ValueError):
        return False


def _hub_cached(model: str) -> str | None:
    """Path of the model's config.json in the Hugging Face cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model, "config.json")
    return found if isinstance(found, str) else None


def _hub_reachable() -> bool:
    host = re.sub(r"^https?://|[:/].*$", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((host, 443), timeout=1.0).close()
        return True
    except OSError:
        return False


def _check_device(cfg: Config) -> None:
    """--device cuda needs CUDA here, and --backend triton a CUDA device (or TRITON_INTERPRET=1)."""
    if not (cfg.device.startswith("cuda") or cfg.backend == "triton" or cfg.engine == "vllm"):
        return
    import torch  # the only check that needs it
    cuda = torch.cuda.is_available()
    if cfg.device.startswith("cuda"):
        if not cuda:
            raise UserError(f"--device {cfg.device}: CUDA is not available here; use --device cpu")
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    on_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and cuda)
    if cfg.engine == "vllm" and not on_cuda:
        raise UserError("--engine vllm needs a CUDA device; use --engine hf on CPU")
    if cfg.backend == "triton":
        if importlib.util.find_spec("triton") is None:
            raise UserError("--backend triton needs the triton package (Linux, CUDA); use --backend torch")
        if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise UserError("--backend triton needs a CUDA device (here: cpu), or TRITON_INTERPRET=1 for "
                            "Triton's slow CPU interpreter; use --backend torch or auto")
