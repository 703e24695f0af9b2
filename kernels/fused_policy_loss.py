"""fused_policy_loss: the RL loss straight from hidden states and the lm_head weight.

Log-probs (and entropy when the row has an entropy term) come from the fused
log-prob primitives (logprobs_triton / logprobs_torch), never as [N, V] logits;
d loss / d logp is closed-form (policy_loss_torch.py), so it is fed straight into
the log-prob backward:
  generic path (every row, every fused backend): forward pass over the vocabulary ->
    loss and d loss / d logp -> backward pass (recomputed logits, d hidden, d weight):
    four GEMMs of N x D x V;
  torch backend, token-level rows: each chunk's gradients are finished in the forward,
    three GEMMs (fused_policy_loss_torch.py).
"""
import torch

from lightrl.kernels import fused_policy_loss_torch, logprobs_torch, policy_loss_torch
from lightrl.kernels.backend import resolve_backend
from lightrl.kernels.logprobs import check_logprob_inputs, logprob_impl
from lightrl.kernels.policy_loss import LossScale, apply_scale, check_inputs, policy_impl, select_by_entropy


class _FusedPolicyLoss(torch.autograd.Function):
    """Generic path: log-prob forward, loss with closed-form d loss / d logp, log-prob backward."""

    @staticmethod
    def forward(ctx, lp_impl, pl_impl, hidden, weight, targets, old_logp, ref_logp, adv_tok, mask, seq_index,
                num_seqs, row, temperature, loss_constant, cutoff):
        want_entropy = row.entropy_coef != 0 or row.selects_by_entropy
        logp, entropy, lse = lp_impl.logprobs_forward(hidden, weight, targets, temperature, want_entropy)
        adv_tok = select_by_entropy(adv_tok, entropy, mask, row, cutoff)
        loss, grad_logp, grad_ent, parts = pl_impl.policy_loss_terms(
            logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, loss_constant)
        empty = lse.new_zeros(0)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy if grad_ent is not None else empty, grad_logp,
                              grad_ent if grad_ent is not None else empty)
        ctx.lp_impl, ctx.temperature = lp_impl, temperature
        ctx.mark_non_differentiable(parts)
        return loss, parts

    @staticmethod
    def backward(ctx, grad_loss, _grad_parts):
        hidden, weight, targets, lse, entropy, grad_logp, grad_ent = ctx.saved_tensors
        g_ent = grad_ent * grad_loss if grad_ent.numel() else None
        grad_hidden, grad_weight = ctx.lp_impl.logprobs_backward(
            hidden, weight, targets, ctx.temperature, lse, entropy if g_ent is not None else None,
            grad_logp * grad_loss, g_ent, want_grad_weight=ctx.needs_input_grad[3])
        return (None, None, grad_hidden, grad_weight) + (None,) * 11


class _FusedTokenLevelTorch(torch.autograd.Function):
    """Torch backend, token-level rows: gradients finished in the forward (three GEMMs)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, old_logp, ref_logp, adv_tok, mask, seq_index, num_seqs, row,
                temperature, loss_constant, cutoff):
        loss, parts, grad_hidden, grad_weight = fused_policy_loss_torch.fused_token_level(
            hidden, weight, targets, old_logp, ref_logp, adv_tok, mask, seq_index, num_seqs, row, temperature,
            loss_constant, want_grad_weight=ctx.needs_input_grad[1], entropy_cutoff=cutoff)
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else grad_hidden.new_zeros(0))
        ctx.has_gw = grad_weight is not None
        ctx.mark_non_differentiable(parts)
        return loss, parts

    @staticmethod
    def backward(ctx, grad_loss, _grad_parts):
        grad_hidden, grad_weight = ctx.saved_tensors
        gw = grad_weight if ctx.has_gw else None
        if bool(grad_loss != 1):  # the usual loss.backward() needs no pass over [V, D]
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
            gw = gw * grad_loss.to(gw.dtype) if gw is not None else None
        return (grad_hidden, gw) + (None,) * 11


def fused_policy_loss(hidden, weight, targets, old_logp, ref_logp, advantages, mask, seq_index, row, *,
                      temperature=1.0, scale=None, backend="auto"):
    """policy_loss of ``row`` with log-probs of targets under softmax(hidden @ weight.T / temperature).

    hidden [N, D], weight [V, D] (same dtype: fp32, bf16 or fp16), targets [N] int64
    (-100 = no target: logp 0, no gradient); old_logp, ref_logp, advantages, mask,
    seq_index and scale as in lightrl.kernels.policy_loss (entropy is computed
    here in the same forward when row.entropy_coef != 0 or row.entropy_top_frac < 1, which
    then selects the tokens by scale.entropy_cutoff; entropy_mean is 0 otherwise).
    Returns (loss 0-d f32, metrics dict); differentiable w.r.t. hidden and weight.
    backend: "auto" | "triton" | "torch" | "reference" (materialises the logits).
    """
    check_logprob_inputs(hidden, weight, targets, temperature)
    n = hidden.shape[0]
    scale = scale or LossScale()
    num_seqs, adv_tok, old_logp, ref_logp = check_inputs(n, old_logp, ref_logp, advantages, mask, seq_index, row,
                                                         None, scale, entropy_from_caller=False)
    temperature, loss_constant = float(temperature), scale.constant
    name = resolve_backend(backend, hidden.device)
    cutoff = scale.entropy_cutoff
    if name == "reference":
        want_entropy = row.entropy_coef != 0 or row.selects_by_entropy
        out = logprobs_torch.reference_linear_logprobs(hidden, weight, targets, temperature, want_entropy)
        logp, entropy = out if want_entropy else (out, None)
        adv_tok = select_by_entropy(adv_tok, entropy, mask, row, cutoff)
        loss, metrics = policy_loss_torch.reference_policy_loss(
            logp, old_logp, ref_logp, adv_tok, mask, seq_index, entropy, num_seqs, row, loss_constant)
    else:
        # The chunked torch path finishes each chunk before it sees the next one's entropy, so it
        # needs the cutoff up front; without one (the call's own) the generic path computes it.
        chunked = row.ratio != "sequence" and (cutoff is not None or not row.selects_by_entropy)
        if name == "torch" and chunked:
            loss, parts = _FusedTokenLevelTorch.apply(hidden, weight, targets, old_logp, ref_logp, adv_tok, mask,
                                                      seq_index, num_seqs, row, temperature, loss_constant, cutoff)
        else:
            loss, parts = _FusedPolicyLoss.apply(logprob_impl(name), policy_impl(name), hidden, weight, targets,
                                                 old_logp, ref_logp, adv_tok, mask, seq_index, num_seqs, row,
                                                 temperature, loss_constant, cutoff)
        metrics = policy_loss_torch.finish_metrics(parts)
    return apply_scale(loss, mask, seq_index, num_seqs, row, scale), metrics
