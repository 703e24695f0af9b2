"""Fused Triton kernels and their PyTorch twins (installed as lightrl.kernels)."""
