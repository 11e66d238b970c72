"""What every experiment stands on: models and their sources, positions, the attention backend, generation,
activations, the identity check, seeds and record logs.

`models` (LoadedModel, load_model), `sources` (embedded GGUF, .gguf, Hugging Face, tiny models), `attention_backend`
(steerkit's attention function in transformers' registry), `positions` (token selectors), `generation` (batched
generation and next-token logits under interventions), `activations` (residual capture), `checks` (the identity
control), `seeds` (the one seed derivation), `records` (the record-log protocol library code writes to).
"""
