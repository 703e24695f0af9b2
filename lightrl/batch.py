"""StepBatch: one training step's sequences as flat tensors, built once after rollout and reward.

A sequence is one sampled completion with its prompt; the G completions of a prompt form a
group. The step's data lives on the training device in one layout from the advantages to the
last micro-batch:
  per sequence [S]   group, lengths (completion tokens), scores, shaping, and after the
                     advantage step advantages and keep;
  per token [N]      the completion tokens of every sequence in order: targets, seq_index,
                     pos (where the hidden state that predicts the token sits), mask, and
                     extras (per-token inputs of the loss);
  flat ids           each sequence's prompt then completion ids, for the model forward.
micro(n) cuts it into padded views of n sequences, the shapes the decoder and
fused_policy_loss take.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lightrl.kernels import LossScale


@dataclass
class MicroBatch:
    """A padded view of consecutive sequences of a StepBatch (B of them, n completion tokens).

    ids, attn [B, W] int64, right-padded; seq_index, cols [n] int64: the position in [B, W] of
    the hidden state that predicts each completion token (seq_index in 0..B-1 is also the
    loss's sequence index); targets [n] int64; mask [n] bool; advantages [B] f32 or None (before the advantage step);
    extras: the StepBatch's extras cut to these n tokens; tokens: mask tokens (int).
    """
    ids: torch.Tensor
    attn: torch.Tensor
    seq_index: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor | None
    extras: dict[str, torch.Tensor]
    tokens: int


@dataclass
class StepBatch:
    """The step's S sequences and N completion tokens (module docstring for the layout).

    prompt_lens, comp_lens: per-sequence lengths on the host (the layout micro() cuts by);
    ids [sum of prompt + completion lengths] int64; group [S] int64 (the prompt each
    sequence answers, 0..G-1, non-decreasing); lengths [S] int64; scores, shaping [S] f32
    (the verifier's and the rule terms; the reward is their sum); advantages [S] f32 and
    keep [S] bool: None until the advantage step sets them; targets, seq_index, pos [N]
    int64; mask [N] bool (False: the sequence's tokens do not count, e.g. truncated);
    extras: name -> [N] tensor, the per-token loss inputs beyond these: old and reference
    log-probs (set before the update), and where later rows put values, returns or
    rollout log-probs.
    """
    prompt_lens: list[int]
    comp_lens: list[int]
    ids: torch.Tensor
    group: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    shaping: torch.Tensor
    targets: torch.Tensor
    seq_index: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, groups, counts: list[bool], device) -> StepBatch:
        """From groups of (prompt ids, completion ids of each sample, their scores, their shaping terms[,
        their sampling log-probs: a list of floats per completion, into extras["rollout_logp"]]) and
        counts[s]: whether sequence s's tokens count (sequences numbered group after group); moved
        to device in one go."""
        prompts, comps, group, ids, targets, seq_index, pos, mask = [], [], [], [], [], [], [], []
        for g, (p, group_comps, *_) in enumerate(groups):
            for c in group_comps:
                s = len(comps)
                prompts.append(p)
                comps.append(c)
                group.append(g)
                ids += p + c
                targets += c
                seq_index += [s] * len(c)
                pos += range(len(p) - 1, len(p) + len(c) - 1)  # position t predicts token t + 1
                mask += [counts[s]] * len(c)
        to = lambda xs, dt: torch.tensor(xs, dtype=dt).to(device)  # noqa: E731
        flat = lambda i: to([x for grp in groups for x in grp[i]], torch.float32)  # noqa: E731
        extras = {}
        if groups and len(groups[0]) > 4:
            extras["rollout_logp"] = to([x for grp in groups for lp in grp[4] for x in lp], torch.float32)
        return cls(prompt_lens=[len(p) for p in prompts], comp_lens=[len(c) for c in comps],
                   ids=to(ids, torch.long), group=to(group, torch.long),
                   lengths=to([len(c) for c in comps], torch.long),
                   scores=flat(2), shaping=flat(3), targets=to(targets, torch.long),
                   seq_index=to(seq_index, torch.long), pos=to(pos, torch.long), mask=to(mask, torch.bool),
                   extras=extras)

    @property
    def num_seqs(self) -> int:
        return len(self.comp_lens)

    def seq_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums [S] f32 of a per-token tensor x [N]."""
        return torch.zeros(self.num_seqs, device=x.device).index_add_(0, self.seq_index, x.float())

    def loss_scale(self, constant: float | None) -> LossScale:
        """The whole batch's denominators for fused_policy_loss: mask tokens, sequences with one."""
        return LossScale(tokens=int(self.mask.sum()), seqs=int((self.seq_sum(self.mask) > 0).sum()),
                         constant=constant)

    def select(self, keep: torch.Tensor) -> StepBatch:
        """The sequences where keep [S] bool is True, in order, as a batch of their own."""
        seqs = keep.nonzero().flatten().tolist()
        tok = keep[self.seq_index]
        full = torch.tensor([p + c for p, c in zip(self.prompt_lens, self.comp_lens)], dtype=torch.long,
                        device=keep.device)
        renumber = keep.long().cumsum(0) - 1
        pick = lambda x: None if x is None else x[keep]  # noqa: E731
        return StepBatch(prompt_lens=[self.prompt_lens[s] for s in seqs], comp_lens=[self.comp_lens[s] for s in seqs],
                         ids=self.ids[keep.repeat_interleave(full)], group=self.group[keep],
                         lengths=self.lengths[keep], scores=self.scores[keep], shaping=self.shaping[keep],
                         targets=self.targets[tok], seq_index=renumber[self.seq_index[tok]], pos=self.pos[tok],
                         mask=self.mask[tok], advantages=pick(self.advantages), keep=pick(self.keep),
                         extras={k: v[tok] for k, v in self.extras.items()})

    def micro(self, n: int):
        """MicroBatch views of n consecutive sequences at a time (the last one may be shorter)."""
        starts, tok_starts = [0], [0]
        for p, c in zip(self.prompt_lens, self.comp_lens):
            starts.append(starts[-1] + p + c)
            tok_starts.append(tok_starts[-1] + c)
        dev = self.ids.device
        for a in range(0, self.num_seqs, n):
            b = min(a + n, self.num_seqs)
            full = [p + c for p, c in zip(self.prompt_lens[a:b], self.comp_lens[a:b])]
            valid = torch.arange(max(full), device=dev)[None, :] < torch.tensor(full, device=dev)[:, None]
            ids = torch.zeros(valid.shape, dtype=torch.long, device=dev).masked_scatter_(
                valid, self.ids[starts[a]:starts[b]])
            t = slice(tok_starts[a], tok_starts[b])
            seq_index = self.seq_index[t] - a
            mask = self.mask[t]
            yield MicroBatch(ids=ids, attn=valid.long(), seq_index=seq_index, cols=self.pos[t],
                             targets=self.targets[t], mask=mask,
                             advantages=None if self.advantages is None else self.advantages[a:b],
                             extras={k: v[t] for k, v in self.extras.items()}, tokens=int(mask.sum()))
