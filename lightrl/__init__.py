"""lightrl: RL from verifiable rewards with fused Triton loss kernels."""
