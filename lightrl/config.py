"""The run configuration: one dataclass, filled from defaults < a TOML/YAML file < the command line.

The defaults are the embedded CPU demo (tiny model, arithmetic task); a real run
sets --model, --data and the sizes (see the README's GSM8K example).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field

from lightrl.algos import ALGOS, AlgoRow, algos_markdown, get_algo

# Rollout seeds: each step owns a block of this many, one per refill round (so max_refills < this).
ROLLOUT_SEEDS_PER_STEP = 64
# Completions of one step (or one evaluation) are all held in memory at once, as token lists and tensors.
MAX_SAMPLES = 1 << 16


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class Config:
    # what to train
    algo: str = _opt("grpo", "algorithm row of lightrl.algos.ALGOS (see --list-algos)")
    row: dict = _opt(None, "overrides of the algorithm row's fields, e.g. --set eps_high=0.28 --set kl_coef=0",
                     repr=False)
    model: str = _opt("tiny", "local model directory or Hugging Face id (org/name); "
                              "'tiny' = the built-in random tiny Llama with a character tokenizer")
    data: str = _opt("arithmetic", "training prompts: a .jsonl/.parquet file, or built-in "
                                   "'arithmetic' (the tiny model's task), 'arithmetic-hard' (its harder task, "
                                   "two-digit sums), 'gsm8k', 'math500'")
    question_field: str = _opt("", "field holding the question ('' = first of question/problem/prompt)")
    answer_field: str = _opt("", "field holding the gold answer ('' = first of answer/final_answer/solution)")
    reward: tuple = _opt(("math",), "reward term, repeatable: 'math' (answer vs the gold answer), 'code' "
                                    "(fraction of the row's tests passed in the sandbox; the rows must carry "
                                    "tests) or 'module:function' (your f(completions, rows) -> list of floats); "
                                    "NAME=WEIGHT weights a term, e.g. --reward math --reward mypkg:brevity=0.1")
    tests_field: str = _opt("", "reward code: field holding the tests, a JSON list of assert strings or "
                                "[stdin, stdout] pairs ('' = first of tests/test_cases/test_list)")
    instruction: str = _opt("Please reason step by step, and put your final answer within \\boxed{}.",
                            "appended to each question in the chat template (models with one)")
    skip_bad_rows: bool = _opt(False, "skip malformed data rows (counted in metrics) instead of stopping")
    # sampling
    engine: str = _opt("auto", "rollout engine: 'hf' (transformers generate), 'vllm' (CUDA only), "
                               "'auto' = vllm when CUDA and vllm are available, else hf")
    gpu_memory_utilization: float = _opt(0.3, "vllm: fraction of GPU memory for weights + KV cache")
    vllm_sleep: bool = _opt(True, "vllm: release the engine's GPU memory (sleep) during each update")
    prompts_per_step: int = _opt(16, "prompts per optimizer step (each sampled group_size times)")
    group_size: int = _opt(8, "completions per prompt (the row's sample_factor multiplies it)")
    temperature: float = _opt(0.7, "sampling temperature of rollouts, also used in the loss' softmax "
                                   "(0.7 suits the demo; 1.0 is usual for LLMs)")
    top_p: float = _opt(1.0, "nucleus sampling of rollouts")
    max_prompt_tokens: int = _opt(512, "prompts longer than this are cut from the left")
    max_new_tokens: int = _opt(8, "completion length limit")
    mask_truncated: bool = _opt(False, "completions that hit max_new_tokens get no gradient")
    max_refills: int = _opt(4, "refill rows: at most this many extra rounds of prompts per step")
    # optimisation
    steps: int = _opt(80, "optimizer steps of RL")
    lr: float = _opt(5e-4, "AdamW learning rate (the default suits the tiny model; use ~1e-6 for real LLMs)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    warmup_steps: int = _opt(0, "linear learning-rate warmup, in RL steps")
    grad_clip: float = _opt(1.0, "max gradient norm (0 = off)")
    updates_per_batch: int = _opt(1, "optimizer steps on each rollout batch (>1 makes ratios matter)")
    critic_model: str = _opt("", "rows with a critic (ppo): the value model's starting weights, a HF model "
                                 "directory or hub name ('' = the policy's starting weights)")
    critic_lr: float = _opt(5e-4, "rows with a critic: its AdamW learning rate (the default suits the tiny "
                                  "model; verl's PPO uses 1e-5 for real LLMs)")
    critic_warmup_steps: int = _opt(0, "rows with a critic: its linear learning-rate warmup, in RL steps")
    micro_batch: int = _opt(64, "sequences per forward/backward (gradient accumulation above it)")
    format_weight: float = _opt(0.0, "weight of the \\boxed{} format reward added to the correctness reward")
    max_bad_steps: int = _opt(3, "stop after this many consecutive steps skipped for NaN/inf loss or reward")
    # LoRA (pip install lightrl[lora])
    lora_r: int = _opt(0, "LoRA rank: train low-rank adapters (peft) on a frozen base instead of every weight "
                          "(0 = full fine-tuning)")
    lora_alpha: float = _opt(16.0, "LoRA: the adapters' update is scaled by alpha / r")
    lora_dropout: float = _opt(0.0, "LoRA: dropout on the adapters' inputs")
    lora_targets: tuple = _opt(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                               "LoRA: names of the linear modules that get adapters, repeatable "
                               "(default: attention and MLP projections)")
    merge_on_save: bool = _opt(False, "LoRA: also write the merged model (base + adapters) into each "
                                      "checkpoint's merged/ (transformers and vLLM load it)")
    # evaluation
    eval_data: str = _opt("arithmetic-test", "held-out prompts ('' = none): file or built-in "
                                             "'arithmetic-test', 'arithmetic-hard-test', 'gsm8k-test', 'math500'")
    eval_every: int = _opt(20, "evaluate every N steps (and at the end; 0 = only at the end)")
    eval_k: int = _opt(1, "samples per eval question; reports avg@k accuracy")
    eval_temperature: float = _opt(0.0, "0 = greedy")
    eval_max_new_tokens: int = _opt(0, "0 = max_new_tokens")
    eval_limit: int = _opt(256, "at most this many eval questions (0 = all)")
    # the tiny model's supervised warm start (model='tiny' only)
    warm_start_steps: int = _opt(500, "tiny model: supervised steps on imperfect demonstrations before RL")
    warm_start_lr: float = _opt(5e-3, "tiny model: warm-start learning rate")
    # system
    seed: int = _opt(0, "seed of model init, data order and sampling")
    device: str = _opt("auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = _opt("auto", "'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'")
    backend: str = _opt("auto", "lightrl.kernels backend: auto | triton | torch | reference")
    liger: bool = _opt(True, "on CUDA, patch the model with liger-kernel's RMSNorm/RoPE/SwiGLU")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward (saves memory)")
    threads: int = _opt(1, "torch CPU threads (0 = torch's default; 1 is fastest for the tiny model)")
    # outputs
    out_dir: str = _opt("runs", "parent directory of run directories")
    run_name: str = _opt("", "run directory name ('' = <algo>-<time>)")
    save_every: int = _opt(50, "checkpoint every N steps (and at the end; 0 = only at the end)")
    keep_checkpoints: int = _opt(2, "complete checkpoints kept on disk")
    resume: str = _opt("", "run directory (or checkpoint directory) to continue from")
    resume_ignore_checksum: bool = _opt(False, "resume even if the checkpoint's files do not match its "
                                               "manifest.json (e.g. a checkpoint from an older lightrl)")
    wandb: bool = _opt(False, "also log to Weights & Biases (needs the wandb package)")
    wandb_project: str = _opt("lightrl", "wandb project")
    progress: bool = _opt(True, "tqdm progress bars (only when stdout and stderr are terminals)")
    log_every: int = _opt(10, "without progress bars (--no-progress, or output not a terminal): a log line "
                              "every N steps")

    def __post_init__(self):
        if self.row is None:
            self.row = {}
        # One term may come as a string (Python, a TOML/YAML file); config.json holds a list.
        self.reward = (self.reward,) if isinstance(self.reward, str) else tuple(self.reward)
        self.lora_targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)

    def algo_row(self) -> AlgoRow:
        """The algorithm row with this config's overrides applied (validated)."""
        return get_algo(self.algo, **self.row)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BUILTIN_DATA = ("arithmetic", "arithmetic-test", "arithmetic-hard", "arithmetic-hard-test", "gsm8k", "gsm8k-test",
                "math500")


def validate(cfg: Config) -> AlgoRow:
    """Reject unknown names and impossible combinations before any model is loaded.

    Returns the resolved algorithm row.
    """
    if cfg.algo not in ALGOS:
        raise ValueError(f"--algo {cfg.algo!r} is unknown; known: {', '.join(ALGOS)} (see --list-algos)")
    row = cfg.algo_row()
    row.check_pairs()
    if cfg.steps < 1:
        raise ValueError(f"--steps {cfg.steps} would train nothing; pass --steps >= 1 (with --resume: the step "
                         "to reach, counted from the start of the run)")
    for f in dataclasses.fields(Config):
        if isinstance(f.default, float) and not math.isfinite(getattr(cfg, f.name)):
            raise ValueError(f"--{_flag(f.name)} must be a finite number, got {getattr(cfg, f.name)}")
    for name in ("weight_decay", "grad_clip"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.seed < 2**32:
        raise ValueError(f"--seed must be an integer in [0, 2**32), got {cfg.seed}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ValueError(f"--device {cfg.device!r}: expected auto, cpu, cuda or cuda:N")
    positive = ["prompts_per_step", "group_size", "max_new_tokens", "updates_per_batch", "micro_batch",
                "eval_k", "keep_checkpoints", "max_bad_steps", "max_prompt_tokens", "log_every"]
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{_flag(name)} must be >= 1, got {getattr(cfg, name)}")
    for name in ["warmup_steps", "critic_warmup_steps", "eval_every", "save_every", "warm_start_steps", "eval_limit",
                 "eval_max_new_tokens", "threads", "max_refills", "lora_r"]:
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_refills >= ROLLOUT_SEEDS_PER_STEP:
        raise ValueError(f"--max-refills must be < {ROLLOUT_SEEDS_PER_STEP} (each step draws its rollout seeds from "
                         f"a block of {ROLLOUT_SEEDS_PER_STEP}, one per round), got {cfg.max_refills}")
    if cfg.lora_r and not (cfg.lora_alpha > 0 and 0 <= cfg.lora_dropout < 1 and cfg.lora_targets):
        raise ValueError(f"--lora-r {cfg.lora_r}: needs --lora-alpha > 0 (got {cfg.lora_alpha}), --lora-dropout in "
                         f"[0, 1) (got {cfg.lora_dropout}) and at least one --lora-targets")
    if cfg.merge_on_save and not cfg.lora_r:
        raise ValueError("--merge-on-save merges LoRA adapters; it needs --lora-r > 0")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if not cfg.critic_lr > 0:
        raise ValueError(f"--critic-lr must be > 0, got {cfg.critic_lr}")
    if not row.critic:
        for name in ("critic_model", "critic_warmup_steps"):
            if getattr(cfg, name):
                raise ValueError(f"--{_flag(name)} is set but algo {cfg.algo!r} has no critic (critic=False); "
                                 "drop it or pick a row with a critic (ppo)")
    if not cfg.temperature > 0:
        raise ValueError(f"--temperature must be > 0 (it divides the logits in the loss), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.eval_temperature < 0:
        raise ValueError(f"--eval-temperature must be >= 0 (0 = greedy), got {cfg.eval_temperature}")
    if not 0 < cfg.gpu_memory_utilization < 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1), got {cfg.gpu_memory_utilization}")
    sampled = cfg.group_size * row.sample_factor
    grouped = row.baseline != "none" or row.scale == "group_std" or row.keep in ("mixed", "drop_all_wrong",
                                                                                   "drop_all_correct")
    if cfg.prompts_per_step * sampled > MAX_SAMPLES:
        raise ValueError(f"--prompts-per-step x --group-size x sample_factor = {cfg.prompts_per_step} x "
                         f"{cfg.group_size} x {row.sample_factor} = {cfg.prompts_per_step * sampled} completions "
                         f"per step; at most {MAX_SAMPLES} fit (a step holds all of them in memory)")
    if sampled == 1 and grouped:
        raise ValueError(f"--group-size 1 with algo {cfg.algo!r} (baseline={row.baseline}, scale={row.scale}, "
                         f"keep={row.keep}): a group of one has no baseline, std or mix; use --group-size >= 2")
    if row.keep == "top_k" and row.top_k > sampled:
        raise ValueError(f"row top_k={row.top_k} exceeds the sampled group size group_size*sample_factor="
                         f"{cfg.group_size}*{row.sample_factor}={sampled}; raise --group-size or "
                         f"--set top_k=<= {sampled}")
    if cfg.engine not in ("auto", "hf", "vllm"):
        raise ValueError(f"--engine must be auto, hf or vllm, got {cfg.engine!r}")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    if cfg.backend not in ("auto", "triton", "torch", "reference"):
        raise ValueError(f"--backend must be auto, triton, torch or reference, got {cfg.backend!r}")
    from lightrl.rewards.combined import data_kind
    if data_kind(cfg.reward) == "code":  # also imports --reward module:function, naming what is missing
        for name, or_none in (("data", ""), ("eval_data", ", or --eval-data '' for no evaluation")):
            if getattr(cfg, name) in BUILTIN_DATA:
                raise ValueError(f"--reward code: --{_flag(name)} {getattr(cfg, name)!r} is a built-in math set "
                                 f"without tests; pass a .jsonl/.parquet file whose rows carry tests "
                                 f"(see --tests-field){or_none}")
        if cfg.model == "tiny" and cfg.warm_start_steps:
            raise ValueError("--reward code with --model tiny: the tiny model's warm start imitates arithmetic "
                             "answers and needs math rows; pass --warm-start-steps 0 (or a real --model)")
    for name in ("data", "eval_data"):
        value = getattr(cfg, name)
        if value and value not in BUILTIN_DATA and not os.path.exists(value):
            raise ValueError(f"--{_flag(name)} {value!r}: no such file and not a built-in set "
                             f"({', '.join(BUILTIN_DATA)})")
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise ValueError(f"--out-dir {cfg.out_dir!r} is a file, not a directory; pass a directory")
    import importlib.util
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("--engine vllm needs vLLM: pip install 'lightrl[vllm]' (CUDA only), or use --engine hf")
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb needs the wandb package: pip install wandb")
    if cfg.resume and not os.path.exists(cfg.resume):
        raise ValueError(f"--resume {cfg.resume!r} does not exist")
    return row


def _flag(name: str) -> str:
    return name.replace("_", "-")


def load_file(path: str) -> dict:
    """Config values from a TOML (.toml) or YAML (.yaml/.yml) file; a `[row]` table holds row overrides.

    Every value is type-checked against its Config field (see checked); errors name the file."""
    if not path.endswith((".toml", ".yaml", ".yml")):
        raise ValueError(f"--config {path!r}: use a .toml or .yaml file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ValueError(f"--config {path!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path!r}: not UTF-8 text (byte {e.start})") from None
    if path.endswith(".toml"):
        import tomllib
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            at = re.search(r" \(at line (\d+), column (\d+)\)$", str(e))
            where = f"{path}:{at[1]}:{at[2]}" if at else path
            raise ValueError(f"{where}: TOML syntax error: {str(e)[:at.start()] if at else e}") from None
    else:
        import yaml
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            raise ValueError(f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
        values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"--config {path!r}: expected a table of options at the top level")
    return {key.replace("-", "_"): checked(key, value, path) for key, value in values.items()}


def checked(key: str, value, where: str):
    """`value` of option `key` from file `where`, with the type of its Config field (an int is a fine
    float); ValueError naming the file, the key, the expected type and the value otherwise. Strict:
    YAML's "no" is a string, not false, and true is not the integer 1."""
    name = key.replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name not in fields:
        raise ValueError(f"{where}: unknown option {key!r}; see python -m lightrl.run --help")
    if name == "row":
        if not (isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values())):
            raise ValueError(f"{where}: row = {value!r} ({_kind(value)}): expected a table of algorithm-row "
                             "fields, e.g. [row] with eps_high = 0.28")
        return value
    kind = type(fields[name].default)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str),
          tuple: isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))}[kind]
    if not ok:
        hint = ""
        if kind is float and isinstance(value, str) and _is_float(value):
            hint = f" (write it unquoted, e.g. {float(value)!r}; YAML reads 1e-3 without a dot as text)"
        raise ValueError(f"{where}: {key} = {value!r} ({_kind(value)}): expected {_EXPECTED[kind]}{hint}")
    return float(value) if kind is float else value


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             tuple: "a string or a list of strings"}


def _kind(value) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # lightrl.run prints this as one `lightrl: error:` line instead of argparse's usage dump.
        raise ValueError(f"{message}; see python -m lightrl.run --help")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m lightrl.run",
        description="RL from verifiable rewards. With no arguments: the embedded CPU demo (tiny model, "
                    "arithmetic, grpo). Precedence: defaults < --config file < command line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="TOML or YAML file of options (a [row] table for row fields)")
    p.add_argument("--list-algos", action="store_true", help="print the algorithm table and exit")
    for f in dataclasses.fields(Config):
        if f.name == "row":
            p.add_argument("--set", dest="row", action="append", default=argparse.SUPPRESS, metavar="FIELD=VALUE",
                           help=f.metadata["help"] + f"; fields: {', '.join(_row_fields())} (default: none)")
            continue
        kw = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default!r})")
        if isinstance(f.default, bool):
            p.add_argument("--" + _flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(f.default, tuple):
            p.add_argument("--" + _flag(f.name), action="append", metavar=f.name.upper(), **kw)
        else:
            p.add_argument("--" + _flag(f.name), type=type(f.default), metavar=f.name.upper(), **kw)
    return p


def _row_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(AlgoRow) if f.name != "source"]


def parse_args(argv: list[str] | None = None) -> tuple[Config | None, str | None]:
    """(config, None), or (None, text to print) for --list-algos."""
    args = vars(build_parser().parse_args(argv))
    if args.pop("list_algos"):
        return None, algos_markdown()
    values = load_file(args["config"]) if args.get("config") else {}
    args.pop("config", None)
    resume = args.get("resume") or values.get("resume")
    # A resumed run's own config is the base; the file and the command line override it.
    saved = _saved_config(resume) if resume else {}
    row = {**(saved.pop("row", None) or {}), **(values.pop("row", None) or {})}
    values = {**saved, **values}
    for item in args.pop("row", []):
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set eps_high=0.28")
        key, value = item.split("=", 1)
        row[key.strip()] = value.strip()
    unknown = [k for k in row if k not in _row_fields()]
    if unknown:
        raise ValueError(f"unknown algorithm row field(s) {unknown}; fields: {', '.join(_row_fields())}")
    values.update(args)
    return Config(row=row, **values), None


def _saved_config(path: str) -> dict:
    """config.json of the run that `path` (a run directory or one of its checkpoints) belongs to."""
    if not os.path.exists(path):
        raise ValueError(f"--resume {path!r} does not exist")
    for run_dir in (path, os.path.dirname(os.path.dirname(os.path.abspath(path)))):
        file = os.path.join(run_dir, "config.json")
        if os.path.exists(file):
            try:
                with open(file) as f:
                    values = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{file}: unreadable ({e}); restore the run's config.json") from None
            if not isinstance(values, dict):
                raise ValueError(f"{file}: expected a JSON object of options; restore the run's config.json")
            # The override applies to one resume, not to every later one.
            values.pop("resume_ignore_checksum", None)
            return {key: checked(key, value, file) for key, value in values.items()}
    raise ValueError(f"--resume {path!r}: no config.json in it or two levels up; pass a run directory")


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
