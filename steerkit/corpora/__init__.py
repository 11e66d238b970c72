"""Corpora: the one file reader (`loader`) and one typed module per corpus in `corpus/`.

`prompts` (the n=50 Rust prompts and the entropy prompts), `attention_pairs` (Python/Rust test-marker items),
`doctests` (Python doctest prompts), `mbpp` (MBPP problems and complexity-stratified splits), `refusal` (harmful
and benign prompt sets).
"""
