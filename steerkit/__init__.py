"""steerkit: trustworthy, reproducible LLM steering experiments tracked in MLflow."""

from steerkit.core.activations import ResidualCapture, last_token_residuals, token_residuals
from steerkit.core.generation import Generation, GenerationConfig, Prompt, generate, next_token_logits
from steerkit.core.models import LoadedModel, load_model
from steerkit.core.positions import ALL, GENERATED, PROMPT, Explicit, FromPattern, Pattern, Span
from steerkit.errors import SteerkitError
from steerkit.interventions import (
    AttentionCapture,
    AttentionEdit,
    AttentionRowPatch,
    DirectionAblation,
    ResidualAdd,
    ResidualPatch,
    steer,
)
from steerkit.sae import SAE, SAEConfig, load_sae
from steerkit.steer_eval import EvalResult, evaluate

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "GENERATED",
    "PROMPT",
    "AttentionCapture",
    "AttentionEdit",
    "AttentionRowPatch",
    "DirectionAblation",
    "EvalResult",
    "Explicit",
    "FromPattern",
    "Generation",
    "GenerationConfig",
    "LoadedModel",
    "Pattern",
    "Prompt",
    "ResidualAdd",
    "ResidualCapture",
    "ResidualPatch",
    "SAE",
    "SAEConfig",
    "Span",
    "SteerkitError",
    "__version__",
    "evaluate",
    "generate",
    "last_token_residuals",
    "load_model",
    "load_sae",
    "next_token_logits",
    "steer",
    "token_residuals",
]
