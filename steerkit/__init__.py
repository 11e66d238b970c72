"""steerkit: trustworthy, reproducible LLM steering experiments tracked in MLflow."""

from steerkit.errors import SteerkitError
from steerkit.generation import Generation, GenerationConfig, Prompt, generate, next_token_logits
from steerkit.interventions import (
    AttentionCapture,
    AttentionEdit,
    DirectionAblation,
    ResidualAdd,
    steer,
)
from steerkit.models import LoadedModel, load_model
from steerkit.positions import ALL, GENERATED, PROMPT, Explicit, FromPattern, Pattern, Span

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "GENERATED",
    "PROMPT",
    "AttentionCapture",
    "AttentionEdit",
    "DirectionAblation",
    "Explicit",
    "FromPattern",
    "Generation",
    "GenerationConfig",
    "LoadedModel",
    "Pattern",
    "Prompt",
    "ResidualAdd",
    "Span",
    "SteerkitError",
    "__version__",
    "generate",
    "load_model",
    "next_token_logits",
    "steer",
]
