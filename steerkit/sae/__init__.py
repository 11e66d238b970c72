"""Sparse autoencoders: one `SAE` class at a recorded hook point, loaders for SAELens and GemmaScope files,
training (`train_sae`, `sae_metrics`) and splicing an SAE into the model (`SAESplice`, `spliced_loss`).

Design note: an SAE knows the residual hook point it was trained on (`SAEConfig.layer`, `.hook`); steering
with its decoder directions goes through `SAE.steering`, which refuses any other point.

Modules: `model`, `loaders` (file formats, read and write), `data` (training text windows), `train`, `fit`
(training from an entry point's parameters), `splice`; the steering pipeline of seed 001: `codegen` (generate and
run MBPP solutions), `pipeline` (what each phase writes and the next reads), `discovery` (features that separate
correct from incorrect), `features` (their tests and the coefficient rule), `arms`, `selection`, `evaluation`,
`reports` (figures).
"""

from steerkit.sae.loaders import load_gemmascope_npz, load_sae, load_saelens, save_saelens
from steerkit.sae.model import ACTIVATIONS, SAE, Activation, SAEConfig, hook_name, parse_hook_name
from steerkit.sae.splice import FromToken, SAESplice, spliced_loss
from steerkit.sae.train import TrainConfig, sae_metrics, train_sae

__all__ = [
    "ACTIVATIONS",
    "FromToken",
    "SAE",
    "Activation",
    "SAEConfig",
    "SAESplice",
    "TrainConfig",
    "hook_name",
    "load_gemmascope_npz",
    "load_sae",
    "load_saelens",
    "parse_hook_name",
    "sae_metrics",
    "save_saelens",
    "spliced_loss",
    "train_sae",
]
