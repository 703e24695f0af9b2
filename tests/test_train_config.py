"""Config / CLI, data loading and run outputs: fast checks that load no model."""
import importlib.util
import json

import pytest

from lightrl.algos import ALGOS
from lightrl.config import Config, build_parser, parse_args, validate
from lightrl.data import BadRow, PromptSampler, load_rows, prompt_text
from lightrl.run import main


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]
    for flag, default in [("--algo", "'grpo'"), ("--group-size", "8"), ("--engine", "'auto'"),
                          ("--gpu-memory-utilization", "0.3"), ("--eval-k", "1"), ("--no-liger", None),
                          ("--mask-truncated", None), ("--skip-bad-rows", None), ("--set", None), ("--config", None)]:
        assert flag in text, flag
        if default:
            assert f"(default: {default})" in " ".join(text.split("\n  " + flag, 1)[1][:400].split()), flag


def test_list_algos_prints_every_row(capsys):
    assert main(["--list-algos"]) == 0
    out = capsys.readouterr().out
    for name in ALGOS:
        assert f"`{name}`" in out


def test_precedence_defaults_file_cli(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('algo = "dapo"\ngroup_size = 4\nlr = 1e-5\n[row]\neps_high = 0.3\nkl_coef = 0.01\n')
    cfg, _ = parse_args(["--config", str(toml), "--group-size", "6", "--set", "eps_high=0.25"])
    assert (cfg.algo, cfg.group_size, cfg.lr) == ("dapo", 6, 1e-5)
    row = validate(cfg)
    assert (row.eps_high, row.kl_coef, row.eps_low) == (0.25, 0.01, 0.2)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("algo: rloo\nmax_new_tokens: 32\nrow: {kl_coef: 0.02}\n")
    cfg, _ = parse_args(["--config", str(yaml_file), "--no-liger"])
    assert (cfg.algo, cfg.max_new_tokens, cfg.liger, validate(cfg).kl_coef) == ("rloo", 32, False, 0.02)


@pytest.mark.parametrize("argv, message", [
    (["--algo", "grpoo"], "unknown"),
    (["--set", "eps_hi=0.3"], "eps_hi"),
    (["--set", "eps_high"], "FIELD=VALUE"),
    (["--set", "kl_coef=-1"], "kl_coef"),
    (["--group-size", "1"], "group of one"),
    (["--algo", "gfpo", "--group-size", "2"], "top_k"),
    (["--data", "/nonexistent.jsonl"], "no such file"),
    (["--temperature", "0"], "temperature"),
    (["--max-refills", "64"], "max-refills"),
    pytest.param(["--engine", "vllm"], "vLLM", marks=pytest.mark.skipif(
        importlib.util.find_spec("vllm") is not None, reason="vllm is installed")),
    pytest.param(["--wandb"], "wandb", marks=pytest.mark.skipif(
        importlib.util.find_spec("wandb") is not None, reason="wandb is installed")),
])
def test_bad_config_fails_before_any_model_is_loaded(argv, message, capsys, monkeypatch):
    import lightrl.train
    monkeypatch.setattr(lightrl.train, "train", lambda cfg: pytest.fail("train() reached"))
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_group_size_one_is_fine_without_a_group_statistic():
    validate(Config(algo="reinforce", group_size=1))


def test_unknown_option_in_config_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("grup_size = 3\n")
    with pytest.raises(ValueError, match="grup_size"):
        parse_args(["--config", str(f)])


def test_data_rows_and_bad_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "1+1?", "answer": "#### 2"}\n'
                 '{"question": "broken", \n'
                 '{"question": "x?"}\n'
                 '{"question": "  ", "answer": "3"}\n'
                 '{"problem": "2+2?", "answer": "4"}\n')
    with pytest.raises(BadRow, match=r"d.jsonl:2:24: malformed JSON .*; fix the row, or pass --skip-bad-rows"):
        load_rows(str(f))
    rows, bad = load_rows(str(f), skip_bad_rows=True)
    assert rows == [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}] and bad == 3
    g = tmp_path / "e.jsonl"
    g.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+2?"}\n')
    with pytest.raises(BadRow, match=r"e.jsonl:2: missing answer field 'a'"):
        load_rows(str(g), question_field="q", answer_field="a")
    with pytest.raises(BadRow, match=r"e.jsonl:1: missing question field 'question'"):
        load_rows(str(g))


def test_parquet_without_pyarrow_says_so(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pyarrow"):
        load_rows(str(tmp_path / "x.parquet"))


def test_builtin_sets():
    train, _ = load_rows("gsm8k")
    test, _ = load_rows("gsm8k-test")
    math500, _ = load_rows("math500")
    assert (len(train), len(test), len(math500)) == (7473, 1319, 500)
    assert train[0]["answer"] == "72" and math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_prompt_uses_chat_template_when_present():
    from transformers import PreTrainedTokenizerFast

    from lightrl.tiny import build_tokenizer
    tok = build_tokenizer()
    assert prompt_text(tok, "3+4=", "") == "3+4="
    chat = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer().backend_tokenizer)
    chat.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert prompt_text(chat, "Q", "Box it.") == "<user>Q\nBox it.<assistant>"


def test_sampler_state_restores_the_order():
    a = PromptSampler(7, seed=3)
    first = a.take(10)
    b = PromptSampler(7, seed=3)
    b.load_state_dict(a.state_dict())
    assert sorted(first[:7]) == list(range(7)) and a.take(9) == b.take(9)


def test_config_round_trips_through_json(tmp_path):
    cfg, _ = parse_args(["--algo", "dapo", "--set", "eps_high=0.3"])
    text = json.dumps(cfg.to_dict())
    assert Config(**json.loads(text)) == cfg


def test_resume_takes_the_runs_config_as_base(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = Config(algo="dapo", group_size=4, steps=10, row={"eps_high": "0.3"})
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    cfg, _ = parse_args(["--resume", str(run), "--steps", "20"])
    assert (cfg.algo, cfg.group_size, cfg.steps, cfg.row, cfg.resume) == ("dapo", 4, 20, {"eps_high": "0.3"}, str(run))
    with pytest.raises(ValueError, match="no config.json"):
        parse_args(["--resume", str(tmp_path)])
