"""Sections of the evaluation stages: compare (and its winner rule), threshold and evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cxr_triage.errors import ConfigError

__all__ = [
    "SELECTION_RULES",
    "CompareParams",
    "EnsembleParams",
    "EvaluateParams",
    "Recalibration",
    "ThresholdParams",
    "WinnerRule",
]

Recalibration = Literal["none", "temperature", "platt", "isotonic"]


SELECTION_RULES = ("one_se", "paired_se", "tolerance")


@dataclass(frozen=True)
class WinnerRule:
    """How the winner is chosen from the cross-validated comparison (see
    :mod:`cxr_triage.evaluation.compare`).

    Attributes:
        primary: column compared first (``cv_auroc``: mean over repeats of the pooled
            out-of-fold AUROC over train+val).
        higher_is_better: direction of ``primary``.
        rule: ``one_se`` (Breiman et al. 1984): every candidate within ``se_multiplier``
            patient-bootstrap standard errors of the best candidate's estimate is tied with it;
            ``paired_se``: every candidate whose gap to the best is within ``se_multiplier``
            paired-bootstrap standard errors of that gap (a paired test: narrower when the
            candidates err on the same images); ``tolerance``: within ``tie_tolerance``.
        se_multiplier: width of the ``one_se``/``paired_se`` band in standard errors.
        tie_tolerance: the ``tolerance`` rule's band.
        tie_breaker: column that decides among tied candidates (``complexity``: the simplest
            model, ranked in ``cxr_triage.evaluation.compare.COMPLEXITY``).
        tie_breaker_higher_is_better: direction of ``tie_breaker``.
    """

    primary: str = "cv_auroc"
    higher_is_better: bool = True
    rule: Literal["one_se", "paired_se", "tolerance"] = "one_se"
    se_multiplier: float = 1.0
    tie_tolerance: float = 0.0
    tie_breaker: str = "complexity"
    tie_breaker_higher_is_better: bool = False


@dataclass(frozen=True)
class EnsembleParams:
    """Ensembles of the best candidates, scored by the same protocol (they win only by the rule).

    Attributes:
        sizes: ensemble sizes to build (the top-k eligible candidates by ``cv_auroc``); an
            empty list builds none.
        include_finetuned: whether the fine-tuned network may be a member.
    """

    sizes: list[int] = field(default_factory=lambda: [3])
    include_finetuned: bool = True


@dataclass(frozen=True)
class CompareParams:
    """The comparison protocol: repeated patient-grouped CV over train+val, recalibration from
    out-of-fold predictions, the winner rule, ensembles and the selection's optimism.

    Attributes:
        cv_folds: patient-grouped, label-stratified folds of train+val.
        cv_repeats: repeats of the frozen-feature candidates' CV (new fold assignment each).
        recalibrate_finetuned: calibrator of the fine-tuned network.
        recalibrate_transfer: calibrator of the frozen-feature candidates and ensembles.
        calibration_folds: patient folds for cross-fitting the calibrators on out-of-fold scores.
        n_boot: patient-bootstrap resamples (CIs, paired standard errors, BBC-CV).
        n_bins: reliability bins for the ECE.
        nested: run nested CV of the frozen-feature candidates and ensembles (the whole
            selection repeated inside each outer fold) beside BBC-CV.
        nested_inner_folds: inner folds of the nested CV.
        metadata_baseline: score the metadata-only shortcut baseline (never a winner).
        fold_pretraining_repeats: for this many of the first CV repeats, re-run the backbone's
            finding-label pretraining inside each outer fold and re-score the zoo on those
            features: the CV estimate without the backbone's label leak (0 = off; needs a
            backbone pretrained here, ``backbone.weights: null``).
        winner: the rule.
        ensemble: the ensembles.
    """

    cv_folds: int = 5
    cv_repeats: int = 3
    recalibrate_finetuned: Recalibration = "temperature"
    recalibrate_transfer: Recalibration = "platt"
    calibration_folds: int = 5
    n_boot: int = 1000
    n_bins: int = 15
    nested: bool = True
    nested_inner_folds: int = 4
    metadata_baseline: bool = True
    fold_pretraining_repeats: int = 1
    winner: WinnerRule = field(default_factory=WinnerRule)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)

    def __post_init__(self) -> None:
        if self.cv_folds < 2 or self.nested_inner_folds < 2:
            raise ConfigError("compare.cv_folds and compare.nested_inner_folds must be >= 2")
        if self.cv_repeats < 1:
            raise ConfigError(f"compare.cv_repeats must be >= 1, got {self.cv_repeats}")
        if not 0 <= self.fold_pretraining_repeats <= self.cv_repeats:
            raise ConfigError(
                "compare.fold_pretraining_repeats must be between 0 (off) and compare.cv_repeats"
                f" ({self.cv_repeats}), got {self.fold_pretraining_repeats}"
            )
        if any(k < 2 for k in self.ensemble.sizes):
            raise ConfigError("compare.ensemble.sizes: an ensemble needs >= 2 members")
        if self.winner.se_multiplier < 0 or self.winner.tie_tolerance < 0:
            raise ConfigError("compare.winner se_multiplier and tie_tolerance must be >= 0")


@dataclass(frozen=True)
class ThresholdParams:
    """The operating point, chosen on the winner's out-of-fold (train+val) scores."""

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
