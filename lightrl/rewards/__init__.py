"""Reward functions: math (answer verifier), code (sandboxed tests), rules (format, overlong), and
combined (the training score: weighted --reward terms, including your own module:function)."""
