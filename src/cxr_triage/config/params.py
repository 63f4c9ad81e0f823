"""``Params`` (all of ``params.yaml``) and its loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cxr_triage.config.data import IngestParams, PathsParams, SplitParams, SynthParams
from cxr_triage.config.evaluation import CompareParams, EvaluateParams, ThresholdParams
from cxr_triage.config.inference import ExplainParams, QcParams, SimilarParams
from cxr_triage.config.operations import (
    MonitorParams,
    PackageParams,
    PromoteParams,
    ScheduleParams,
)
from cxr_triage.config.parsing import parse_section
from cxr_triage.config.training import (
    BackboneParams,
    EmbedParams,
    FinetuneParams,
    TransferParams,
)
from cxr_triage.errors import ConfigError

__all__ = ["Params", "load_params"]


@dataclass(frozen=True)
class Params:
    seed: int
    paths: PathsParams
    synth: SynthParams
    ingest: IngestParams
    split: SplitParams
    backbone: BackboneParams
    embed: EmbedParams
    transfer: TransferParams
    finetune: FinetuneParams
    compare: CompareParams
    threshold: ThresholdParams
    evaluate: EvaluateParams
    package: PackageParams = field(default_factory=PackageParams)
    monitor: MonitorParams = field(default_factory=MonitorParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    qc: QcParams = field(default_factory=QcParams)
    explain: ExplainParams = field(default_factory=ExplainParams)
    similar: SimilarParams = field(default_factory=SimilarParams)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: the file is missing or malformed, or a key is unknown, missing or mistyped.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found; run from the project root or pass --params") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    params = parse_section(Params, data, "")
    _validate(params)
    return params


def _validate(p: Params) -> None:
    if p.ingest.image_size < 16 or p.ingest.image_size > 1024:
        raise ConfigError(f"ingest.image_size: must be within 16..1024, got {p.ingest.image_size}")
    if not 0 <= p.split.val_frac < 1 or not 0 <= p.split.test_frac < 1:
        raise ConfigError("split.val_frac and split.test_frac must each be within [0, 1)")
    if p.split.val_frac + p.split.test_frac >= 1:
        raise ConfigError(
            f"split.val_frac + split.test_frac = {p.split.val_frac + p.split.test_frac:g} leaves "
            "no training data; make their sum < 1"
        )
    for key, options in (("finetune", p.finetune), ("backbone.pretrain", p.backbone.pretrain)):
        if options.seed != 0:
            raise ConfigError(f"{key}.seed: remove it; every stage uses the top-level `seed`")
    if any(n <= 0 for n in p.synth.sites.values()) or not p.synth.sites:
        raise ConfigError("synth.sites: give at least one site with a positive image count")
