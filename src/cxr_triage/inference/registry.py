"""Model packages in the BentoML model store, which one is serving, and which one to use.

Packages are saved as BentoML models named ``cxr-triage`` whose version is the package's
content hash, so saving the same package twice is a no-op and a tag names exactly one model.

Which tag serves is recorded in the state folder's ``serving.json`` (:mod:`cxr_triage.state`;
written atomically, with the history of promotions and their evidence).

:func:`resolve_package` is the one rule every consumer (``cxr-triage predict`` and ``monitor``,
the flows, the promotion gate, the service) uses to pick a package: a folder given, else a tag
given, else ``$CXR_TRIAGE_MODEL_TAG``, else the serving tag, else the most recently saved one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxr_triage.atomic import write_json_atomically
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.inference.layout import MODEL_NAME, read_package_info
from cxr_triage.models.artifacts import read_json
from cxr_triage.state import state_layout

__all__ = [
    "MODEL_TAG_ENV",
    "ResolvedPackage",
    "bentoml_home",
    "promote",
    "register_package",
    "resolve_model_tag",
    "resolve_package",
    "serving_record",
    "serving_tag",
    "stored_package_dir",
]

MODEL_TAG_ENV = "CXR_TRIAGE_MODEL_TAG"


def bentoml_home() -> Path:
    """The BentoML home (``$BENTOML_HOME``, default ``~/bentoml``)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def _serving_path() -> Path:
    return state_layout().serving_record


def register_package(package_dir: str | os.PathLike[str]) -> str:
    """Save a package folder into the BentoML model store; return its tag.

    Raises:
        DataError: the folder is not a finalised package.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    package_dir = Path(package_dir)
    info = read_package_info(package_dir)
    tag = info.get("model_tag")
    if not tag:
        raise DataError(
            f"{package_dir} has no model tag; it was not written by `dvc repro package`"
        )
    try:
        bentoml.models.get(tag)
        return tag
    except NotFound:
        pass
    metrics = info.get("metrics", {})
    with bentoml.models.create(
        tag,
        labels={"task": "cxr-normal-vs-abnormal", "candidate": info["candidate"]},
        metadata={
            "candidate": info["candidate"],
            "kind": info["kind"],
            "threshold": info["threshold"],
            "image_size": info["image_size"],
            "test_auroc": metrics.get("test_auroc"),
            "intended_use": "research triage; not for clinical use",
        },
    ) as model:
        for path in package_dir.iterdir():
            if path.is_file():
                shutil.copyfile(path, model.path_of(path.name))
    return tag


def stored_package_dir(tag: str) -> Path:
    """The folder of a stored package.

    Raises:
        ConfigError: no such model in the store.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound as exc:
        raise ConfigError(
            f"model {tag!r} is not in the BentoML store at {bentoml_home()}; run `dvc repro "
            "package` (or `cxr-triage register models/package`), or set BENTOML_HOME"
        ) from exc


def serving_record() -> dict[str, Any]:
    """The serving file's content (``{}`` when nothing was ever promoted)."""
    path = _serving_path()
    return read_json(path) if path.is_file() else {}


def serving_tag() -> str | None:
    """The tag marked as serving, or None."""
    return serving_record().get("tag")


def resolve_model_tag() -> str:
    """The tag to serve: ``$CXR_TRIAGE_MODEL_TAG``, else the serving tag, else the latest."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = os.environ.get(MODEL_TAG_ENV) or serving_tag()
    if tag:
        return tag
    try:
        return str(bentoml.models.get(f"{MODEL_NAME}:latest").tag)
    except NotFound as exc:
        raise ConfigError(
            f"no {MODEL_NAME} model in the BentoML store at {bentoml_home()}; run `dvc repro` "
            f"(the package stage saves one) or set {MODEL_TAG_ENV}"
        ) from exc


def promote(tag: str, *, reason: str, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mark ``tag`` as serving, keeping the previous record in the history.

    Raises:
        ConfigError: the tag is not in the store.
    """
    stored_package_dir(tag)
    previous = serving_record()
    history = list(previous.pop("history", []))
    if previous:
        history.append(previous)
    record = {
        "tag": tag,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": reason,
        "evidence": evidence or {},
        "history": history,
    }
    _serving_path().parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(_serving_path(), record)
    return record


@dataclass(frozen=True)
class ResolvedPackage:
    """A package folder to load, its model tag, and how it was chosen (for logs and reports)."""

    path: Path
    tag: str
    chosen_by: str  # "package", "tag", "environment", "serving" or "latest"


def resolve_package(
    package: str | os.PathLike[str] | None = None, tag: str | None = None
) -> ResolvedPackage:
    """The package to use: ``package`` (a folder), else ``tag``, else the serving rule.

    The serving rule is :func:`resolve_model_tag`'s: ``$CXR_TRIAGE_MODEL_TAG``, else the
    serving tag, else the most recently saved package.

    Raises:
        ConfigError: both arguments given; the tag is not in the model store; nothing saved.
        DataError: ``package`` is not a package folder.
    """
    if package is not None and tag is not None:
        raise ConfigError("give a package folder or a model tag, not both")
    if package is not None:
        info = read_package_info(package)
        return ResolvedPackage(Path(package), info.get("model_tag", "unregistered"), "package")
    if tag is not None:
        return ResolvedPackage(stored_package_dir(tag), tag, "tag")
    chosen_by = (
        "environment"
        if os.environ.get(MODEL_TAG_ENV)
        else "serving"
        if serving_tag()
        else "latest"
    )
    resolved = resolve_model_tag()
    return ResolvedPackage(stored_package_dir(resolved), resolved, chosen_by)
