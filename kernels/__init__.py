"""Fused Triton kernels and their PyTorch twins (installed as lightrl.kernels)."""
from lightrl.kernels.logprobs import linear_logprobs
