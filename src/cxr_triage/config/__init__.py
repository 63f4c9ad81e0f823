"""Typed parameters: one frozen dataclass per ``params.yaml`` section, one loader.

``load_params()`` rejects unknown keys, missing keys and wrong types with a :class:`ConfigError`
naming the key (``ingest.image_size: expected int, got 'big'``), so a typo in ``params.yaml`` or
in ``dvc exp run -S`` fails before any work starts. Each stage receives only its own section.

The sections live by concern: :mod:`~cxr_triage.config.data` (paths, synth, ingest, split),
:mod:`~cxr_triage.config.training` (backbone, embed, transfer, finetune),
:mod:`~cxr_triage.config.evaluation` (compare, threshold, evaluate),
:mod:`~cxr_triage.config.operations` (package, monitor, promote, schedule),
:mod:`~cxr_triage.config.inference` (qc, explain, similar: what the radiologist sees);
:mod:`~cxr_triage.config.parsing` checks types and keys; :mod:`~cxr_triage.config.params` holds
``Params`` and ``load_params``. Import them from here.
"""

from __future__ import annotations

from cxr_triage.config.data import (
    SOURCES,
    IngestParams,
    PathsParams,
    SplitParams,
    SynthKnobs,
    SynthParams,
)
from cxr_triage.config.evaluation import (
    SELECTION_RULES,
    CompareParams,
    EnsembleParams,
    EvaluateParams,
    Recalibration,
    ThresholdParams,
    WinnerRule,
)
from cxr_triage.config.inference import (
    QC_ACTIONS,
    ExplainParams,
    QcActions,
    QcParams,
    SimilarParams,
)
from cxr_triage.config.operations import (
    MonitorParams,
    PackageParams,
    PromoteParams,
    ScheduleParams,
)
from cxr_triage.config.params import Params, load_params
from cxr_triage.config.parsing import parse_section
from cxr_triage.config.training import (
    LOSSES,
    ZOO_NAMES,
    AugmentOptions,
    BackboneParams,
    EmbedParams,
    FinetuneOptions,
    FinetuneParams,
    SslParams,
    TransferParams,
)

__all__ = [
    "LOSSES",
    "QC_ACTIONS",
    "SELECTION_RULES",
    "SOURCES",
    "ZOO_NAMES",
    "AugmentOptions",
    "BackboneParams",
    "CompareParams",
    "EmbedParams",
    "EnsembleParams",
    "EvaluateParams",
    "ExplainParams",
    "FinetuneOptions",
    "FinetuneParams",
    "IngestParams",
    "MonitorParams",
    "PackageParams",
    "Params",
    "PathsParams",
    "PromoteParams",
    "QcActions",
    "QcParams",
    "Recalibration",
    "ScheduleParams",
    "SimilarParams",
    "SplitParams",
    "SslParams",
    "SynthKnobs",
    "SynthParams",
    "ThresholdParams",
    "TransferParams",
    "WinnerRule",
    "load_params",
    "parse_section",
]
