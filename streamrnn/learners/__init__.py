"""How a gradient is obtained: one module per learner, all compiled kernels.

:mod:`.registry` maps each online learner's name to its spec (per-key arrays, workspace, kernels);
a learner module registers itself, so a new learner is one new file here.
"""
