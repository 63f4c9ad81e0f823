"""DICOMweb, client side: fetch a study (QIDO-RS to list, WADO-RS to retrieve).

Two uses:

- :func:`pull_study` (``cxr-triage pull STUDY_UID --from URL``): the study's instances go into
  the spool like instances received over DICOM (source ``pull``), then the worker triages them.
- :func:`fetch_labelled_studies` (the ingestion flow's DICOMweb source): the images (CR, DX,
  SC) of labelled studies are downloaded into an incoming folder in the ``folder`` layout, so
  the usual ingestion (reader checks, pseudonymisation, ``data/raw``, ``dvc add``) takes them
  from there.

The labels table for :func:`fetch_labelled_studies` is a CSV keyed by **either**
``sop_instance_uid`` (one row per image) **or** ``study_instance_uid`` (one row per study;
every image of the study gets that row), plus the columns of the ``folder`` layout: ``label``
(normal/abnormal or 0/1) or ``finding`` (``|``-separated ChestX-ray14 names), optional
``patient_id``, ``study_id``, ``sex``, ``age``, ``view_position``, ``site``. It is written out
as the batch's ``labels.csv`` with ``image`` = ``<study UID>/<SOP Instance UID>.dcm``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_triage.errors import ConfigError, DataError
from cxr_triage.pacs.scp import storage_sop_classes
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool, StoreOutcome, part10_bytes, write_durably

__all__ = [
    "LABEL_KEYS",
    "FetchSummary",
    "dicomweb_client",
    "fetch_labelled_studies",
    "pull_study",
]

log = logging.getLogger(__name__)

LABEL_KEYS = ("sop_instance_uid", "study_instance_uid")
_SOP_CLASS = "00080016"
_SOP_INSTANCE = "00080018"
_SERIES = "0020000E"


def dicomweb_client(url: str, settings: PacsSettings | None = None) -> Any:
    """A dicomweb-client for ``url`` with the settings' basic auth and timeout.

    Raises:
        ConfigError: the URL is not http(s).
    """
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url!r} is not a DICOMweb base URL; give http(s)://host/dicom-web")
    settings = settings or PacsSettings()
    session = None
    if settings.dicomweb_user:
        session = create_session_from_user_pass(
            settings.dicomweb_user, settings.dicomweb_password or ""
        )
    return DICOMwebClient(url.rstrip("/"), session=session, timeout=settings.network_timeout)


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _instances(client: Any, study_uid: str, url: str) -> list[dict[str, Any]]:
    import requests

    try:
        return list(client.search_for_instances(study_instance_uid=study_uid))
    except requests.RequestException as exc:
        raise DataError(f"QIDO-RS search of study at {url} failed: {exc}") from exc


def _retrieve(client: Any, study_uid: str, item: dict[str, Any], url: str) -> Any:
    import requests

    try:
        series, instance = _value(item, _SERIES), _value(item, _SOP_INSTANCE)
        return client.retrieve_instance(study_uid, series, instance)
    except requests.RequestException as exc:
        raise DataError(f"WADO-RS retrieve from {url} failed: {exc}") from exc


@dataclass
class PullSummary:
    """What :func:`pull_study` did."""

    stored: list[StoreOutcome] = field(default_factory=list)
    skipped_sop_class: int = 0


def pull_study(
    url: str, study_instance_uid: str, spool: Spool, settings: PacsSettings, *, site: str | None
) -> PullSummary:
    """Fetch one study into the spool (QIDO-RS, then WADO-RS per instance).

    Instances of SOP classes the listener would not accept are skipped and counted.

    Raises:
        DataError: the server cannot be reached, or has no such study.
        SpoolUnavailableError: the spool cannot take an instance.
    """
    client = dicomweb_client(url, settings)
    items = _instances(client, study_instance_uid, url)
    if not items:
        raise DataError(f"{url} has no instance of that study (QIDO-RS found none)")
    accepted = set(storage_sop_classes(settings))
    summary = PullSummary()
    for item in items:
        if _value(item, _SOP_CLASS) not in accepted:
            summary.skipped_sop_class += 1
            continue
        ds = _retrieve(client, study_instance_uid, item, url)
        summary.stored.append(
            spool.store(
                part10_bytes(ds),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                source="pull",
                site=site,
            )
        )
    detail = f"{len(summary.stored)} stored, {summary.skipped_sop_class} skipped"
    spool.record_event("pulled", detail)
    return summary


@dataclass
class FetchSummary:
    """What :func:`fetch_labelled_studies` wrote."""

    studies: int = 0
    images: int = 0
    label_rows_without_image: int = 0
    missing: list[str] = field(default_factory=list)


def fetch_labelled_studies(
    url: str,
    labels_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    settings: PacsSettings | None = None,
) -> FetchSummary:
    """Download the labelled studies of a labels table into ``out_dir`` (``folder`` layout).

    Args:
        url: the DICOMweb base URL.
        labels_csv: keyed by ``sop_instance_uid`` or ``study_instance_uid`` (module docstring).
        out_dir: the incoming batch folder (created); receives ``<study>/<sop>.dcm`` and
            ``labels.csv``.
        settings: DICOMweb credentials and timeout.

    Raises:
        DataError: the table has neither or both key columns, or the server fails.
    """
    import pandas as pd

    table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    keys = [k for k in LABEL_KEYS if k in table.columns]
    if len(keys) != 1:
        raise DataError(
            f"{labels_csv} must have exactly one of the columns {', '.join(LABEL_KEYS)} "
            f"(found {', '.join(keys) or 'none'})"
        )
    key = keys[0]
    client = dicomweb_client(url, settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = FetchSummary()
    rows: list[dict[str, Any]] = []
    label_columns = [c for c in table.columns if c not in LABEL_KEYS]
    if key == "study_instance_uid":
        wanted = {row[key]: row for row in table.to_dict("records")}
        for study_uid, labels in wanted.items():
            found = _fetch_study(client, url, study_uid, out, None)
            summary.studies += bool(found)
            if not found:
                summary.missing.append(study_uid)
            rows += [{"image": image, **{c: labels[c] for c in label_columns}} for image in found]
    else:
        by_instance = {row[key]: row for row in table.to_dict("records")}
        for sop_uid, labels in by_instance.items():
            hits = _search_instance(client, url, sop_uid)
            if not hits:
                summary.missing.append(sop_uid)
                continue
            study_uid = _value(hits[0], "0020000D")
            found = _fetch_study(client, url, study_uid, out, {sop_uid})
            rows += [{"image": image, **{c: labels[c] for c in label_columns}} for image in found]
        summary.studies = len({r["image"].split("/")[0] for r in rows})
    summary.images = len(rows)
    summary.label_rows_without_image = len(summary.missing)
    frame = pd.DataFrame(rows, columns=["image", *label_columns])
    frame.to_csv(out / "labels.csv", index=False, lineterminator="\n")
    log.info(
        "fetched %d image(s) of %d labelled stud(ies) from %s; %d label row(s) found nothing",
        summary.images,
        summary.studies,
        url,
        summary.label_rows_without_image,
    )
    return summary


def _search_instance(client: Any, url: str, sop_uid: str) -> list[dict[str, Any]]:
    import requests

    try:
        return list(client.search_for_instances(search_filters={"SOPInstanceUID": sop_uid}))
    except requests.RequestException as exc:
        raise DataError(f"QIDO-RS search at {url} failed: {exc}") from exc


def _fetch_study(
    client: Any, url: str, study_uid: str, out: Path, only: set[str] | None
) -> list[str]:
    """Write a study's instances (or only those in ``only``); their paths relative to ``out``."""
    written: list[str] = []
    images = set(storage_sop_classes(PacsSettings()))
    for item in _instances(client, study_uid, url):
        sop_uid = _value(item, _SOP_INSTANCE)
        if (only is not None and sop_uid not in only) or _value(item, _SOP_CLASS) not in images:
            continue  # not asked for, or not an image (an SR, a presentation state...)
        ds = _retrieve(client, study_uid, item, url)
        relative = f"{study_uid}/{sop_uid}.dcm"
        (out / study_uid).mkdir(parents=True, exist_ok=True)
        write_durably(out / relative, part10_bytes(ds))
        written.append(relative)
    return written
