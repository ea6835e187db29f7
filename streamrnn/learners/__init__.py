"""How a gradient is obtained: one module per learner, all compiled kernels."""
