"""Micro-batching in the training loop: the summed micro-batch gradients are the whole batch's.

fused_policy_loss aggregates within the tokens it is given; train.accumulate_gradients scales
each micro-batch's loss by its share of the batch's denominator. For every aggregate mode the
gradient (and every logged metric) with micro_batch 1, 2 and "all" must equal one call of the
reference loss on the whole batch. Also: models whose logits are not hidden @ lm_head.weight.T
are refused.
"""
import pytest
import torch

from lightrl import tiny
from lightrl.algos import ALGOS
from lightrl.kernels import LossScale, fused_policy_loss, linear_logprobs
from lightrl.train import _micro_batch, _to_batch, accumulate_gradients

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
    groups = [{"prompt": torch.randint(3, v, (3 + i,), generator=g).tolist(),
               "comps": [torch.randint(3, v, (n,), generator=g).tolist() for n in lens[4 * i:4 * i + 4]]}
              for i in range(2)]
    truncated = [False] * 8
    truncated[2] = True  # masked as truncated: no mask token, so it must not count as a sequence
    batch = _to_batch(groups, truncated, mask_truncated=True)
    adv = torch.tensor([1.5, -0.7, 2.0, 0.0, -1.2, 0.8, -0.3, 1.1])
    # Per-token old / ref log-prob offsets, fixed per (sequence, position) so every split sees the same.
    offsets = [torch.randn(len(s["comp"]), generator=g) for s in batch]
    return model, batch, adv, offsets


def _with_inputs(mb, model, adv, offsets, row):
    """Old / ref log-probs = current ones shifted by fixed offsets: ratios spread out, some clip."""
    mb["adv"] = adv[mb["seq_ids"]]
    w = model.get_output_embeddings().weight
    with torch.no_grad():
        lp = linear_logprobs(_hidden(model, mb), w, mb["targets"], temperature=TEMPERATURE)
    off = torch.cat([offsets[i] for i in mb["seq_ids"].tolist()] + [torch.zeros(0)])
    if row.needs_old_logp:
        mb["old_logp"] = lp + 0.4 * off
    if row.kl_in_loss:
        mb["ref_logp"] = lp - 0.5 * torch.cos(3 * off)
    return mb


def _hidden(model, mb):
    out = model.get_decoder()(input_ids=mb["ids"], attention_mask=mb["attn"], use_cache=False)
    return out.last_hidden_state[mb["rows"], mb["cols"]]


def _grads(model, row, micro_batch, setup_, backend):
    _, batch, adv, offsets = setup_
    seqs = list(range(len(batch)))
    micro = [_with_inputs(_micro_batch(batch, seqs[i:i + micro_batch], "cpu"), model, adv, offsets, row)
             for i in range(0, len(seqs), micro_batch)]
    totals = {"tokens": sum(int(mb["mask"].sum()) for mb in micro), "seqs": sum(mb["nonempty"] for mb in micro)}
    w = model.get_output_embeddings().weight

    def loss_of(mb):
        return fused_policy_loss(_hidden(model, mb), w, mb["targets"], mb.get("old_logp"), mb.get("ref_logp"),
                                 mb["adv"], mb["mask"], mb["seq_index"], row, temperature=TEMPERATURE,
                                 scale=LossScale(constant=LOSS_CONSTANT), backend=backend)

    model.zero_grad(set_to_none=True)
    loss, metrics = accumulate_gradients(micro, row, totals, loss_of)
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
    loss_ref, metrics_ref, grads_ref = _grads(model, row, len(batch), setup, "reference")
    assert metrics_ref["clip_frac_low"] + metrics_ref["clip_frac_high"] > 0 or row.ratio == "sequence"
    assert abs(loss_ref) > 1e-4
    for mb_size in (1, 2, 3, len(batch)):
        loss, metrics, grads = _grads(model, row, mb_size, setup, "torch")
        assert loss == pytest.approx(loss_ref, rel=1e-5, abs=1e-6), mb_size
        assert metrics.keys() == metrics_ref.keys()
        for k in metrics:
            assert metrics[k] == pytest.approx(metrics_ref[k], rel=1e-5, abs=1e-6), (mb_size, k)
        assert grads.keys() == grads_ref.keys()
        for k in grads:
            torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-6, msg=f"{mb_size} {k}")


def test_models_whose_logits_are_not_a_plain_lm_head_are_refused():
    from lightrl.train import check_plain_lm_head
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
