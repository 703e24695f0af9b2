"""Crash-safe, verified checkpoints: a complete directory appears under its final name, or not at all.

Layout of a run directory:
    checkpoints/step_000050/   model.safetensors + config.json + tokenizer files (save_pretrained:
                               AutoModelForCausalLM.from_pretrained and vLLM load it), trainer_state.pt
                               (optimizer, scheduler, RNG states, data order, counters), manifest.json
                               (size and SHA-256 of every other file); under torchrun the optimizer
                               state is in optimizer/ instead (torch.distributed.checkpoint shards)
    checkpoints/latest         the name of the newest complete checkpoint, written last

A checkpoint is written into checkpoints/.tmp-step_N, its manifest added, every file
fsynced, then renamed (atomic on POSIX) and the directory fsynced; only then is `latest`
replaced (write a temp file, fsync, rename). A kill at any moment leaves `latest` naming a
complete checkpoint; stray .tmp-* directories are removed on the next save. A save that
fails (disk full, read-only) removes its partial directory and stops the run (RunStopped).

On resume, `latest` must hold a `step_N` name of a directory inside the run's own
checkpoints/ (never a path), and the checkpoint must match its manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import zipfile

from lightrl.errors import RunStopped, UserError

# torch and numpy are imported inside the functions that need them: find() and verify() run in
# the preflight checks, which must answer in well under the seconds `import torch` takes.

STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
STEP_NAME = re.compile(r"step_\d+")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


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
    import numpy as np
    import torch
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(ckpt: str) -> None:
    files = {}
    for root, _dirs, names in os.walk(ckpt):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, ckpt)] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    with open(os.path.join(ckpt, MANIFEST), "w") as f:
        json.dump({"files": dict(sorted(files.items()))}, f, indent=1)


def latest(run_dir: str) -> str | None:
    """The newest complete checkpoint of run_dir (validated like find), or None when it has none."""
    return find(run_dir) if os.path.exists(os.path.join(run_dir, "checkpoints", "latest")) else None


def weights_finite(tensors) -> bool:
    import torch
    return all(bool(torch.isfinite(p).all()) for p in tensors)


def staging_dir(run_dir: str, step: int) -> str:
    """Where checkpoint `step` is written before it is renamed to its final name."""
    return os.path.join(run_dir, "checkpoints", f".tmp-step_{step:06d}")


def save(run_dir: str, step: int, model, tokenizer, trainer_state: dict, keep: int, finite: bool = True,
         weights: dict | None = None, extra=()) -> str | None:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`. Returns its path.

    finite=False (the step's reward, loss or gradient was non-finite) or non-finite weights: nothing
    is written, the previous checkpoints stay, and None is returned. A failed write (disk full,
    read-only file system) removes the partial directory and raises RunStopped naming the step,
    the path, the OS error and the checkpoint that is still intact. weights: the whole state dict to
    write when the model itself holds only a shard (torchrun; lightrl.dist.full_state_dict).
    extra: functions of the staging directory that write more of the checkpoint into it before the
    manifest (a critic's, a refreshed reference's, a merged LoRA model, torchrun's optimizer shards),
    so they are verified and renamed with the rest.
    """
    if not (finite and weights_finite(model.parameters() if weights is None else weights.values())):
        what = "its update was non-finite" if not finite else "the weights hold NaN/inf"
        print(f"lightrl: step {step}: no checkpoint saved ({what}); the last good one stays "
              f"{latest(run_dir) or '(none yet)'}")
        return None
    import torch
    root = os.path.join(run_dir, "checkpoints")
    name = f"step_{step:06d}"
    tmp, final = staging_dir(run_dir, step), os.path.join(root, name)
    pointer = os.path.join(root, ".latest.tmp")
    try:
        os.makedirs(root, exist_ok=True)
        for stale in os.listdir(root):
            if stale.startswith(".tmp-"):
                shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, os.path.join(tmp, STATE))
        for write in extra:
            write(tmp)
        _write_manifest(tmp)
        _fsync_tree(tmp)
        if os.path.exists(final):  # re-saving a step after a resume
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        with open(pointer, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, os.path.join(root, "latest"))
        _fsync_dir(root)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError("... unexpected pos")
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(pointer):
            os.remove(pointer)
        reason = (str(e).splitlines() or [type(e).__name__])[0][:300]
        if not isinstance(e, OSError):
            reason += f" ({shutil.disk_usage(run_dir).free} bytes free there)"
        try:
            intact = latest(run_dir) or "none (no checkpoint was written before)"
        except UserError:
            intact = "none readable"
        raise RunStopped(f"step {step}: could not save checkpoint {tmp}: {reason}; removed the partial "
                         f"directory; intact checkpoint: {intact}; free space, then continue with "
                         f"--resume {run_dir}") from None
    done = sorted(n for n in os.listdir(root) if STEP_NAME.fullmatch(n))
    for old in done[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def find(path: str) -> str | None:
    """The checkpoint to resume from: `path` itself if it is one, else the run directory's latest.

    None when `path` has neither. Raises UserError when `latest` holds anything but the name of a
    complete step_N directory inside path/checkpoints (a path to another run is refused).
    """
    if os.path.exists(os.path.join(path, STATE)):
        root = os.path.dirname(os.path.abspath(path))
        if not (STEP_NAME.fullmatch(os.path.basename(os.path.abspath(path))) and os.path.basename(root) == "checkpoints"
                and os.path.realpath(os.path.dirname(os.path.realpath(path))) == os.path.realpath(root)):
            raise UserError(f"--resume {path}: a checkpoint directory must be RUN/checkpoints/step_N itself "
                            "(not a link or copy elsewhere); pass the run directory instead")
        return path
    root = os.path.join(path, "checkpoints")
    pointer = os.path.join(root, "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer, "rb") as f:
        raw = f.read(200)
    name = raw.decode("utf-8", errors="replace").strip()
    if not STEP_NAME.fullmatch(name):
        raise UserError(f"{pointer}: holds {raw[:60]!r}, not a checkpoint name like step_000050; write the "
                        f"name of a complete checkpoint of {root} into it, or pass that checkpoint's "
                        "directory to --resume")
    ckpt = os.path.join(root, name)
    if os.path.realpath(os.path.dirname(os.path.realpath(ckpt))) != os.path.realpath(root):
        raise UserError(f"{pointer}: {name} is a link out of {root}; a run resumes only its own checkpoints")
    if not os.path.exists(os.path.join(ckpt, STATE)):
        raise UserError(f"{pointer} names {ckpt}, which is incomplete or missing; "
                        "pass an older checkpoint directory to --resume")
    return ckpt


def step_of(ckpt: str) -> int:
    """The step a checkpoint directory was saved at, from its name step_N."""
    return int(os.path.basename(os.path.abspath(ckpt)).split("_", 1)[1])


def verify(ckpt: str, checksums: bool = True) -> None:
    """Refuse (UserError naming the file) a checkpoint that would not load or would load different numbers.

    Always: config.json, the tokenizer, every *.safetensors header and trainer_state.pt's zip
    structure (CRCs included) are checked. checksums=True also compares every file with the
    size and SHA-256 in manifest.json (a bit flip anywhere is caught).
    """
    ignore = " (or pass --resume-ignore-checksum to resume anyway)"
    if checksums:
        manifest = os.path.join(ckpt, MANIFEST)
        try:
            with open(manifest) as f:
                files = json.load(f)["files"]
        except FileNotFoundError:
            raise UserError(f"{manifest} is missing, so the checkpoint cannot be verified; resume an older "
                            f"checkpoint{ignore}") from None
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{manifest} is not a valid manifest; resume an older checkpoint{ignore}") from None
        for rel, want in files.items():
            path = os.path.join(ckpt, rel)
            if not os.path.isfile(path):
                raise UserError(f"{path} is missing (listed in {MANIFEST}); resume an older checkpoint{ignore}")
            if os.path.getsize(path) != want["bytes"] or _sha256(path) != want["sha256"]:
                raise UserError(f"{path} does not match its checksum in {MANIFEST} (corrupt or changed); "
                                f"resume an older checkpoint{ignore}")
    config = "adapter_config.json" if os.path.isfile(os.path.join(ckpt, "adapter_config.json")) else "config.json"
    for name in (config, "tokenizer_config.json"):  # a LoRA checkpoint holds the adapters' config
        if not os.path.isfile(os.path.join(ckpt, name)):
            raise UserError(f"{os.path.join(ckpt, name)} is missing; resume an older checkpoint")
    if not any(os.path.isfile(os.path.join(ckpt, n)) for n in TOKENIZER_FILES):
        raise UserError(f"{ckpt}: no tokenizer file ({', '.join(TOKENIZER_FILES)}); resume an older checkpoint")
    weights = sorted(n for n in os.listdir(ckpt) if n.endswith(".safetensors"))  # model or adapter_model
    if not weights:
        raise UserError(f"{ckpt}: no *.safetensors weights; resume an older checkpoint")
    for name in weights:
        check_safetensors(os.path.join(ckpt, name))
    state = os.path.join(ckpt, STATE)
    try:
        with zipfile.ZipFile(state) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"{state} is truncated or not a torch.save file ({e}); resume an older checkpoint") from None
    if bad is not None:
        raise UserError(f"{state}: its entry {bad} fails its CRC (corrupt); resume an older checkpoint")


def check_safetensors(path: str) -> None:
    """Raise UserError unless `path` has a readable safetensors header whose tensors fit in the file."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); it is truncated or corrupt") from None
    if 8 + n + end > size:
        raise UserError(f"{path}: truncated ({size} bytes, its header needs {8 + n + end})")


def load_state(ckpt: str) -> dict:
    import torch
    path = os.path.join(ckpt, STATE)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- unpickling a damaged file can raise almost anything
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{path} cannot be loaded ({type(e).__name__}: {first}); "
                        "resume an older checkpoint") from None
