"""Sections of the evaluation stages: compare (and its winner rule), threshold and evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CompareParams", "EvaluateParams", "Recalibration", "ThresholdParams", "WinnerRule"]

Recalibration = Literal["none", "temperature", "platt", "isotonic"]


@dataclass(frozen=True)
class WinnerRule:
    """How the winner is chosen (see the module docstring).

    Attributes:
        primary: column compared first.
        higher_is_better: direction of ``primary``.
        tie_tolerance: candidates within this absolute distance of the best primary are tied.
        tie_breaker: column that decides among tied candidates.
        tie_breaker_higher_is_better: direction of ``tie_breaker``.
    """

    primary: str = "val_auroc"
    higher_is_better: bool = True
    tie_tolerance: float = 0.005
    tie_breaker: str = "val_ece"
    tie_breaker_higher_is_better: bool = False


@dataclass(frozen=True)
class CompareParams:
    """How candidates are recalibrated and measured on val, and the rule that picks the winner."""

    recalibrate_finetuned: Recalibration = "temperature"
    recalibrate_transfer: Recalibration = "platt"
    calibration_folds: int = 5  # patient folds of val for out-of-fold calibrated metrics
    n_boot: int = 1000
    n_bins: int = 15
    winner: WinnerRule = field(default_factory=WinnerRule)


@dataclass(frozen=True)
class ThresholdParams:
    """The operating point, chosen on val for the winner."""

    policy: Literal["target_sensitivity", "target_specificity", "youden", "min_cost"] = (
        "target_sensitivity"
    )
    target_sensitivity: float = 0.95
    target_specificity: float = 0.9
    require_ci: bool = False  # target_sensitivity: the CI lower bound must reach the target
    cost_fn: float = 10.0  # min_cost: cost of a missed abnormal study
    cost_fp: float = 1.0  # min_cost: cost of a normal study sent for reading
    n_boot: int = 1000


@dataclass(frozen=True)
class EvaluateParams:
    """The single read of the test split."""

    n_boot: int = 1000
    min_slice_count: int = 20  # slices smaller than this are reported but not ranked for gaps
