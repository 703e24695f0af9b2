"""The critic of rows with a learned value baseline (PPO): a value model trained next to the policy.

The value model is a decoder (the policy's starting weights, or --critic-model) with a scalar
head on its final hidden states; V_t is read at the hidden state that predicts completion token
t, the same positions the policy's loss uses. It has its own AdamW, learning rate and warm-up,
and its own checkpoint files (critic/ inside each checkpoint directory). Under torchrun it is
sharded with FSDP2 like the policy, and its loss takes the whole batch's token count, so N ranks
update it as one process does on the same batch.

Its loss over the batch's mask tokens (R the GAE returns, V_old the values GAE used, c = vf_clip):
    0.5 * mean_t max((V_t - R_t)^2, (V_old_t + clamp(V_t - V_old_t, -c, c) - R_t)^2)
(the second term only with vf_clip), run for cfg.updates_per_batch epochs like the policy.
"""
from __future__ import annotations

import copy
import math
import os

import torch

from lightrl import dist
from lightrl.config import Config
from lightrl.errors import UserError

WEIGHTS = "model.safetensors"
STATE = "state.pt"


class ValueModel(torch.nn.Module):
    """decoder (a transformers base model) + head: Linear(D, 1), zero-initialised so every value starts at 0."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.head = torch.nn.Linear(decoder.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def get_decoder(self):
        """The decoder, whose layers lightrl.dist.shard shards one by one."""
        return self.decoder

    def forward(self, mb, amp_dtype) -> torch.Tensor:
        """Values [n] f32 of mb's completion tokens (a lightrl.batch.MicroBatch)."""
        device_type = mb.ids.device.type
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = self.decoder(input_ids=mb.ids, attention_mask=mb.attn, use_cache=False)
        hidden = out.last_hidden_state[mb.seq_index, mb.cols]
        # The head's dtype: fp32, or FSDP's gathering dtype under CUDA mixed precision. A copy, not
        # a view: FSDP warns of a view returned by a sharded root's forward.
        return self.head(hidden.to(self.head.weight.dtype)).float().squeeze(-1).clone()


def value_loss(values, old_values, returns, mask, vf_clip: float | None, tokens: int):
    """(this call's share of the batch's critic loss: sum over its mask tokens / tokens, clipped-token count).

    values [n] f32 (differentiable), old_values, returns [n] f32, mask [n] bool, tokens: the batch's mask
    tokens (the denominator, like LossScale.tokens)."""
    err = (values - returns) ** 2
    clipped = torch.zeros_like(mask)
    if vf_clip is not None:
        v_clip = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
        err_clip = (v_clip - returns) ** 2
        clipped = err_clip > err
        err = torch.maximum(err, err_clip)
    loss = 0.5 * torch.where(mask, err, 0.0).sum() / max(tokens, 1)
    return loss, int((clipped & mask).sum())


class Critic:
    """The value model with its optimizer and LR schedule; values() for GAE and update() after the policy's."""

    def __init__(self, net: ValueModel, cfg: Config, amp_dtype):
        self.net, self.amp_dtype = net, amp_dtype
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
        warm = cfg.critic_warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / (warm + 1)))

    @torch.no_grad()
    def values(self, batch, micro_batch: int) -> torch.Tensor:
        """Values [N] f32 of every completion token of a StepBatch. Under torchrun the filler
        micro-batches that keep FSDP ranks in step (lightrl.dist.micro) run but are left out."""
        outs = [(self.net(mb, self.amp_dtype), real) for mb, real in dist.micro(batch, micro_batch)]
        return torch.cat([torch.zeros(0, device=batch.ids.device)] + [v for v, real in outs if real])

    def update(self, batch, cfg: Config, row) -> dict:
        """cfg.updates_per_batch optimizer steps on the batch's extras["returns"] (targets) and
        extras["old_values"]. Returns the first epoch's metrics, or {"critic_skipped": 1} after a
        non-finite loss or gradient (the critic's weights and optimizer state then stay as they were).
        Under torchrun the loss' denominator and the metrics are the whole batch's (every rank's)."""
        tokens = int(dist.total(int(batch.mask.sum())))
        metrics = {}
        for epoch in range(cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss_total, clipped = 0.0, 0
            for mb, real in dist.micro(batch, cfg.micro_batch):
                values = self.net(mb, self.amp_dtype)
                if not real:  # this rank has fewer micro-batches than another: a zero gradient keeps FSDP in step
                    (values.sum() * 0).backward()
                    continue
                loss, n_clip = value_loss(values, mb.extras["old_values"], mb.extras["returns"], mb.mask,
                                          row.vf_clip, tokens)
                loss.backward()
                loss_total += loss.item()
                clipped += n_clip
            loss_total, clipped = dist.total(loss_total), dist.total(clipped)
            grad_norm = dist.clip_grad_norm(self.net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not (math.isfinite(loss_total) and torch.isfinite(grad_norm)):
                self.optimizer.zero_grad(set_to_none=True)
                return {**metrics, "critic_skipped": 1}
            if epoch == 0:
                value_sum = dist.total(float(torch.where(batch.mask, batch.extras["old_values"], 0.0).sum()))
                metrics = {"critic_loss": loss_total, "critic_grad_norm": grad_norm.item(),
                           "critic_clip_frac": clipped / max(tokens, 1), "critic_lr": self.scheduler.get_last_lr()[0],
                           "value_mean": value_sum / max(tokens, 1)}
            self.optimizer.step()
        self.scheduler.step()
        return {**metrics, "critic_skipped": 0}

    def save(self, ckpt_dir: str) -> None:
        """Write critic/model.safetensors (value model) and critic/state.pt (optimizer, scheduler) into
        ckpt_dir. Under torchrun every rank calls it (collective): the weights are gathered for rank
        0 to write, and the optimizer goes into critic/optimizer/ as every rank's shard."""
        from safetensors.torch import save_file
        path = os.path.join(ckpt_dir, "critic")
        state = {"scheduler": self.scheduler.state_dict()}
        if dist.is_sharded(self.net):
            weights = dist.full_state_dict(self.net)
            dist.save_optimizer(self.net, self.optimizer, path)
        else:
            weights = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
            state["optimizer"] = self.optimizer.state_dict()
        if dist.is_main():
            os.makedirs(path, exist_ok=True)
            save_file(weights, os.path.join(path, WEIGHTS))
            torch.save(state, os.path.join(path, STATE))

    def load_state(self, ckpt_dir: str) -> None:
        """Restore the optimizer and scheduler that save() wrote (exact resume; the optimizer's
        torchrun shards load with any number of processes)."""
        path = os.path.join(ckpt_dir, "critic")
        state = torch.load(os.path.join(path, STATE), map_location="cpu", weights_only=False)
        dist.load_optimizer_state(self.net, self.optimizer, path, state)
        self.scheduler.load_state_dict(state["scheduler"])


def load(cfg: Config, policy, ckpt: str | None, device) -> Critic:
    """The critic: from --critic-model, else a copy of the policy's starting weights (the policy as
    loaded for a new run; its init_path on resume, before the checkpoint's critic state replaces it).
    Under torchrun it is sharded before its optimizer is made; call it before the policy is sharded."""
    from safetensors.torch import load_file
    if cfg.critic_model or ckpt:
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained(cfg.critic_model or policy.init_path, dtype=torch.float32)
    else:
        base = copy.deepcopy(policy.model)
    net = ValueModel(base.get_decoder()).to(device).train()
    if ckpt:
        path = os.path.join(ckpt, "critic")
        for name in (WEIGHTS, STATE):
            if not os.path.isfile(os.path.join(path, name)):
                raise UserError(f"{os.path.join(path, name)} is missing: this run has a critic (row with "
                                "critic=True) but the checkpoint holds none; resume a checkpoint of this run")
        net.load_state_dict(load_file(os.path.join(path, WEIGHTS), device=str(device)))
    if dist.active():
        dist.shard(net, policy.amp_dtype)
    critic = Critic(net, cfg, policy.amp_dtype)
    if ckpt:
        critic.load_state(ckpt)
    return critic
