"""Patient-level, label-stratified train/val/test split.

Patients, not images, are assigned: every image of a patient lands in one split, so no model is
ever evaluated on a patient it was trained on. A patient counts as abnormal for stratification
when any of their images is. With ``use_official`` and a manifest that carries the official
ChestX-ray14 split, the official test patients form the test split and val is carved from the
official train_val patients.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from cxr_triage.config import SplitParams
from cxr_triage.errors import DataError, LeakageError
from cxr_triage.vocabulary import ABNORMAL, CLASS_NAMES, NORMAL

__all__ = ["SPLITS", "assert_patient_disjoint", "split_by_patient"]

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def _stratified(patients: pd.Series, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split patient ids into (rest, held) with ``frac`` held, stratified by patient label."""
    ids = patients.index.to_numpy()
    if frac <= 0 or len(ids) == 0:
        return ids, ids[:0]
    n_held = max(1, round(frac * len(ids)))
    if n_held >= len(ids):
        raise DataError(
            f"only {len(ids)} patients: too few to hold out {frac:.0%}; add data or "
            "lower split.val_frac / split.test_frac"
        )
    counts = patients.value_counts()
    # Stratify only when every class can appear on both sides; tiny datasets fall back to random.
    stratify = patients.to_numpy() if counts.min() >= 2 and len(counts) > 1 else None
    if stratify is None:
        log.warning("split: too few patients of one class to stratify; splitting at random")
    rest, held = train_test_split(ids, test_size=n_held, random_state=seed, stratify=stratify)
    return np.sort(rest), np.sort(held)


def split_by_patient(manifest: pd.DataFrame, params: SplitParams, *, seed: int) -> pd.DataFrame:
    """Assign each image to train, val or test by patient.

    Args:
        manifest: needs ``image_id``, ``patient_id``, ``label``; ``official_split`` is optional.
        params: fractions and whether to honour an official split.
        seed: makes the assignment reproducible.

    Returns:
        ``image_id, patient_id, label, split`` in manifest order.

    Raises:
        DataError: unlabelled images, or too few patients.
        LeakageError: the official lists put one patient in both train_val and test.
    """
    unlabelled = ~manifest["label"].isin(CLASS_NAMES)
    if unlabelled.any():
        raise DataError(
            f"{int(unlabelled.sum())} images have no normal/abnormal label; a training "
            "split needs labels (ingest the source with its labels table)"
        )
    abnormal = manifest["label"].eq(ABNORMAL).groupby(manifest["patient_id"]).any()
    patients = abnormal.map({True: ABNORMAL, False: NORMAL})
    official = manifest.get("official_split", pd.Series("", index=manifest.index)).fillna("")
    assignment: dict[str, str] = {}
    if params.use_official and official.eq("test").any():
        per_patient = official.groupby(manifest["patient_id"]).agg(lambda s: set(s) - {""})
        both = per_patient[per_patient.map(lambda s: {"test", "train_val"} <= s)]
        if len(both):
            raise LeakageError(
                f"official lists put {len(both)} patient(s) in both train_val and "
                f"test (e.g. {both.index[0]}); fix test_list.txt/train_val_list.txt"
            )
        test_ids = per_patient[per_patient.map(lambda s: "test" in s)].index
        assignment.update(dict.fromkeys(test_ids, "test"))
        pool = patients.drop(test_ids)
        val_share = params.val_frac / max(1e-9, 1 - params.test_frac)
        train_ids, val_ids = _stratified(pool, val_share, seed)
        log.info("split: official test list used (%d test patients)", len(test_ids))
    else:
        rest, test_ids = _stratified(patients, params.test_frac, seed)
        train_ids, val_ids = _stratified(
            patients.loc[rest], params.val_frac / max(1e-9, 1 - params.test_frac), seed
        )
        assignment.update(dict.fromkeys(test_ids, "test"))
    assignment.update(dict.fromkeys(train_ids, "train"))
    assignment.update(dict.fromkeys(val_ids, "val"))
    out = manifest[["image_id", "patient_id", "label"]].copy()
    out["split"] = out["patient_id"].map(assignment)
    assert_patient_disjoint(out)
    return out


def assert_patient_disjoint(splits: pd.DataFrame) -> None:
    """Fail loudly if any patient appears in more than one split (or in none).

    Raises:
        LeakageError: naming how many patients leak and a few of their pseudonyms.
    """
    if splits["split"].isna().any():
        raise LeakageError(f"{int(splits['split'].isna().sum())} images were assigned no split")
    n_splits = splits.groupby("patient_id")["split"].nunique()
    leaking = n_splits[n_splits > 1]
    if len(leaking):
        raise LeakageError(
            f"{len(leaking)} patient(s) appear in more than one split (e.g. "
            f"{', '.join(leaking.index[:3])}); splits must be patient-disjoint"
        )


def split_counts(splits: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Images, patients and prevalence per split."""
    out = {}
    for name in SPLITS:
        part = splits[splits["split"] == name]
        out[name] = {
            "n_images": int(len(part)),
            "n_patients": int(part["patient_id"].nunique()),
            "n_abnormal": int(part["label"].eq(ABNORMAL).sum()),
            "prevalence": round(float(part["label"].eq(ABNORMAL).mean()), 4) if len(part) else 0.0,
        }
    return out
