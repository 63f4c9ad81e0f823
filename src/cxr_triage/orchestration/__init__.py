"""Orchestration logic the Prefect flows in ``flows/`` call; no Prefect import here (``doctor``
imports Prefect's client when it runs).

- :mod:`~cxr_triage.orchestration.pipeline`: DVC stage order and ``dvc repro`` of one stage;
- :mod:`~cxr_triage.orchestration.rawdata`: new images -> the DVC-tracked raw data (``data/raw``);
- :mod:`~cxr_triage.orchestration.gate`: the promotion gate on the frozen test set;
- :mod:`~cxr_triage.orchestration.events`: the events and alert texts the flows emit;
- :mod:`~cxr_triage.orchestration.doctor`: ``cxr-triage doctor``, will the schedules run.
"""

from __future__ import annotations

__all__: list[str] = []
