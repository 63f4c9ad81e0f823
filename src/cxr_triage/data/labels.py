"""Labels tables: ChestX-ray14 ``Data_Entry`` format and plain CSVs, normalised to one schema.

Accepted column names (case-insensitive) for each canonical column:

========================  =====================================================================
canonical                 accepted names
========================  =====================================================================
``image``                 Image Index, image, file, filename, path, image_path
``finding``               Finding Labels, finding, findings  (``|``-separated, "No Finding")
``label``                 label  (normal / abnormal, or 0 / 1)
``patient_id``            Patient ID, patient_id, patientid
``study_id``              study_id, Study ID
``sex``                   Patient Gender, Patient Sex, sex, gender  (M / F)
``age``                   Patient Age, age  (years)
``view_position``         View Position, view_position, view
``site``                  Site, site
``official_split``        official_split, nih_official_split  (train_val / test)
========================  =====================================================================

A table needs ``image`` and, to be a labelled source, ``finding`` or ``label``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr_triage.errors import DataError
from cxr_triage.vocabulary import (
    ABNORMAL,
    FINDING_COLUMNS,
    FINDINGS,
    NO_FINDING,
    NORMAL,
    finding_column,
)

__all__ = [
    "finding_flags",
    "normalise_labels_table",
    "read_labels_table",
]


_ALIASES = {
    "image": ("image index", "image", "file", "filename", "path", "image_path"),
    "finding": ("finding labels", "finding", "findings"),
    "label": ("label",),
    "patient_id": ("patient id", "patient_id", "patientid"),
    "study_id": ("study_id", "study id"),
    "sex": ("patient gender", "patient sex", "sex", "gender"),
    "age": ("patient age", "age"),
    "view_position": ("view position", "view_position", "view"),
    "site": ("site",),
    "official_split": ("official_split", "nih_official_split"),
}


def read_labels_table(path: Path) -> pd.DataFrame:
    """Read a labels CSV (optionally gzipped) and normalise it.

    Raises:
        DataError: unreadable file or missing required columns.
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise DataError(f"labels table {path} not found") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"labels table {path} is not a readable CSV: {exc}") from exc
    return normalise_labels_table(raw, str(path))


def finding_flags(finding: str) -> dict[str, int]:
    """``"Effusion|Mass"`` -> one 0/1 flag per finding column.

    Raises:
        DataError: a name that is not one of the 14 ChestX-ray14 findings.
    """
    flags = dict.fromkeys(FINDING_COLUMNS, 0)
    for name in filter(None, (part.strip() for part in finding.split("|"))):
        key = finding_column(name.replace(" ", "_"))
        if key == finding_column(NO_FINDING.replace(" ", "_")):
            continue
        if key not in flags:
            raise DataError(
                f"unknown finding {name!r}; use the ChestX-ray14 names ({', '.join(FINDINGS)}) "
                f"or {NO_FINDING!r}"
            )
        flags[key] = 1
    return flags


def normalise_labels_table(raw: pd.DataFrame, where: str) -> pd.DataFrame:
    """Rename aliases to canonical columns and derive ``label`` and the 14 finding flags.

    Raises:
        DataError: no image column, conflicting or invalid labels (naming the rows).
    """
    lower = {c.strip().lower(): c for c in raw.columns}
    renamed = {}
    for canonical, names in _ALIASES.items():
        for name in names:
            if name in lower:
                renamed[lower[name]] = canonical
                break
    df = raw.rename(columns=renamed)[list(renamed.values())].copy()
    if "image" not in df:
        raise DataError(
            f"{where}: no image column; name it one of: {', '.join(_ALIASES['image'])}"
        )
    df["image"] = df["image"].str.strip()
    if (df["image"] == "").any():
        rows = (df.index[df["image"] == ""] + 2).tolist()[:5]
        raise DataError(f"{where}: empty image name on line(s) {rows}")
    dupes = df["image"][df["image"].duplicated()].unique().tolist()
    if dupes:
        raise DataError(f"{where}: image(s) listed twice: {dupes[:5]}; list each image once")
    labelled = "finding" in df or "label" in df
    if "finding" in df:
        try:
            flags = pd.DataFrame([finding_flags(f) for f in df["finding"]], index=df.index)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
    else:
        flags = pd.DataFrame(0, index=df.index, columns=list(FINDING_COLUMNS))
    for col in FINDING_COLUMNS:
        df[col] = flags[col].astype(int)
    if "label" in df:
        label = df["label"].str.strip().str.lower().replace({"0": NORMAL, "1": ABNORMAL})
        bad = ~label.isin([NORMAL, ABNORMAL, ""])
        if bad.any():
            rows = (df.index[bad] + 2).tolist()[:5]
            raise DataError(
                f"{where}: label must be normal or abnormal (or 0/1); bad value on line(s) {rows}"
            )
        if "finding" in df:
            conflict = (label == NORMAL) & (flags.sum(axis=1) > 0)
            if conflict.any():
                rows = (df.index[conflict] + 2).tolist()[:5]
                raise DataError(
                    f"{where}: label 'normal' but findings listed on line(s) {rows}; fix one"
                )
        df["label"] = label
    elif labelled:
        df["label"] = [ABNORMAL if n else NORMAL for n in flags.sum(axis=1)]
    else:
        df["label"] = ""
    for col in ("patient_id", "study_id", "sex", "view_position", "site", "official_split"):
        if col not in df:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str).str.strip()
    df["sex"] = (
        df["sex"].str.upper().str[:1].where(df["sex"].str.upper().str[:1].isin(["M", "F"]), "")
    )
    df["view_position"] = df["view_position"].str.upper()
    df["official_split"] = df["official_split"].str.lower().replace({"train": "train_val"})
    age = (
        pd.to_numeric(df["age"], errors="coerce")
        if "age" in df
        else pd.Series(float("nan"), index=df.index)
    )
    df["age"] = age.where((age >= 0) & (age <= 120))
    return df.drop(columns=["finding"], errors="ignore").reset_index(drop=True)
