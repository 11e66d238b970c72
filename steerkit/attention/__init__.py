"""Attention steering and analysis (seeds 000 and 002): one module per experiment step.

`edge_rules` (named edge sets), `measure` (captured marker -> target attention), `layers` (Python vs Rust per
layer), `dose` (the scale that reaches the Python level), `steer` (generation at set attention shares), `n50`
(seed 000's n=50 generation experiment and its scale-search objectives), `knockout`, `knockout_sweep`,
`knockout_generation`, `patching`, `patch_sweep`, scoring (`doctest_scoring`, `rust_quality`), `stats`, `reports`
(figures). No MLflow here: scripts pass record logs and callbacks.
"""
