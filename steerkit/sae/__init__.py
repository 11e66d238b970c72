"""Sparse autoencoders: one `SAE` class at a recorded hook point, loaders for SAELens and GemmaScope files,
training (`train_sae`, `sae_metrics`) and splicing an SAE into the model (`SAESplice`, `spliced_loss`).

Design note: an SAE knows the residual hook point it was trained on (`SAEConfig.layer`, `.hook`); steering
with its decoder directions goes through `SAE.steering`, which refuses any other point.
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
