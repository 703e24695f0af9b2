"""Fused Triton kernels and their PyTorch twins (installed as lightrl.kernels)."""
from lightrl.kernels.logprobs import linear_logprobs
from lightrl.kernels.advantage import group_advantages, pair_coefficients, rollout_weights, token_advantages
from lightrl.kernels.policy_loss import LossScale, entropy_cutoff, merge_metrics, policy_loss
from lightrl.kernels.fused_policy_loss import fused_policy_loss
from lightrl.kernels.gae import gae
