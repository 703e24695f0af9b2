"""Checkpoints that cannot be hijacked, torn or silently corrupted, and are never saved from a bad step.

Each test copies one short tiny-model run (checkpoints step_000001 and step_000002), breaks it
the way a user, a full disk or a bit flip would, and resumes through lightrl.run.main.
"""
import errno
import hashlib
import os
import shutil

import pytest
import torch

import lightrl.rollout
from lightrl import checkpoint
from lightrl.config import Config, parse_args
from lightrl.logs import read_metrics
from lightrl.run import main
from lightrl.train import train

RUN = dict(model="tiny", warm_start_steps=0, data="arithmetic", eval_data="", instruction="", steps=2,
           prompts_per_step=4, group_size=4, max_new_tokens=6, progress=False, save_every=1, keep_checkpoints=2,
           threads=1, micro_batch=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train(Config(out_dir=str(tmp_path_factory.mktemp("base")), run_name="base", **RUN))


@pytest.fixture
def run(base, tmp_path):
    return shutil.copytree(base, tmp_path / "run")


def digest(path) -> dict:
    return {os.path.relpath(os.path.join(r, n), path): hashlib.sha256(open(os.path.join(r, n), "rb").read()).hexdigest()
            for r, _, files in os.walk(path) for n in files}


def flip_last_byte(path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))


def resume_error(run, capsys, *extra) -> str:
    """The one error line of a resume that must fail (status 2)."""
    assert main(["--resume", str(run), "--steps", "3", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightrl: error: "), err
    return err


def test_latest_pointing_into_another_run_is_refused(run, tmp_path, capsys):
    other = shutil.copytree(run, tmp_path / "other")
    untouched = digest(other)
    (run / "checkpoints" / "latest").write_text("../../other/checkpoints/step_000002\n")
    err = resume_error(run, capsys)
    assert (f"{run}/checkpoints/latest: holds b'../../other/checkpoints/step_000002\\n', not a checkpoint name like "
            "step_000050") in err
    # A link named like a checkpoint is refused too.
    os.symlink(other / "checkpoints" / "step_000002", run / "checkpoints" / "step_000009")
    (run / "checkpoints" / "latest").write_text("step_000009\n")
    err = resume_error(run, capsys)
    assert f"{run}/checkpoints/latest: step_000009 is a link out of {run}/checkpoints" in err
    assert digest(other) == untouched


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.pt", "tokenizer.json"])
def test_a_bit_flip_is_caught_by_the_manifest(run, name, capsys):
    flip_last_byte(run / "checkpoints" / "step_000002" / name)
    err = resume_error(run, capsys)
    assert (f"{run}/checkpoints/step_000002/{name} does not match its checksum in manifest.json (corrupt or changed); "
            "resume an older checkpoint (or pass --resume-ignore-checksum to resume anyway)") in err


def test_ignore_checksum_resumes_once(run, capsys):
    flip_last_byte(run / "checkpoints" / "step_000002" / "model.safetensors")
    assert main(["--resume", str(run), "--steps", "3", "--resume-ignore-checksum"]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    # The override is not inherited by the next resume through the run's config.json.
    flip_last_byte(run / "checkpoints" / "step_000003" / "model.safetensors")
    capsys.readouterr()
    assert main(["--resume", str(run), "--steps", "4"]) == 2
    assert "step_000003/model.safetensors does not match its checksum" in capsys.readouterr().err


@pytest.mark.parametrize("damage, ignore, message", [
    (lambda c, r: os.truncate(c / "model.safetensors", 100), True,
     "{c}/model.safetensors: not a readable safetensors file (header length"),
    (lambda c, r: os.truncate(c / "model.safetensors", 20000), True, "{c}/model.safetensors: truncated (20000 bytes"),
    (lambda c, r: os.truncate(c / "trainer_state.pt", 1000), True,
     "{c}/trainer_state.pt is truncated or not a torch.save file"),
    (lambda c, r: os.remove(c / "tokenizer.json"), True, "{c}: no tokenizer file (tokenizer.json"),
    (lambda c, r: os.remove(c / "tokenizer_config.json"), False,
     "{c}/tokenizer_config.json is missing (listed in manifest.json)"),
    (lambda c, r: os.remove(c / "manifest.json"), False,
     "{c}/manifest.json is missing, so the checkpoint cannot be verified"),
    (lambda c, r: (r / "checkpoints" / "latest").write_bytes(b"\x00\xffjunk"), False,
     "{r}/checkpoints/latest: holds b'\\x00\\xffjunk', not a checkpoint name"),
    (lambda c, r: shutil.rmtree(r / "warm_start"), False,
     "{r}/warm_start/config.json is missing: this run's warm-started starting policy"),
    (lambda c, r: (r / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n'), False,
     "{r}/metrics.jsonl:2: not a metrics line (b'not json'); resuming would drop it and the 1 line(s) after it"),
], ids=["safetensors-header", "safetensors-data", "trainer-state", "tokenizer", "tokenizer-config", "manifest",
        "latest", "warm-start", "metrics"])
def test_damaged_files_give_one_error_naming_the_file(run, damage, ignore, message, capsys):
    ckpt = run / "checkpoints" / "step_000002"
    damage(ckpt, run)
    err = resume_error(run, capsys, *(["--resume-ignore-checksum"] if ignore else []))
    assert message.format(c=ckpt, r=run) in err


def test_a_torn_last_metrics_line_is_fine(run, capsys):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    assert main(["--resume", str(run), "--steps", "3"]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "[Errno 28] No space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
     "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0 ("),
], ids=["oserror", "torch-runtime-error"])
def test_a_failed_save_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys, error, reason):
    real, calls = torch.save, []

    def full_disk(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            open(path, "wb").write(b"partial")
            raise error
        return real(obj, path, *a, **kw)
    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items() if not isinstance(v, bool)]
    assert main([*argv, "--no-progress", "--out-dir", str(tmp_path), "--run-name", "run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"lightrl: error: step 2: could not save checkpoint {run}/checkpoints/.tmp-step_000002: "
                          f"{reason}")
    assert err.endswith(f"; removed the partial directory; intact checkpoint: {run}/checkpoints/step_000001; "
                        f"free space, then continue with --resume {run}\n")
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_000001"]
    monkeypatch.setattr(torch, "save", real)
    assert main(["--resume", str(run)]) == 0
    assert checkpoint.find(str(run)) == f"{run}/checkpoints/step_000002"


def test_non_finite_weights_are_never_saved(base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ckpt = os.path.join(base, "checkpoints", "step_000002")
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    run = shutil.copytree(base, tmp_path / "run")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    assert checkpoint.save(str(run), 3, model, tok, {}, keep=1) is None
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_000001", "step_000002"]
    assert capsys.readouterr().out == (f"lightrl: step 3: no checkpoint saved (the weights hold NaN/inf); the last "
                                       f"good one stays {run}/checkpoints/step_000002\n")


def poison_step(monkeypatch, bad_calls: set[int]):
    real, calls = lightrl.rollout.rewards, []

    def poisoned(comps, *a):
        calls.append(1)
        scores, shaping = real(comps, *a)
        return ([float("nan")] * len(scores) if len(calls) in bad_calls else scores), shaping
    monkeypatch.setattr(lightrl.rollout, "rewards", poisoned)


def test_a_non_finite_last_step_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_step(monkeypatch, {2})
    run = train(Config(out_dir=str(tmp_path), run_name="nan", **{**RUN, "keep_checkpoints": 1}))
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["latest", "step_000001"]
    assert checkpoint.find(run) == os.path.join(run, "checkpoints", "step_000001")


def test_a_resume_counts_bad_steps_afresh(run, monkeypatch):
    # A checkpoint written mid-streak by an older lightrl: two bad steps in a row already counted.
    state_file = run / "checkpoints" / "step_000002" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    torch.save({**state, "bad_in_a_row": 2}, state_file)
    poison_step(monkeypatch, {1})
    cfg, _ = parse_args(["--resume", str(run), "--steps", "4", "--max-bad-steps", "2", "--resume-ignore-checksum"])
    train(cfg)
    assert [r["skipped"] for r in read_metrics(run / "metrics.jsonl")] == [0, 0, 1, 0]
