"""The product's vocabulary, defined once: class names, the 14 findings, the disclaimer.

Every module that writes or reads a label, a finding column or the intended-use statement takes
it from here, so a typo cannot make two spellings of one class.
"""

from __future__ import annotations

__all__ = [
    "ABNORMAL",
    "CLASS_NAMES",
    "FINDINGS",
    "FINDING_COLUMNS",
    "LABELS",
    "NORMAL",
    "NOT_FOR_CLINICAL_USE",
    "NO_FINDING",
    "finding_column",
]

NORMAL = "normal"
ABNORMAL = "abnormal"
# Index 1 is the positive class: every score is the probability of ABNORMAL.
CLASS_NAMES: tuple[str, str] = (NORMAL, ABNORMAL)
LABELS = frozenset(CLASS_NAMES)

# ChestX-ray14's 14 findings, in its own spelling (Wang et al., CVPR 2017; NIH Data_Entry_2017);
# the manifest's columns are their lower-case names (``finding_column``).
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
# ChestX-ray14's label for an image with none of the findings ("normal" here).
NO_FINDING = "No Finding"


def finding_column(finding: str) -> str:
    """The manifest column of a finding (``Pleural_Thickening`` -> ``pleural_thickening``)."""
    return finding.lower()


FINDING_COLUMNS: tuple[str, ...] = tuple(finding_column(f) for f in FINDINGS)

NOT_FOR_CLINICAL_USE = "Not for clinical use: research triage signal, not a diagnosis."
