"""The promotion gate: does a retrained package replace the serving one?

Both packages score the same frozen test set (``promote.frozen_test_dir``): labelled images that
never enter training, with patients disjoint from the training data (checked; a shared patient
raises :class:`~cxr_triage.errors.LeakageError`). The candidate is promoted only if both hold:

1. non-inferiority of discrimination: the lower bound of the patient-bootstrap
   ``1 - promote.alpha`` CI of the paired difference (candidate AUROC - serving AUROC) is at
   least ``-promote.max_auroc_drop``;
2. the candidate's own threshold still works on the frozen set: sensitivity at it is at least
   ``promote.min_sensitivity``.

With nothing serving yet, the candidate is promoted. The decision, each check with its value and
limit, and the evidence (AUROCs, CI, sensitivity, counts) go into the promotion record and the
notification.

For the synthetic default, :func:`make_synthetic_frozen_set` generates the frozen set: the
``synth.sites`` presets with ``promote.frozen_test_seed`` (distinct from ``seed``) and patient IDs
renamed ``SYNFROZEN-...`` so that they can never coincide with training patients.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_triage.atomic import atomic_dir
from cxr_triage.config import Params, PromoteParams
from cxr_triage.data.deid import Pseudonymiser, salt_from_env
from cxr_triage.data.ingest import Reject, read_item
from cxr_triage.data.preprocess import prepare_image
from cxr_triage.data.sources import discover
from cxr_triage.errors import ConfigError, DataError, LeakageError
from cxr_triage.evaluation.metrics import auroc, binary_metrics_at_threshold, bootstrap_ci
from cxr_triage.io.records import ImageLimits
from cxr_triage.vocabulary import ABNORMAL, NORMAL

__all__ = [
    "FrozenTestSet",
    "GateCheck",
    "GateDecision",
    "check_frozen_set_disjoint",
    "decide_on_scores",
    "evaluate_candidate",
    "load_frozen_set",
    "make_synthetic_frozen_set",
]

log = logging.getLogger(__name__)
FROZEN_PATIENT_PREFIX = "SYNFROZEN-"


@dataclass(frozen=True)
class GateCheck:
    """One rule of the gate: its value on the frozen set, its limit, and the outcome."""

    name: str
    value: float
    limit: float
    passed: bool
    detail: str


@dataclass
class GateDecision:
    """The gate's verdict.

    Attributes:
        status: ``promoted``, ``rejected`` or ``unchanged`` (the candidate already serves).
        reason: one line for people, naming the failed check(s).
        candidate_tag: the candidate's model tag.
        serving_tag: the tag serving before the decision (None: nothing served).
        checks: each rule with value, limit and outcome.
        evidence: AUROCs, the paired-difference CI, sensitivity, counts, the frozen set, the rule.
    """

    status: str
    reason: str
    candidate_tag: str | None = None
    serving_tag: str | None = None
    checks: list[GateCheck] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["promoted"] = self.promoted
        return out

    def one_line(self) -> str:
        """``PROMOTED cxr-triage:abc (serving was cxr-triage:def): <reason>``."""
        was = f" (serving was {self.serving_tag})" if self.serving_tag else ""
        return f"{self.status.upper()} {self.candidate_tag}{was}: {self.reason}"


def _paired_auroc_difference(
    y_true: np.ndarray,
    serving_score: np.ndarray,
    candidate_score: np.ndarray,
    groups: np.ndarray,
    n_boot: int,
    seed: int,
    alpha: float,
) -> Any:
    """Patient-bootstrap CI of AUROC(candidate) - AUROC(serving), both on the same resamples."""

    def difference(y: np.ndarray, rows: np.ndarray) -> float:
        # `bootstrap_ci` resamples (y_true, y_score) pairs; passing row numbers as the "score"
        # lets one resample index both packages' scores, which keeps the difference paired.
        index = rows.astype(np.intp)
        return auroc(y, candidate_score[index]) - auroc(y, serving_score[index])

    rows = np.arange(y_true.size, dtype=float)
    return bootstrap_ci(difference, y_true, rows, groups, n_boot=n_boot, seed=seed, alpha=alpha)


def decide_on_scores(
    y_true: Any,
    serving_score: Any,
    candidate_score: Any,
    groups: Any,
    *,
    candidate_threshold: float,
    rule: PromoteParams,
    seed: int = 0,
) -> GateDecision:
    """Apply the gate's rule to both packages' probabilities on the frozen set.

    Args:
        y_true: 0/1 labels of the frozen set (1 = abnormal).
        serving_score: the serving package's probabilities.
        candidate_score: the candidate's probabilities, same rows.
        groups: patient of each row (the bootstrap resamples patients).
        candidate_threshold: the candidate's operating threshold.
        rule: ``promote`` parameters (margin, sensitivity floor, resamples, alpha).
        seed: seed of the resampling.

    Returns:
        ``promoted`` or ``rejected`` with the checks and evidence (tags are set by the caller).
    """
    y = np.asarray(y_true, dtype=float)
    serving = np.asarray(serving_score, dtype=float)
    candidate = np.asarray(candidate_score, dtype=float)
    groups = np.asarray(groups)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise DataError(
            f"the frozen test set has only {NORMAL if n_pos == 0 else ABNORMAL} images "
            f"({y.size}); it needs both classes to compare AUROCs: add the other class"
        )
    diff = _paired_auroc_difference(y, serving, candidate, groups, rule.n_boot, seed, rule.alpha)
    at_threshold = binary_metrics_at_threshold(y, candidate, candidate_threshold)
    coverage = f"{100 * (1 - rule.alpha):g}%"
    checks = [
        GateCheck(
            name="auroc_non_inferiority",
            value=float(diff.low),
            limit=-rule.max_auroc_drop,
            passed=bool(math.isfinite(diff.low) and diff.low >= -rule.max_auroc_drop),
            detail=f"{coverage} CI lower bound of AUROC difference {diff.low:+.4f} "
            f"(estimate {diff.estimate:+.4f}) vs margin {-rule.max_auroc_drop:+.4f}",
        ),
        GateCheck(
            name="sensitivity_at_threshold",
            value=float(at_threshold["sensitivity"]),
            limit=rule.min_sensitivity,
            passed=bool(at_threshold["sensitivity"] >= rule.min_sensitivity),
            detail=f"sensitivity {at_threshold['sensitivity']:.3f} at the candidate's threshold "
            f"{candidate_threshold:.4f} vs floor {rule.min_sensitivity:.3f}",
        ),
    ]
    failed = [c for c in checks if not c.passed]
    reason = (
        "; ".join(f"failed {c.name}: {c.detail}" for c in failed)
        if failed
        else "passed: " + "; ".join(c.detail for c in checks)
    )
    evidence = {
        "serving_auroc": auroc(y, serving),
        "candidate_auroc": auroc(y, candidate),
        "auroc_difference": diff.to_dict(),
        "candidate_threshold": float(candidate_threshold),
        "candidate_at_threshold": at_threshold,
        "n_images": int(y.size),
        "n_positive": n_pos,
        "n_patients": int(pd.Series(groups).nunique()),
        "rule": asdict(rule),
    }
    return GateDecision(
        status="rejected" if failed else "promoted", reason=reason, checks=checks,
        evidence=evidence,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# the frozen test set
# --------------------------------------------------------------------------------------------


@dataclass
class FrozenTestSet:
    """The frozen set, decoded once and prepared at each package's input size.

    Attributes:
        y_true: 0/1 labels.
        patient_id: keyed pseudonyms (same key as the ``ingest`` stage).
        images: ``{image_size: uint8 (N, S, S)}``.
        rejects: files that could not be used, with reasons.
    """

    y_true: np.ndarray
    patient_id: np.ndarray
    images: dict[int, np.ndarray]
    rejects: list[dict[str, str]]


def load_frozen_set(
    frozen_dir: str | os.PathLike[str],
    source: str,
    image_sizes: set[int],
    *,
    salt: str,
    limits: ImageLimits = ImageLimits(),
    min_images: int = 1,
) -> FrozenTestSet:
    """Read, check and prepare the frozen test set (the ``ingest`` readers and pseudonyms).

    Raises:
        ConfigError: the folder is missing (the message says how to create it).
        DataError: fewer than ``min_images`` usable labelled images.
    """
    frozen_dir = Path(frozen_dir)
    if not frozen_dir.is_dir():
        raise ConfigError(
            f"frozen test set {frozen_dir} does not exist; create it (synthetic default: "
            "`python -m flows.retraining --make-frozen-test-set`) or set promote.frozen_test_dir"
        )
    discovery = discover(source, frozen_dir)
    pseudonymiser = Pseudonymiser(salt)
    y, patients, rejects = [], [], list(discovery.rejects)
    images: dict[int, list[np.ndarray]] = {size: [] for size in image_sizes}
    for item in discovery.items:
        outcome = read_item(item, pseudonymiser=pseudonymiser, limits=limits, require_label=True)
        if isinstance(outcome, Reject):
            rejects.append(outcome.to_dict())
            continue
        patients.append(outcome.fields["patient_id"])
        y.append(int(outcome.fields["label"] == ABNORMAL))
        for size in image_sizes:
            images[size].append(prepare_image(outcome.image.pixels, size))
    if len(y) < min_images:
        raise DataError(
            f"the frozen test set {frozen_dir} has {len(y)} usable labelled images, fewer than "
            f"promote.min_images={min_images}; add images (rejects: {rejects[:3]})"
        )
    return FrozenTestSet(
        y_true=np.asarray(y),
        patient_id=np.asarray(patients),
        images={size: np.stack(arrays) for size, arrays in images.items()},
        rejects=rejects,
    )


def check_frozen_set_disjoint(
    frozen_patients: Any, params: Params, repo_dir: str | os.PathLike[str] = "."
) -> None:
    """Refuse a frozen set that shares a patient (or its folder) with the training data.

    Training data is compared as the ``ingest`` stage keyed it: its manifest holds the keyed
    digest of each raw ID, and data that came through ``data/raw`` is digested twice (the raw
    folder stores pseudonyms); both forms are checked, and the raw folder's own table too.

    Raises:
        LeakageError: a shared patient or a frozen folder inside the training source.
    """
    repo_dir = Path(repo_dir)
    frozen_dir = (repo_dir / params.promote.frozen_test_dir).resolve()
    source_dir = (repo_dir / params.ingest.source_dir).resolve()
    if (
        frozen_dir == source_dir
        or source_dir in frozen_dir.parents
        or (frozen_dir in source_dir.parents)
    ):
        raise LeakageError(
            f"the frozen test set {frozen_dir} overlaps the training source {source_dir}; keep "
            "promote.frozen_test_dir outside ingest.source_dir"
        )
    salt = salt_from_env(synthetic=params.ingest.source == "synthetic")
    pseudo = Pseudonymiser(salt)
    frozen = {str(p) for p in frozen_patients}
    forms = frozen | {pseudo.patient(p) for p in frozen}
    training: set[str] = set()
    manifest = repo_dir / params.paths.ingest_dir / "manifest.csv"
    if manifest.is_file():
        training |= set(pd.read_csv(manifest, usecols=["patient_id"], dtype=str)["patient_id"])
    raw_labels = source_dir / "labels.csv"
    if params.ingest.source == "folder" and raw_labels.is_file():
        table = pd.read_csv(raw_labels, dtype=str, keep_default_na=False)
        if "patient_id" in table:
            training |= set(table["patient_id"])
    shared = sorted(forms & training)
    if shared:
        raise LeakageError(
            f"{len(shared)} frozen-test-set patient(s) also appear in the training data "
            f"(pseudonyms {shared[:5]}); the frozen set must never enter training: remove those "
            "patients from promote.frozen_test_dir or from the training source"
        )


def make_synthetic_frozen_set(
    params: Params,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    config: Any = None,
) -> Path:
    """Generate the synthetic frozen test set: ``synth.sites`` with a distinct seed and patients.

    Writes the ``synthetic`` source layout (``<site>/labels.csv`` + ``<site>/images/``) with
    ``promote.frozen_test_per_site`` images per site; patient IDs are renamed
    ``SYNFROZEN-<SITE>-<n>`` in the labels and the DICOM headers.

    Args:
        params: ``synth.sites``, ``seed`` and ``promote``.
        out_dir: where to write (default ``promote.frozen_test_dir``).
        overwrite: replace an existing frozen set.
        config: a :class:`cxr_triage.data.synth.SynthConfig` (default: ``params.synth``'s, the
            generator settings the training data was made with).

    Raises:
        ConfigError: the seed equals the training ``seed``, or the folder exists (and not
            ``overwrite``).
    """
    import pydicom

    from cxr_triage.data.synth import SynthConfig, generate_dataset

    rule = params.promote
    if rule.frozen_test_seed == params.seed:
        raise ConfigError(
            f"promote.frozen_test_seed equals seed ({params.seed}); pick another value so that "
            "the frozen set is not a copy of the training images"
        )
    out = Path(out_dir or rule.frozen_test_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out} already exists; a frozen test set must stay frozen (delete it by hand to "
            "regenerate it, or pass overwrite=True)"
        )
    with atomic_dir(out) as tmp:
        for site in params.synth.sites:
            site_dir = tmp / site
            generate_dataset(
                site_dir,
                rule.frozen_test_per_site,
                site,
                rule.frozen_test_seed,
                config or SynthConfig.from_params(params.synth),
            )
            labels = pd.read_csv(site_dir / "labels.csv", dtype=str, keep_default_na=False)
            renamed = {
                p: FROZEN_PATIENT_PREFIX + p.removeprefix("SYN-") for p in labels["Patient ID"]
            }
            labels["Patient ID"] = labels["Patient ID"].map(renamed)
            labels.to_csv(site_dir / "labels.csv", index=False, lineterminator="\n")
            for path in sorted((site_dir / "images").iterdir()):
                ds = pydicom.dcmread(path)
                ds.PatientID = renamed.get(str(ds.PatientID), FROZEN_PATIENT_PREFIX + "UNKNOWN")
                ds.save_as(path, enforce_file_format=True)
    log.info("frozen test set: %d sites written to %s", len(params.synth.sites), out)
    return out


def evaluate_candidate(
    params: Params,
    candidate_package_dir: str | os.PathLike[str],
    *,
    candidate_tag: str,
    serving_tag: str | None,
    serving_package_dir: str | os.PathLike[str] | None = None,
    repo_dir: str | os.PathLike[str] = ".",
) -> GateDecision:
    """The full gate: leakage check, both packages on the frozen set, the rule.

    Args:
        params: the parameters (``promote``, ``ingest``, ``paths``).
        candidate_package_dir: the retrained package folder.
        candidate_tag: its model tag.
        serving_tag: the serving tag (None: nothing serves, the candidate is promoted).
        serving_package_dir: the serving package folder (needed when ``serving_tag`` is set).
        repo_dir: root the relative paths of ``params`` are read from.

    Raises:
        LeakageError: the frozen set shares patients with the training data.
        DataError, ConfigError: unusable frozen set.
    """
    from cxr_triage.inference.predictor import Predictor

    if serving_tag is None:
        return GateDecision(
            status="promoted",
            reason="nothing was serving yet: the first package serves",
            candidate_tag=candidate_tag,
        )
    if serving_tag == candidate_tag:
        return GateDecision(
            status="unchanged",
            reason="the candidate is the serving package already (same content hash)",
            candidate_tag=candidate_tag,
            serving_tag=serving_tag,
        )
    if serving_package_dir is None:
        raise ConfigError("serving_package_dir is required when a package is serving")
    repo_dir = Path(repo_dir)
    candidate = Predictor(candidate_package_dir)
    serving = Predictor(serving_package_dir)
    salt = salt_from_env(synthetic=params.ingest.source == "synthetic")
    frozen_dir = repo_dir / params.promote.frozen_test_dir
    frozen = load_frozen_set(
        frozen_dir,
        params.promote.frozen_test_source,
        {candidate.image_size, serving.image_size},
        salt=salt,
        limits=ImageLimits.from_params(params.ingest),
        min_images=params.promote.min_images,
    )
    check_frozen_set_disjoint(frozen.patient_id, params, repo_dir)
    decision = decide_on_scores(
        frozen.y_true,
        serving.score(frozen.images[serving.image_size]).prob_abnormal,
        candidate.score(frozen.images[candidate.image_size]).prob_abnormal,
        frozen.patient_id,
        candidate_threshold=candidate.threshold,
        rule=params.promote,
        seed=params.seed,
    )
    decision.candidate_tag, decision.serving_tag = candidate_tag, serving_tag
    decision.evidence.update(
        frozen_test_dir=str(params.promote.frozen_test_dir),
        frozen_rejects=len(frozen.rejects),
        serving_threshold=serving.threshold,
    )
    log.info("promotion gate: %s", decision.one_line())
    return decision


def promote_if_better(params: Params, repo_dir: str | os.PathLike[str] = ".") -> GateDecision:
    """Gate the package the pipeline just built against the serving one; promote if it passes.

    The candidate is ``paths.package_dir`` (saved into the BentoML store if it is not there
    yet); the serving package is the registry's serving tag. A promotion goes through
    :func:`cxr_triage.inference.registry.promote` with the decision as evidence. The decision is
    also written to ``<paths.package_report_dir>/promotion.json``.

    Raises:
        LeakageError, DataError, ConfigError: see :func:`evaluate_candidate`.
    """
    from cxr_triage.atomic import write_json_atomically
    from cxr_triage.inference import registry

    repo_dir = Path(repo_dir)
    package_dir = repo_dir / params.paths.package_dir
    candidate_tag = registry.register_package(package_dir)
    serving_tag = registry.serving_tag()
    decision = evaluate_candidate(
        params,
        package_dir,
        candidate_tag=candidate_tag,
        serving_tag=serving_tag,
        serving_package_dir=registry.resolve_package(tag=serving_tag).path
        if serving_tag
        else None,
        repo_dir=repo_dir,
    )
    if decision.promoted:
        registry.promote(candidate_tag, reason=decision.reason, evidence=decision.to_dict())
    write_json_atomically(
        repo_dir / params.paths.package_report_dir / "promotion.json", decision.to_dict()
    )
    return decision
