"""Typed parameters: one frozen dataclass per ``params.yaml`` section, one loader.

``load_params()`` rejects unknown keys, missing keys and wrong types with a :class:`ConfigError`
naming the key (``ingest.image_size: expected int, got 'big'``), so a typo in ``params.yaml`` or
in ``dvc exp run -S`` fails before any work starts. Each stage receives only its own section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cxr_triage.errors import ConfigError

__all__ = [
    "IngestParams",
    "Params",
    "PathsParams",
    "SOURCES",
    "SplitParams",
    "SynthParams",
    "load_params",
    "parse_section",
]

SOURCES = ("synthetic", "chestxray14", "folder", "dicom")


@dataclass(frozen=True)
class PathsParams:
    """Every file edge of the pipeline, in one place (``dvc.yaml`` reads ``${paths.*}``)."""

    synth_dir: str = "data/synth"
    ingest_dir: str = "data/ingest"
    split_dir: str = "data/split"


@dataclass(frozen=True)
class SynthParams:
    """The embedded default dataset: synthetic sites and their image counts."""

    sites: dict[str, int] = field(
        default_factory=lambda: {"hospital_a": 360, "hospital_b": 300, "hospital_c": 240}
    )
    workers: int = 0  # 0 = all cores


@dataclass(frozen=True)
class IngestParams:
    """How a source becomes the canonical dataset (manifest + pixels at training size)."""

    source: Literal["synthetic", "chestxray14", "folder", "dicom"] = "synthetic"
    source_dir: str = "data/synth"
    labels_csv: str | None = None  # relative to source_dir; default depends on the source
    site: str | None = None  # site name for sources that carry none
    image_size: int = 128
    max_pixels: int = 40_000_000
    allowed_modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    workers: int = 0  # 0 = all cores


@dataclass(frozen=True)
class SplitParams:
    """Patient-level, label-stratified train/val/test proportions."""

    val_frac: float = 0.15
    test_frac: float = 0.2
    use_official: bool = True  # ChestX-ray14: honour test_list.txt / train_val_list.txt


@dataclass(frozen=True)
class Params:
    seed: int
    paths: PathsParams
    synth: SynthParams
    ingest: IngestParams
    split: SplitParams


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(
            f"{key}: must be one of {', '.join(map(str, typing.get_args(tp)))}; got {value!r}"
        )
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {
            _coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return parse_section(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        # bool is an int subclass in Python: refuse `true` where a number is expected.
        if isinstance(value, tp) and not (tp is not bool and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    raise ConfigError(f"{key}: unsupported parameter type {tp!r}")  # pragma: no cover


def parse_section(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types.

    Missing keys take the dataclass default; a key without a default is required.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{prefix}.{k}' if prefix else k for k in unknown)}; "
            f"valid keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key}")
    return cls(**kwargs)


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
    if any(n <= 0 for n in p.synth.sites.values()) or not p.synth.sites:
        raise ConfigError("synth.sites: give at least one site with a positive image count")
