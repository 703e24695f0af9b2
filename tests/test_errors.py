"""Every configuration and input error: one `lightrl: error:` line, exit status 2, no traceback, nothing
created, and (unless the check needs torch) well within 2 s, from a real `python -m lightrl.run`."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from lightrl.config import Config
from lightrl.preflight import preflight

FILES = {
    "missing.toml": None,
    "syntax.toml": "steps = \n",
    "syntax.yaml": "algo: grpo\nrow: [\n",
    "ten.toml": 'steps = "ten"\n',
    "lr.toml": 'lr = "1e-3"\n',
    "half.toml": "steps = 2.5\n",
    "row.toml": "row = 5\n",
    "null.yaml": "steps: null\n",
    "list.yaml": "group_size: [1, 2]\n",
    "seed.yaml": 'seed: "abc"\n',
    "no.yaml": 'progress: "no"\n',
    "true.yaml": "steps: true\n",
    "afile": "",
    "bad.jsonl": '{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": 4,\n',
    "utf8.jsonl": b'{"question": "1+1=", "answer": "2"}\n{"question": "\xff+1=", "answer": "2"}\n',
    "dict.jsonl": '{"question": "1+1=", "answer": {"value": 2}}\n',
    "bool.jsonl": '{"question": "1+1=", "answer": true}\n',
    "nan.jsonl": '{"question": "1+1=", "answer": NaN}\n',
    "dup.jsonl": '{"question": "1+1=", "answer": "2", "answer": "3"}\n',
    "long.jsonl": '{"question": "' + "1" * (2 << 20) + '", "answer": "2"}\n',
    "modeldir/weights.bin": "",
    "stub/config.json": json.dumps(Config().to_dict()),
}

CASES = [
    # config files
    (["--config", "missing.toml"], "--config 'missing.toml': No such file or directory"),
    (["--config", "syntax.toml"], "syntax.toml:1:9: TOML syntax error"),
    (["--config", "syntax.yaml"], "syntax.yaml:3:1: YAML syntax error"),
    (["--config", "ten.toml"], "ten.toml: steps = 'ten' (a string): expected an integer"),
    (["--config", "lr.toml"], "lr.toml: lr = '1e-3' (a string): expected a number (write it unquoted, e.g. 0.001;"),
    (["--config", "half.toml"], "half.toml: steps = 2.5 (a float): expected an integer"),
    (["--config", "row.toml"], "row.toml: row = 5 (an integer): expected a table of algorithm-row fields"),
    (["--config", "null.yaml"], "null.yaml: steps = None (null): expected an integer"),
    (["--config", "list.yaml"], "list.yaml: group_size = [1, 2] (a list): expected an integer"),
    (["--config", "seed.yaml"], "seed.yaml: seed = 'abc' (a string): expected an integer"),
    (["--config", "no.yaml"], "no.yaml: progress = 'no' (a string): expected true or false"),
    (["--config", "true.yaml"], "true.yaml: steps = True (a boolean): expected an integer"),
    # numbers
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number, got nan"),
    (["--seed", "1e23"], "argument --seed: invalid int value: '1e23'"),
    (["--seed", str(10**23)], "--seed must be an integer in [0, 2**32)"),
    (["--device", "bogus"], "--device 'bogus': expected auto, cpu, cuda or cuda:N"),
    (["--out-dir", "afile"], "--out-dir 'afile' is a file, not a directory"),
    (["--steps", "0"], "--steps 0 would train nothing; pass --steps >= 1"),
    # sizes
    (["--prompts-per-step", "1024", "--group-size", "128"],
     "= 1024 x 128 x 1 = 131072 completions per step; at most 65536"),
    (["--eval-k", "300"], "--eval-k x eval rows = 300 x 256 = 76800 completions per evaluation; at most 65536"),
    (["--data", "long.jsonl"], "long.jsonl:1: row longer than 1048576 bytes"),
    # data
    (["--data", "bad.jsonl"], "bad.jsonl:2:34: malformed JSON (Expecting property name enclosed in double quotes); "
                              "fix the row, or pass --skip-bad-rows to skip bad rows"),
    (["--data", "utf8.jsonl"], "utf8.jsonl:2:15: invalid UTF-8 (byte 0xff)"),
    (["--data", "dict.jsonl"], "dict.jsonl:1: field 'answer' holds {'value': 2}; a gold answer must be a string"),
    (["--eval-data", "bool.jsonl"], "bool.jsonl:1: field 'answer' holds True"),
    (["--data", "nan.jsonl"], "nan.jsonl:1: field 'answer' holds nan"),
    (["--data", "dup.jsonl"], "dup.jsonl:1: duplicate key 'answer'"),
    (["--data", "nope.jsonl"], "--data 'nope.jsonl': no such file and not a built-in set"),
    # model path
    (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such local directory (a Hugging Face id "
                                        "looks like org/name)"),
    (["--model", "no-org/no-model"], "--model no-org/no-model: not a local directory, not in the Hugging Face "
                                     "cache, and this machine has no hub access"),
    (["--model", "modeldir"], "--model modeldir: no config.json in modeldir"),
    # resume targets
    (["--resume", "nowhere"], "--resume 'nowhere' does not exist"),
    (["--resume", "."], "--resume '.': no config.json in it or two levels up"),
    (["--resume", "stub"], "--resume stub: no complete checkpoint there (checkpoints/latest missing)"),
]

NEEDS_TORCH = [
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
    pytest.param(["--backend", "triton"], "--backend triton needs a CUDA device (here: cpu)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
]


def cli(argv: list[str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it for the kernels
    env["HF_HUB_OFFLINE"] = "1"  # the hub-id case must not depend on this machine's network
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "lightrl.run", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    return done, time.time() - t0


def tree(path) -> set[str]:
    return {os.path.relpath(os.path.join(r, n), path) for r, dirs, files in os.walk(path) for n in dirs + files}


@pytest.fixture
def inputs(tmp_path):
    for name, text in FILES.items():
        if text is None:
            continue
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (tmp_path / name).write_bytes(text)
        else:
            (tmp_path / name).write_text(text)
    return tmp_path


def assert_one_line_error(done, message: str):
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("lightrl: error: "), done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_error_is_one_line_fast_and_creates_nothing(argv, message, inputs):
    before = tree(inputs)
    done, seconds = cli(argv + ["--out-dir", "runs"] if "--out-dir" not in argv else argv, inputs)
    assert_one_line_error(done, message)
    assert tree(inputs) == before
    assert seconds < 2.0


@pytest.mark.parametrize("argv, message", NEEDS_TORCH)
def test_device_errors_are_one_line_and_create_nothing(argv, message, inputs):
    before = tree(inputs)
    done, _ = cli(argv + ["--out-dir", "runs"], inputs)
    assert_one_line_error(done, message)
    assert tree(inputs) == before


def test_resume_of_a_finished_run_says_nothing_to_do(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000080").mkdir(parents=True)
    (run / "checkpoints" / "step_000080" / "trainer_state.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_000080\n")
    (run / "config.json").write_text(json.dumps({**Config().to_dict(), "steps": 80}))
    before = tree(tmp_path)
    done, _ = cli(["--resume", str(run)], tmp_path)
    assert_one_line_error(done, f"nothing to do: {run} is already at step 80 (--steps 80); pass --steps M with "
                                "M > 80 to continue")
    assert tree(tmp_path) == before


def test_model_dir_checks_and_warnings(warm_model, tmp_path, capsys):
    data = tmp_path / "words.jsonl"
    data.write_text('{"question": "What is 1+1?", "answer": "2"}\n{"question": "3+4=", "answer": "7"}\n')
    preflight(Config(model=warm_model, data=str(data), eval_data="", instruction="Box it.", out_dir=str(tmp_path)))
    err = capsys.readouterr().err
    assert (f"lightrl: warning: --model {warm_model} has no chat template: each prompt is sent as the question, "
            "a newline, --instruction ('Box it.'...) and a newline; pass --instruction '' to send the bare "
            "question") in err
    model = shutil.copytree(warm_model, tmp_path / "model")
    os.truncate(model / "model.safetensors", 20000)
    with pytest.raises(ValueError, match=f"{model}/model.safetensors: truncated \\(20000 bytes"):
        preflight(Config(model=str(model), data=str(data), eval_data="", out_dir=str(tmp_path)))
    preflight(Config(model="tiny", data=str(data), eval_data="", out_dir=str(tmp_path)))
    err = capsys.readouterr().err
    assert ("lightrl: warning: --model tiny: 1 of 2 --data questions (first: 'What is 1+1?') hold characters the "
            "tiny tokenizer reads as <unk>: 'Wahist'") in err
    preflight(Config(model="tiny", eval_data="", out_dir=str(tmp_path)))
    assert capsys.readouterr().err == ""


def test_a_cached_hub_id_is_checked_like_a_local_directory(warm_model, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(warm_model, snapshot)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preflight(Config(model="org/tiny", eval_data="", out_dir=str(tmp_path)))
    assert "lightrl: warning: --model org/tiny has no chat template" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--model org/other: not a local directory, not in the Hugging Face cache, "
                                         "and this machine has no hub access"):
        preflight(Config(model="org/other", eval_data="", out_dir=str(tmp_path)))
