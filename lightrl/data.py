"""Prompt data: JSONL / Parquet files and the built-in sets, turned into (question, gold answer) rows,
or (question, tests) rows for the code reward.

Built-in sets ship inside the package (lightrl/data/, licenses in lightrl/data/SOURCES.md):
gsm8k (train), gsm8k-test, math500; 'arithmetic' / 'arithmetic-test' (one-digit sums) and
'arithmetic-hard' / 'arithmetic-hard-test' (two-digit sums) are generated for the tiny model (lightrl.tiny).
"""
from __future__ import annotations

import json
import math
import os

from lightrl.errors import UserError
from lightrl.rewards.code import test_kind

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FILES = {"gsm8k": "gsm8k_train.jsonl", "gsm8k-test": "gsm8k_test.jsonl", "math500": "math500.jsonl"}
QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "final_answer", "solution")
TESTS_FIELDS = ("tests", "test_cases", "test_list")
ARITHMETIC_ROWS = 20000
# A longer JSONL line is refused before it is parsed or tokenized (a 50 MB line once took the
# tokenizer to 4.5 GB); max_prompt_tokens keeps only the end of a prompt anyway.
MAX_ROW_BYTES = 1 << 20


class BadRow(UserError):
    """A data row that cannot be used; the message names file, line and field."""


def load_rows(spec: str, question_field: str = "", answer_field: str = "", *, skip_bad_rows: bool = False,
              seed: int = 0, reward: str = "math", tests_field: str = "") -> tuple[list[dict], int]:
    """Rows {"question": str, "answer": str} of a built-in set or a .jsonl / .parquet file;
    with reward="code", rows {"question": str, "tests": list} (assert strings or (stdin, stdout)
    tuples) and no answer.

    Returns (rows, number of bad rows skipped). Without skip_bad_rows the first bad row
    raises BadRow naming file, line and field.
    """
    if spec in ("arithmetic", "arithmetic-test"):
        from lightrl.tiny import arithmetic_problems
        # The test split draws from another seed: fresh samples of the same generator.
        return arithmetic_problems(ARITHMETIC_ROWS if spec == "arithmetic" else 1000,
                                   seed=seed + (0 if spec == "arithmetic" else 10_000)), 0
    if spec in ("arithmetic-hard", "arithmetic-hard-test"):
        from lightrl.tiny import hard_arithmetic_problems
        return hard_arithmetic_problems(ARITHMETIC_ROWS if spec == "arithmetic-hard" else 1000,
                                        seed=seed + (0 if spec == "arithmetic-hard" else 10_000)), 0
    path = os.path.join(HERE, FILES[spec]) if spec in FILES else spec
    if path.endswith(".parquet"):
        records = _parquet_records(path)
    elif path.endswith((".jsonl", ".json")):
        records = _jsonl_records(path)
    else:
        raise UserError(f"{path}: data files must be .jsonl or .parquet")
    rows, bad = [], 0
    for line, record in records:
        try:
            if reward == "code":
                rows.append(_code_row(path, line, record, question_field, tests_field))
            else:
                rows.append(_row(path, line, record, question_field, answer_field))
        except BadRow as e:
            if not skip_bad_rows:
                raise BadRow(f"{e}; fix the row, or pass --skip-bad-rows to skip bad rows") from None
            bad += 1
    if not rows:
        raise UserError(f"{path}: no usable rows ({bad} bad rows skipped)")
    return rows, bad


class DuplicateKey(ValueError):
    """Raised by _unique_keys with the repeated key as its message."""


def _jsonl_records(path: str):
    """(line number, parsed object or the BadRow saying why not) per non-blank line."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        i = 0
        while raw := f.readline(MAX_ROW_BYTES + 1):
            i += 1
            if len(raw) > MAX_ROW_BYTES:
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line unread
                    raw = f.readline(1 << 20)
                yield i, BadRow(f"{path}:{i}: row longer than {MAX_ROW_BYTES} bytes; shorten it")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, BadRow(f"{path}:{i}:{e.start + 1}: invalid UTF-8 (byte 0x{raw[e.start]:02x}); "
                                "save the file as UTF-8")
                continue
            if not text.strip():
                continue
            try:
                yield i, json.loads(text.rstrip("\r\n"), object_pairs_hook=_unique_keys)  # colno: on this line
            except json.JSONDecodeError as e:
                yield i, BadRow(f"{path}:{i}:{e.colno}: malformed JSON ({e.msg})")
            except DuplicateKey as e:
                yield i, BadRow(f"{path}:{i}: duplicate key {e} in one object (which one is meant?)")


def _unique_keys(pairs: list) -> dict:
    """json's object_pairs_hook: Python would keep the last of two equal keys, silently."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(repr(key))
        out[key] = value
    return out


def _parquet_records(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                          "or convert the file to JSONL") from None
    for i, record in enumerate(pq.read_table(path).to_pylist(), 1):
        yield i, record


def _field(where: str, record, wanted: str, known: tuple[str, ...], kind: str) -> str:
    """The key of `kind` in record: `wanted`, else the first of `known` present; BadRow when missing."""
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow(f"{where}: expected a JSON object, got {type(record).__name__}")
    key = wanted or next((k for k in known if k in record), known[0])
    if key not in record:
        raise BadRow(f"{where}: missing {kind} field {key!r} (fields: {', '.join(record)}); set --{kind}-field")
    return key


def _question(where: str, record: dict, key: str) -> str:
    question = record[key]
    if not isinstance(question, str) or not question.strip():
        raise BadRow(f"{where}: field {key!r} is an empty or non-text question")
    return question.strip()


def _row(path: str, line: int, record, question_field: str, answer_field: str) -> dict:
    where = f"{path}:{line}"
    q_key = _field(where, record, question_field, QUESTION_FIELDS, "question")
    a_key = _field(where, record, answer_field, ANSWER_FIELDS, "answer")
    value = record[a_key]
    if not _gold_value(value) and not (isinstance(value, list) and value and all(map(_gold_value, value))):
        raise BadRow(f"{where}: field {a_key!r} holds {value!r}; a gold answer must be a string, a finite "
                     "number or a list of those")
    question, answer = _question(where, record, q_key), gold_answer(value)
    if not answer:
        raise BadRow(f"{where}: field {a_key!r} holds no answer")
    return {"question": question, "answer": answer}


def _code_row(path: str, line: int, record, question_field: str, tests_field: str) -> dict:
    where = f"{path}:{line}"
    q_key = _field(where, record, question_field, QUESTION_FIELDS, "question")
    t_key = _field(where, record, tests_field, TESTS_FIELDS, "tests")
    tests = record[t_key]
    if isinstance(tests, list) and tests and all(isinstance(t, list) for t in tests):
        tests = [tuple(t) for t in tests]  # JSON has no tuples: [stdin, stdout] pairs arrive as lists
    try:
        test_kind(tests)
    except ValueError as e:
        raise BadRow(f"{where}: field {t_key!r}: {e}") from None
    return {"question": _question(where, record, q_key), "tests": tests}


def _gold_value(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def gold_answer(value) -> str:
    """The gold answer as text: GSM8K's text after '####', lists joined with ', '."""
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    text = str(value).strip() if value is not None else ""
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def prompt_text(tokenizer, question: str, instruction: str) -> str:
    """The prompt string: the chat template when the tokenizer has one, else question + instruction."""
    content = f"{question}\n{instruction}" if instruction else question
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return content + "\n" if instruction else content


class PromptSampler:
    """Endless shuffled passes over the rows; its state (epoch, position) makes --resume exact."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        import torch  # not at the top: the preflight checks load data without paying for torch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        """The next k row indices."""
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()
