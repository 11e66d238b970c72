"""Entropy sources for sampling seeds (seed 004): do they change what a model writes?

`sources` (the entropy sources and counter-mode byte streams), `sampler` (a sampler driven by a byte stream),
`design` (the shared design: cells, seed and stream plans, generation), `stats` (paired tests, MixedLM, BH over a
declared family, power), `analysis` (the per-run hypothesis table), `reports` (figures).
"""
