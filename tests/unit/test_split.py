from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_triage.config import SplitParams
from cxr_triage.data.split import assert_patient_disjoint, split_by_patient, split_counts
from cxr_triage.errors import DataError, LeakageError


def _manifest(n_patients: int = 200, seed: int = 0, official: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        abnormal_patient = rng.random() < 0.3
        for i in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "image_id": f"img{p:04d}_{i}",
                    "patient_id": f"pat{p:04d}",
                    "label": "abnormal" if abnormal_patient and rng.random() < 0.8 else "normal",
                    "official_split": ("test" if p % 5 == 0 else "train_val") if official else "",
                }
            )
    return pd.DataFrame(rows)


def test_split_by_patient_keeps_patients_disjoint():
    splits = split_by_patient(_manifest(), SplitParams(0.15, 0.2), seed=1)
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    assert set(splits["split"]) == {"train", "val", "test"}


def test_split_by_patient_fractions_and_stratification():
    manifest = _manifest(600)
    splits = split_by_patient(manifest, SplitParams(0.15, 0.2), seed=1)
    patients = splits.groupby("patient_id")["split"].first().value_counts(normalize=True)
    assert patients["test"] == pytest.approx(0.2, abs=0.01)
    assert patients["val"] == pytest.approx(0.15, abs=0.01)
    counts = split_counts(splits)
    prevalences = [counts[s]["prevalence"] for s in ("train", "val", "test")]
    assert max(prevalences) - min(prevalences) < 0.08


def test_split_by_patient_is_deterministic_per_seed():
    manifest = _manifest()
    a = split_by_patient(manifest, SplitParams(), seed=3)
    b = split_by_patient(manifest, SplitParams(), seed=3)
    c = split_by_patient(manifest, SplitParams(), seed=4)
    assert a.equals(b)
    assert not a["split"].equals(c["split"])


def test_split_by_patient_honours_official_test_list():
    manifest = _manifest(official=True)
    splits = split_by_patient(manifest, SplitParams(0.15, 0.2, use_official=True), seed=0)
    is_test = manifest["official_split"].eq("test")
    assert splits.loc[is_test, "split"].eq("test").all()
    assert splits.loc[~is_test, "split"].isin(["train", "val"]).all()
    ignored = split_by_patient(manifest, SplitParams(0.15, 0.2, use_official=False), seed=0)
    assert not ignored.loc[is_test, "split"].eq("test").all()


def test_split_by_patient_official_lists_sharing_a_patient_raise():
    manifest = _manifest(official=True)
    first = manifest.index[manifest["patient_id"] == manifest.loc[0, "patient_id"]]
    manifest.loc[first, "official_split"] = "train_val"
    manifest.loc[first[0], "official_split"] = "test"
    if len(first) == 1:  # the patient needs two images for a conflict; add one
        extra = manifest.loc[[first[0]]].assign(image_id="extra", official_split="train_val")
        manifest = pd.concat([manifest, extra], ignore_index=True)
    with pytest.raises(LeakageError, match="both train_val and test"):
        split_by_patient(manifest, SplitParams(), seed=0)


def test_assert_patient_disjoint_raises_on_shared_patient():
    splits = pd.DataFrame(
        {"image_id": ["a", "b"], "patient_id": ["p1", "p1"], "split": ["train", "test"]}
    )
    with pytest.raises(LeakageError, match="1 patient"):
        assert_patient_disjoint(splits)


def test_split_by_patient_refuses_unlabelled_images():
    manifest = _manifest(20)
    manifest.loc[0, "label"] = ""
    with pytest.raises(DataError, match="no normal/abnormal label"):
        split_by_patient(manifest, SplitParams(), seed=0)


def test_split_by_patient_too_few_patients():
    manifest = _manifest(2)
    with pytest.raises(DataError, match="too few"):
        split_by_patient(manifest, SplitParams(0.4, 0.4), seed=0)
