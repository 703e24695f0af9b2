"""Micro-batching in the training loop: the summed micro-batch gradients are the whole batch's.

fused_policy_loss, given the whole batch's denominators (StepBatch.loss_scale), returns each
micro-batch's share of the batch's loss; train._backward runs one backward per micro-batch. For
every aggregate mode the gradient (and every logged metric) with micro_batch 1, 2 and "all" must
equal one call of the reference loss on the whole batch. Also: models whose logits are not
hidden @ lm_head.weight.T are refused.
"""
import pytest
import torch

from lightrl import tiny
from lightrl.algos import ALGOS
from lightrl.batch import StepBatch
from lightrl.config import Config
from lightrl.model import Policy
from lightrl.train import _backward

TEMPERATURE = 0.7
LOSS_CONSTANT = 12.0  # the loop passes max_new_tokens for token_sum_norm


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = tiny.build_tokenizer()
    model = tiny.build_model(tok, seed=0, hidden=32, layers=1)
    v = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    lens = [5, 1, 9, 3, 7, 2, 11, 4]  # very different lengths: token- and sequence-level weights differ
    groups = [(torch.randint(3, v, (3 + i,), generator=g).tolist(),
               [torch.randint(3, v, (n,), generator=g).tolist() for n in lens[4 * i:4 * i + 4]], [0.0] * 4, [0.0] * 4)
              for i in range(2)]
    counts = [True] * 8
    counts[2] = False  # masked as truncated: no mask token, so it must not count as a sequence
    batch = StepBatch.build(groups, counts, "cpu")
    batch.advantages = torch.tensor([1.5, -0.7, 2.0, 0.0, -1.2, 0.8, -0.3, 1.1])
    # Old / ref log-probs = current ones shifted by fixed per-token offsets: ratios spread out, some clip.
    off = torch.cat([torch.randn(n, generator=g) for n in lens])
    lp = _policy(model, "torch").logprobs(model, batch, 8)
    return model, batch, lp + 0.4 * off, lp - 0.5 * torch.cos(3 * off)


def _policy(model, backend):
    return Policy(tokenizer=None, model=model, ref_model=None, init_path="", encode=None, stop_ids=[], amp_dtype=None,
                  temperature=TEMPERATURE, backend=backend)


def _grads(model, row, micro_batch, setup_, backend):
    _, batch, old_logp, ref_logp = setup_
    batch.extras = {}
    if row.needs_old_logp:
        batch.extras["old_logp"] = old_logp
    if row.kl_in_loss:
        batch.extras["ref_logp"] = ref_logp
    policy = _policy(model, backend)
    cfg = Config(micro_batch=micro_batch, temperature=TEMPERATURE, backend=backend, progress=False)
    model.zero_grad(set_to_none=True)
    loss, metrics, _ = _backward(policy, batch, batch.loss_scale(LOSS_CONSTANT), cfg, row)
    return loss, metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


ROWS = {
    **{f"grpo-{agg}": ALGOS["grpo"].with_overrides(aggregate=agg, entropy_coef=0.01)
       for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "token_sum_norm")},
    "gspo": ALGOS["gspo"],            # sequence-level ratio: the generic (four-GEMM) path
    "cispo": ALGOS["cispo"],
    "dr-grpo": ALGOS["dr-grpo"].with_overrides(dual_clip=3.0),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_micro_batches_sum_to_the_whole_batch(name, setup):
    model, batch, _, _ = setup
    row = ROWS[name]
    # Ground truth: one call of the reference loss on the whole batch (share 1).
    loss_ref, metrics_ref, grads_ref = _grads(model, row, batch.num_seqs, setup, "reference")
    assert metrics_ref["clip_frac_low"] + metrics_ref["clip_frac_high"] > 0 or row.ratio == "sequence"
    assert abs(loss_ref) > 1e-4
    for mb_size in (1, 2, 3, batch.num_seqs):
        loss, metrics, grads = _grads(model, row, mb_size, setup, "torch")
        assert loss == pytest.approx(loss_ref, rel=1e-5, abs=1e-6), mb_size
        assert metrics.keys() == metrics_ref.keys()
        for k in metrics:
            assert metrics[k] == pytest.approx(metrics_ref[k], rel=1e-5, abs=1e-6), (mb_size, k)
        assert grads.keys() == grads_ref.keys()
        for k in grads:
            torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-6, msg=f"{mb_size} {k}")


def test_models_whose_logits_are_not_a_plain_lm_head_are_refused():
    from lightrl.model import check_plain_lm_head
    tok = tiny.build_tokenizer()
    model = tiny.build_model(tok, seed=0, hidden=16, layers=1)
    check_plain_lm_head(model, "tiny")  # tied, no bias, no scaling: fine
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        check_plain_lm_head(model, "m")
    model.config.final_logit_softcapping = None
    model.config.logit_scale = 0.0625
    with pytest.raises(ValueError, match="logit_scale=0.0625"):
        check_plain_lm_head(model, "m")
    model.config.logit_scale = 1.0
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    with pytest.raises(ValueError, match="lm_head has a bias"):
        check_plain_lm_head(model, "m")
