"""Fused Triton kernels and their PyTorch twins (installed as lightrl.kernels)."""
from lightrl.kernels.logprobs import linear_logprobs
from lightrl.kernels.advantage import group_advantages
from lightrl.kernels.policy_loss import policy_loss
