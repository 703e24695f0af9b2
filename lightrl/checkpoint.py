"""Crash-safe checkpoints: a complete directory appears under its final name, or not at all.

Layout of a run directory:
    checkpoints/step_000050/   model.safetensors + config.json + tokenizer files (save_pretrained:
                               AutoModelForCausalLM.from_pretrained and vLLM load it), trainer_state.pt
                               (optimizer, scheduler, RNG states, data order, counters)
    checkpoints/latest         the name of the newest complete checkpoint, written last

A checkpoint is written into checkpoints/.tmp-step_N, every file fsynced, then renamed
(atomic on POSIX) and the directory fsynced; only then is `latest` replaced (write a
temp file, fsync, rename). A kill at any moment leaves `latest` naming a complete
checkpoint; stray .tmp-* directories are removed on the next save.
"""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import torch

STATE = "trainer_state.pt"


def _fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: str, step: int, model, tokenizer, trainer_state: dict, keep: int) -> str:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`. Returns its path."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    name = f"step_{step:06d}"
    tmp, final = os.path.join(root, ".tmp-" + name), os.path.join(root, name)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, os.path.join(tmp, STATE))
    _fsync_tree(tmp)
    if os.path.exists(final):  # re-saving a step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = os.path.join(root, ".latest.tmp")
    with open(pointer, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(root, "latest"))
    _fsync_dir(root)
    done = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    for old in done[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def find(path: str) -> str | None:
    """The checkpoint to resume from: `path` itself if it is one, else the run directory's latest."""
    if os.path.exists(os.path.join(path, STATE)):
        return path
    pointer = os.path.join(path, "checkpoints", "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        ckpt = os.path.join(path, "checkpoints", f.read().strip())
    if not os.path.exists(os.path.join(ckpt, STATE)):
        raise RuntimeError(f"{pointer} names {ckpt}, which is incomplete or missing; "
                           "pass an older checkpoint directory to --resume")
    return ckpt


def load_state(ckpt: str) -> dict:
    return torch.load(os.path.join(ckpt, STATE), map_location="cpu", weights_only=False)
