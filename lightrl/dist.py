"""Data parallelism over the processes torchrun starts: rank setup, FSDP2 sharding, the step's share
of prompts, and the all-reductions that make N ranks train like one process with the whole batch.

Without torchrun (no WORLD_SIZE in the environment) nothing here talks to another process: every
function returns its input, so `python -m lightrl.run` runs exactly the single-process path.

Under torchrun every rank
  samples prompts_per_step / N prompts of the step (whole groups, so group baselines and filters stay
    local); the prompt order is the same on every rank (one PromptSampler state), each rank takes its
    slice of every round, so refill rounds draw for all ranks at once;
  generates with its own full copy of the weights (`unsharded`), so ranks need not agree on the
    number of forward passes while sampling; rollout seeds are per chunk of sequences, by the chunk's
    place in the whole step, so the samples do not depend on the world size;
  trains the FSDP2-sharded policy (each decoder layer, then the root; the reference and a critic
    are sharded alike) on its kept sequences, with the loss denominators of the whole batch
    (`loss_scale`) and gradients summed, not averaged, across ranks: each rank's loss is its share
    of the whole batch's, as for micro-batches; the norm for gradient clipping comes from f64
    squares (`clip_grad_norm`), the same in every world size;
  pads its micro-batches (`micro`) to the most any rank has, with masked-out fillers, since every
    FSDP forward and backward is a collective.
Metrics are reduced across ranks (`step_metrics`) and written by rank 0 only.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as tdist

from lightrl.errors import UserError
from lightrl.kernels import LossScale

# A collective that waits longer than this (a rank died or hangs) raises on the surviving ranks, and
# torchrun then stops the job, instead of waiting forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)

# How step_metrics combines one metric across ranks (anything else: the plain mean, which leaves a
# value that every rank already shares as it is).
SUMS = {"samples", "groups", "verifier_timeouts", "reward_errors", "tokens_per_s"}
MAXIMA = {"completion_len_max", "peak_mem_gb", "step_time", "rollout_time", "update_time", "eval_time"}
PER_SAMPLE = {"reward_mean", "accuracy"}  # and every reward_<term> mean
PER_SEQUENCE = {"completion_len_mean", "truncated_frac", "empty_frac", "kept_frac"}

OPTIMIZER_SHARDS = "optimizer"  # a checkpoint's torch.distributed.checkpoint directory (torchrun)

_device = torch.device("cpu")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) and return this rank's device
    (cuda:LOCAL_RANK for a CUDA device). Other ranks log warnings and errors only."""
    global _device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT,
                             device_id=device if device.type == "cuda" else None)
    _device = device
    if not is_main():
        logging.getLogger("lightrl").setLevel(logging.WARNING)
    return device


def close() -> None:
    if active():
        tdist.destroy_process_group()


def check(prompts_per_step: int) -> None:
    """Refuse a step that cannot split into whole groups, the same number on every rank."""
    if active() and prompts_per_step % world():
        raise UserError(f"--prompts-per-step {prompts_per_step} does not split over {world()} processes; "
                         f"pass a multiple of {world()} (each rank samples whole groups)")


def broadcast(obj):
    """Rank 0's obj (any picklable value) on every rank."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        tdist.barrier()


# ---- sharding ------------------------------------------------------------------------------------

def _root(net: torch.nn.Module) -> torch.nn.Module:
    """The module sharded last, as FSDP's root: net, or a peft model's (LoRA) transformers model inside
    its wrappers, since peft's forward and generate both run through that model's own forward."""
    return net.get_base_model() if hasattr(net, "get_base_model") else net


def shard(net: torch.nn.Module, amp_dtype: torch.dtype | None) -> torch.nn.Module:
    """net sharded in place with FSDP2: each decoder layer, then the root (embeddings, final norm,
    lm_head). A LoRA layer's adapters share its group with its frozen weights; only they get
    gradients (and reduce-scatters). On CUDA with --dtype bfloat16/auto the shards stay fp32 and are
    gathered in amp_dtype, gradients reduced in fp32. Gradients are summed over ranks (each rank's
    loss is its share)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    kw = {}
    if _device.type == "cuda" and amp_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    for layer in net.get_decoder().layers:
        fully_shard(layer, **kw)
    fully_shard(_root(net), **kw)
    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    return net


def reshard(net) -> None:
    """Every FSDP module of net back to its shards (a root may still hold its gathered parameters)."""
    from torch.distributed.fsdp import FSDPModule
    for m in net.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def shard_policy(policy) -> None:
    """Shard the policy and its reference (when there is one) in place; before the optimizer exists.
    A LoRA run's reference (model.AdaptersOff, not a module) is the policy's own modules: sharded with it."""
    shard(policy.model, policy.amp_dtype)
    if isinstance(policy.ref_model, torch.nn.Module):
        shard(policy.ref_model, policy.amp_dtype)


def is_sharded(net) -> bool:
    """Whether net (a model or a peft model) is sharded by shard: call it, not its decoder, so that
    the root's FSDP hooks run."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(_root(net), FSDPModule)


@contextlib.contextmanager
def unsharded(net):
    """Every FSDP module of net gathered for the block and kept gathered through its forward passes:
    generation then runs on this rank alone (no collective per forward, any number of them)."""
    if not (active() and is_sharded(net)):
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    modules = [m for m in net.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            # the root stays gathered from its forward through the backward
            m.set_reshard_after_forward(m is not _root(net), recurse=False)


def full(t):
    """A DTensor's whole value as a plain tensor (other tensors unchanged); collective for a DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def local(t):
    """A DTensor's shard on this rank, a view that writes through (other tensors unchanged)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_state_dict(net) -> dict:
    """net's whole state dict (plain CPU tensors) on rank 0, {} on the others; collective (torchrun only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # A tied parameter (lm_head = input embedding) comes back under both names; keep the first, as
    # save_pretrained does with the model's own state dict.
    first, tied = {}, set()
    for name, p in net.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            tied.add(name)
    return {k: v for k, v in state.items() if k not in tied}


def save_checkpoint(run_dir: str, step: int, net, tokenizer, state: dict, optimizer, keep: int,
                    finite: bool, merged: Callable[[str, dict], None] | None = None, collective=()) -> None:
    """checkpoint.save under torchrun; collective. Rank 0 writes the whole model (+ config, tokenizer;
    a peft model: its adapters, as in one process) and trainer_state.pt (state less its "optimizer");
    every rank writes its optimizer shard into optimizer/ with torch.distributed.checkpoint, inside
    the staging directory, so the checkpoint still appears whole or not at all. merged(path, weights):
    rank 0 writes more into the staging directory from the gathered state dict (LoRA --merge-on-save:
    model.save_merged), so the weights are gathered once. collective: functions of the staging
    directory that every rank calls next, in order (each gathers what it saves, and rank 0 writes it:
    Critic.save, Policy.save_reference)."""
    from lightrl import checkpoint
    weights = full_state_dict(net)
    finite = all_true(finite and checkpoint.weights_finite(p.to_local() for p in net.parameters()))

    def write_shards(path: str) -> None:
        barrier()  # rank 0 has made the staging directory (and removed stale ones)
        save_optimizer(net, optimizer, path)
        for write in collective:
            write(path)

    state = {k: v for k, v in state.items() if k != "optimizer"}
    if is_main():
        extra = [write_shards] + ([lambda path: merged(path, weights)] if merged is not None else [])
        checkpoint.save(run_dir, step, net, tokenizer, state, keep, finite=finite, weights=weights,
                        extra=extra if finite else [])
    elif finite:
        write_shards(checkpoint.staging_dir(run_dir, step))
    barrier()


def save_optimizer(net, optimizer, path: str) -> None:
    """Every rank's shard of optimizer (over net's parameters) into path/optimizer/ with
    torch.distributed.checkpoint; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    dcp.save({"optimizer": get_optimizer_state_dict(net, optimizer)},
             checkpoint_id=os.path.join(path, OPTIMIZER_SHARDS))


def load_optimizer_state(net, optimizer, ckpt: str, state: dict) -> None:
    """The optimizer state saved in directory ckpt (a checkpoint, or its critic/): its optimizer/ shards
    (saved under torchrun; they load with any number of processes, or none), else state["optimizer"]
    (trainer_state.pt's or critic/state.pt's, saved by one process)."""
    shards = os.path.join(ckpt, OPTIMIZER_SHARDS)
    if not os.path.isdir(shards) and not active():
        optimizer.load_state_dict(state["optimizer"])
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    if not os.path.isdir(shards):
        set_optimizer_state_dict(net, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        return
    loaded = {"optimizer": get_optimizer_state_dict(net, optimizer)}
    dcp.load(loaded, checkpoint_id=shards)
    set_optimizer_state_dict(net, optimizer, loaded["optimizer"])


# ---- the step's share of prompts ---------------------------------------------------------------

def local_prompts(prompts_per_step: int) -> int:
    """Groups this rank samples per step."""
    return prompts_per_step // world()


def take(sampler, need: int) -> tuple[list[int], int | None]:
    """(this rank's next `need` prompt indices, the index of its first sequence-group in the round
    over all ranks, None without torchrun). Every rank takes the round's whole draw from the sampler,
    so its state stays the same on every rank."""
    if not active():
        return sampler.take(need), None
    needs = [None] * world()
    tdist.all_gather_object(needs, need)
    idx = sampler.take(sum(needs)) if sum(needs) else []
    first = sum(needs[:rank()])
    return idx[first:first + need], first


def all_true(flag: bool) -> bool:
    """flag holds on every rank."""
    return flag if not active() else total(float(not flag)) == 0


def any_true(flag: bool) -> bool:
    """flag holds on some rank."""
    return flag if not active() else total(float(flag)) > 0


def shard_rows(rows: list) -> tuple[list, int | None]:
    """(this rank's contiguous part of rows, e.g. evaluation questions; the index of its first row,
    None without torchrun)."""
    if not active():
        return rows, None
    per = -(-len(rows) // world())
    return rows[rank() * per:(rank() + 1) * per], rank() * per


# ---- reductions ----------------------------------------------------------------------------------

def _all_reduce(values: list[float], op) -> list[float]:
    if not values:
        return []
    t = torch.tensor(values, dtype=torch.float64, device=_device)
    tdist.all_reduce(t, op=op)
    return t.tolist()


def total(x: float) -> float:
    """x summed over ranks."""
    return x if not active() else _all_reduce([float(x)], tdist.ReduceOp.SUM)[0]


def total_tensor(t: torch.Tensor) -> torch.Tensor:
    """t summed over ranks, a new tensor (t itself without torchrun)."""
    if not active():
        return t
    t = t.clone()
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def loss_scale(scale: LossScale) -> LossScale:
    """The whole batch's denominators from every rank's (constant is a setting, the same everywhere)."""
    if not active():
        return scale
    tokens, seqs = _all_reduce([scale.tokens, scale.seqs], tdist.ReduceOp.SUM)
    return LossScale(tokens=int(tokens), seqs=int(seqs), constant=scale.constant)


def loss_metrics(metrics: dict, tokens: int) -> dict:
    """merge_metrics' output (over this rank's `tokens` mask tokens) over every rank's: weighted means,
    ratio_max the max. A rank without a loss call has no metrics; it counts with no tokens."""
    if not active():
        return metrics
    keys = [None] * world()
    tdist.all_gather_object(keys, sorted(metrics))
    names = sorted({k for ks in keys for k in ks} - {"ratio_max"})
    sums = _all_reduce([metrics.get(k, 0.0) * tokens for k in names] + [tokens], tdist.ReduceOp.SUM)
    out = {k: s / max(sums[-1], 1) for k, s in zip(names, sums)}
    if any("ratio_max" in ks for ks in keys):
        out["ratio_max"] = _all_reduce([metrics.get("ratio_max", float("-inf"))], tdist.ReduceOp.MAX)[0]
    return out


def step_metrics(m: dict, samples: int, seqs: int) -> dict:
    """A step's metrics over every rank: sums, maxima, means weighted by each rank's samples (rewards)
    or final-batch sequences, else plain means (samples, seqs: this rank's counts). Collective: every
    rank passes the same keys."""
    if not active():
        return m
    names = sorted(k for k, v in m.items() if isinstance(v, (int, float)))

    def per(k):  # the count a mean of k is over
        if k in PER_SAMPLE or (k.startswith("reward_") and k not in SUMS):
            return "#samples"
        return "#seqs" if k in PER_SEQUENCE else "#ranks"
    counts = {"#samples": samples, "#seqs": seqs, "#ranks": 1}
    summed = [k for k in names if k not in MAXIMA]
    sums = dict(zip(summed + list(counts), _all_reduce(
        [m[k] * (1 if k in SUMS else counts[per(k)]) for k in summed] + list(counts.values()), tdist.ReduceOp.SUM)))
    maxed = [k for k in names if k in MAXIMA]
    maxima = dict(zip(maxed, _all_reduce([m[k] for k in maxed], tdist.ReduceOp.MAX)))
    out = dict(m)
    for k in names:
        v = maxima[k] if k in MAXIMA else sums[k] if k in SUMS else sums[k] / max(sums[per(k)], 1)
        out[k] = round(v) if isinstance(m[k], int) else v
    return out


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients of params (plain or FSDP-sharded) so that their total L2 norm is at most
    max_norm (inf: never); returns the norm before, a 0-d f32 tensor on the gradients' device.
    The squares are summed in f64 and then over ranks, so one process and any number of ranks get the
    same f32 norm and clip factor. (torch's clip_grad_norm_ sums f32 shard norms, in an order set by
    the world size; that one-ulp difference reaches every weight through the factor, and AdamW turns
    it into visible weight differences where a gradient sits near its eps.)"""
    grads = [local(p.grad) for p in params if p.grad is not None]
    device = grads[0].device if grads else _device
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        for part in g.detach().flatten().split(1 << 24):  # bounds the f64 copy's memory
            squares += part.double().square().sum()
    if active():
        tdist.all_reduce(squares)
    norm = squares.sqrt().float()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # torch's clip_grad_norm_ factor, same float ops
    for g in grads:
        g.detach().mul_(coef)
    return norm


def first_micro_seqs(batch, n: int) -> int:
    """How many of this rank's first sequences one process's first micro-batch of n would hold: the
    whole step's batch is the ranks' batches in rank order. Collective; n without torchrun."""
    if not active():
        return n
    counts = [None] * world()
    tdist.all_gather_object(counts, batch.num_seqs)
    return max(0, n - sum(counts[:rank()]))


# ---- micro-batches ---------------------------------------------------------------------------

def micro(batch, n: int):
    """(micro-batch, real) pairs: batch.micro(n) (real True), then under torchrun masked-out one-token
    fillers (real False) until every rank has yielded as many as the rank with the most."""
    mbs = list(batch.micro(n))
    # Counted before the first forward: FSDP's gathers in it must not meet this all-reduce on another rank.
    most = int(_all_reduce([len(mbs)], tdist.ReduceOp.MAX)[0]) if active() else len(mbs)
    for mb in mbs:
        yield mb, True
    for _ in range(most - len(mbs)):
        yield _filler(batch), False


def _filler(batch):
    from lightrl.batch import MicroBatch
    dev = batch.ids.device
    one = lambda dtype: torch.zeros(1, dtype=dtype, device=dev)  # noqa: E731
    return MicroBatch(ids=one(torch.long)[None], attn=torch.ones(1, 1, dtype=torch.long, device=dev),
                      seq_index=one(torch.long), cols=one(torch.long), targets=one(torch.long),
                      mask=one(torch.bool), advantages=one(torch.float32),
                      extras={k: torch.zeros(1, dtype=v.dtype, device=dev) for k, v in batch.extras.items()},
                      tokens=0)
