"""The headline metrics: the one small file ``dvc metrics show`` and ``dvc exp show`` list.

Every figure is on the held-out test split, for the pipeline's winner, at the operating
threshold chosen on train+val; each is a copy of a key of the ``evaluate`` stage's detailed
``metrics.json`` (which keeps the CV estimate, optimism, PPV/NPV and every CI). Short keys keep
``dvc metrics show`` within 100 columns (DVC sorts them by name):

========  ==============================  =====================================================
key       detailed key                    meaning
========  ==============================  =====================================================
winner    candidate                       the chosen candidate (``compare`` stage)
auroc     test_auroc                      test AUROC
auroc_lo  test_auroc_ci_low               lower end of its 95% patient-bootstrap CI
auroc_hi  test_auroc_ci_high              upper end of that CI
ece       test_ece                        expected calibration error (``compare.n_bins`` bins)
sens      test_sensitivity                sensitivity at the threshold
spec      test_specificity                specificity at the threshold
cleared   test_worklist_cleared_share     share of all test studies scored below the threshold
                                          (auto-cleared: removed from the worklist)
========  ==============================  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping

from cxr_triage.errors import ConfigError

__all__ = ["HEADLINE_KEYS", "headline_metrics"]

#: headline key -> key of the evaluate stage's ``metrics.json`` it copies, in file order.
HEADLINE_KEYS: dict[str, str] = {
    "winner": "candidate",
    "auroc": "test_auroc",
    "auroc_lo": "test_auroc_ci_low",
    "auroc_hi": "test_auroc_ci_high",
    "ece": "test_ece",
    "sens": "test_sensitivity",
    "spec": "test_specificity",
    "cleared": "test_worklist_cleared_share",
}


def headline_metrics(evaluated: Mapping[str, object]) -> dict[str, object]:
    """Pick the headline figures out of the evaluate stage's detailed metrics.

    Args:
        evaluated: the ``evaluate`` stage's metrics (``paths.evaluate_dir/metrics.json``).

    Returns:
        The keys of :data:`HEADLINE_KEYS`, in that order, with the detailed values unchanged
        (no rounding: ``dvc metrics show --precision`` rounds for display).

    Raises:
        ConfigError: when ``evaluated`` lacks one of the detailed keys (a metrics file from an
            older pipeline: re-run ``dvc repro evaluate``).
    """
    missing = [detail for detail in HEADLINE_KEYS.values() if detail not in evaluated]
    if missing:
        raise ConfigError(
            f"the evaluate metrics lack {', '.join(missing)}, which the headline metrics copy; "
            "re-run the evaluate stage (`dvc repro evaluate`)"
        )
    return {key: evaluated[detail] for key, detail in HEADLINE_KEYS.items()}
