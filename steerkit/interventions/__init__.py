"""Interventions: one module per kind, applied by the `steer()` context manager.

Each is a small frozen dataclass; `INTERVENTIONS` maps a string (an MLflow/Optuna parameter) to its class.
"""

from steerkit.interventions.attention import AttentionCapture, AttentionEdit, CapturedAttention
from steerkit.interventions.base import SteerState, steer
from steerkit.interventions.patching import AttentionRowPatch, ResidualPatch
from steerkit.interventions.residual import DirectionAblation, ResidualAdd

INTERVENTIONS = {
    "residual_add": ResidualAdd,
    "direction_ablation": DirectionAblation,
    "attention_edit": AttentionEdit,
    "attention_capture": AttentionCapture,
}

__all__ = [
    "INTERVENTIONS",
    "AttentionCapture",
    "AttentionEdit",
    "AttentionRowPatch",
    "CapturedAttention",
    "DirectionAblation",
    "ResidualAdd",
    "ResidualPatch",
    "SteerState",
    "steer",
]
