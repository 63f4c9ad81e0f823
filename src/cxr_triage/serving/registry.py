"""Model packages in the BentoML model store, and which one is serving.

Packages are saved as BentoML models named ``cxr-triage`` whose version is the package's
content hash, so saving the same package twice is a no-op and a tag names exactly one model.

Which tag serves is recorded in ``$BENTOML_HOME/cxr-triage-serving.json`` (written atomically,
with the history of promotions and their evidence). The service loads, in order: the tag in
``$CXR_TRIAGE_MODEL_TAG``, the serving tag, or the most recently saved package.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cxr_triage.atomic import write_json_atomically
from cxr_triage.errors import ConfigError, DataError
from cxr_triage.models.artifacts import read_json
from cxr_triage.serving.package import MODEL_NAME, PACKAGE_FILE

__all__ = [
    "MODEL_TAG_ENV",
    "bentoml_home",
    "promote",
    "register_package",
    "resolve_model_tag",
    "serving_record",
    "serving_tag",
    "stored_package_dir",
]

MODEL_TAG_ENV = "CXR_TRIAGE_MODEL_TAG"
_SERVING_FILE = f"{MODEL_NAME}-serving.json"


def bentoml_home() -> Path:
    """The BentoML home (``$BENTOML_HOME``, default ``~/bentoml``)."""
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def _serving_path() -> Path:
    return bentoml_home() / _SERVING_FILE


def register_package(package_dir: str | os.PathLike[str]) -> str:
    """Save a package folder into the BentoML model store; return its tag.

    Raises:
        DataError: the folder is not a finalised package.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    package_dir = Path(package_dir)
    info = read_json(package_dir / PACKAGE_FILE)
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
