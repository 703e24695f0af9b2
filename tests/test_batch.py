"""StepBatch: the flat layout of a step, its padded micro-batch views, select and the loss denominators."""
import torch

from lightrl.batch import StepBatch

# Two prompts, two completions each (with scores and shaping); the third completion's tokens do not count.
GROUPS = [([5, 6], [[10, 11, 12], [13]], [1.0, 0.0], [0.5, 0.0]),
          ([7], [[14, 15], [16, 17, 18, 19]], [1.0, 1.0], [0.0, -0.5])]


def _batch():
    return StepBatch.build(GROUPS, [True, True, False, True], "cpu")


def test_build_lays_the_step_out_flat():
    b = _batch()
    assert b.num_seqs == 4 and b.prompt_lens == [2, 2, 1, 1] and b.comp_lens == [3, 1, 2, 4]
    assert b.ids.tolist() == [5, 6, 10, 11, 12, 5, 6, 13, 7, 14, 15, 7, 16, 17, 18, 19]
    assert b.targets.tolist() == [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert b.seq_index.tolist() == [0, 0, 0, 1, 2, 2, 3, 3, 3, 3]
    # The hidden state at position t predicts token t + 1: a completion starts after its prompt's last token.
    assert b.pos.tolist() == [1, 2, 3, 1, 0, 1, 0, 1, 2, 3]
    assert b.mask.tolist() == [True] * 4 + [False] * 2 + [True] * 4
    assert b.group.tolist() == [0, 0, 1, 1] and b.lengths.tolist() == [3, 1, 2, 4]
    assert b.scores.tolist() == [1.0, 0.0, 1.0, 1.0] and b.shaping.tolist() == [0.5, 0.0, 0.0, -0.5]
    assert b.seq_sum(b.mask).tolist() == [3.0, 1.0, 0.0, 4.0]
    scale = b.loss_scale(8.0)
    assert (scale.tokens, scale.seqs, scale.constant) == (8, 3, 8.0)  # the masked sequence is no S' one


def test_micro_views_are_right_padded_and_cut_every_field():
    b = _batch()
    b.advantages = torch.tensor([0.1, 0.2, 0.3, 0.4])
    b.extras["old_logp"] = -torch.arange(10, dtype=torch.float32)
    first, second = list(b.micro(2))
    assert first.ids.tolist() == [[5, 6, 10, 11, 12], [5, 6, 13, 0, 0]]
    assert first.attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert first.seq_index.tolist() == [0, 0, 0, 1] and first.cols.tolist() == [1, 2, 3, 1]
    # ids[seq_index, cols + 1] are the targets: each gathered position predicts its target.
    assert first.ids[first.seq_index, first.cols + 1].tolist() == first.targets.tolist() == [10, 11, 12, 13]
    assert second.ids.tolist() == [[7, 14, 15, 0, 0], [7, 16, 17, 18, 19]]
    assert second.seq_index.tolist() == [0, 0, 1, 1, 1, 1] and second.cols.tolist() == [0, 1, 0, 1, 2, 3]
    assert second.mask.tolist() == [False, False, True, True, True, True] and second.tokens == 4
    assert second.advantages.tolist() == [0.30000001192092896, 0.4000000059604645]
    assert second.extras["old_logp"].tolist() == [-4.0, -5.0, -6.0, -7.0, -8.0, -9.0]
    assert [mb.ids.shape[0] for mb in b.micro(3)] == [3, 1]


def test_select_keeps_the_chosen_sequences_in_order():
    b = _batch()
    b.advantages, b.keep = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([True, False, False, True])
    b.extras["old_logp"] = -torch.arange(10, dtype=torch.float32)
    k = b.select(b.keep)
    assert k.num_seqs == 2 and k.prompt_lens == [2, 1] and k.comp_lens == [3, 4]
    assert k.ids.tolist() == [5, 6, 10, 11, 12, 7, 16, 17, 18, 19]
    assert k.seq_index.tolist() == [0, 0, 0, 1, 1, 1, 1] and k.pos.tolist() == [1, 2, 3, 0, 1, 2, 3]
    assert k.group.tolist() == [0, 1] and k.scores.tolist() == [1.0, 1.0] and k.shaping.tolist() == [0.5, -0.5]
    assert k.advantages.tolist() == [0.10000000149011612, 0.4000000059604645] and k.keep.all()
    assert k.extras["old_logp"].tolist() == [-0.0, -1.0, -2.0, -6.0, -7.0, -8.0, -9.0]
    (mb,) = k.micro(4)
    assert mb.ids.tolist() == [[5, 6, 10, 11, 12], [7, 16, 17, 18, 19]] and mb.tokens == 7
    empty = b.select(torch.zeros(4, dtype=torch.bool))
    assert empty.num_seqs == 0 and list(empty.micro(2)) == [] and empty.loss_scale(None).tokens == 0
