"""The spool worker: triage received instances, close quiet studies, make their results.

Per instance (in batches, oldest first):

1. The header is parsed with the reader's guards. The **frontal rule**: an image is scored
   when its View Position is ``PA`` or ``AP``, or empty (many CR/DX devices never fill it);
   any other view (``LL``, ``RL``, decubitus, oblique...) is refused as ``not_frontal``: the
   model was trained on frontal films.
2. Frontal images are scored through :func:`cxr_triage.inference.batch.iter_scored`, the one
   scoring loop (decoding threads, batched network calls, the :class:`Predictor`), with the
   package's input quality gate enforced as ``/predict`` enforces it
   (:mod:`cxr_triage.inference.qc`: header rules such as a child's age or a small image, and
   the content checks that do not trust headers: inverted, rotated, out of distribution). An
   image the reader refuses gets the reader's typed reason (``wrong_modality``,
   ``no_pixel_data``, ``unsupported_image_type``...); one the gate refuses gets ``qc_failed``,
   its message naming the failed checks. Checks set to ``warn`` only travel with the
   prediction.
3. Each prediction is appended to the prediction log with the same row the HTTP service
   writes (the PHI-free monitoring features, ``request_id`` = ``<source>-<instance key>``,
   ``model_tag``, ``threshold``) plus ``study_key`` (the keyed digest of the Study Instance
   UID, :func:`cxr_triage.inference.feedback.study_key`, so radiologists' reads fed back by
   study find their predictions), once: a retry after a crash skips ids already logged. The
   header (no pixels) is kept in the spool for the study's SR.
4. Every refusal is recorded with its reason in the spool (counted by
   :meth:`Spool.counts`) and logged with the instance's pseudonym.

Per study: once it has triaged instances not yet in a result, none still pending, and nothing
arrived for ``quiet_seconds``, it is closed: its probability is the **maximum** over its
evaluated frontal images (``study_rule: mean`` averages instead; the maximum is the default
because one abnormal film makes the study abnormal), labelled at the package's threshold. Its
SR (:mod:`cxr_triage.pacs.report`) gets a fresh SOP Instance UID, is written to the outbox and
recorded with one delivery per destination in one transaction, *before* anything is sent, so
a resend is always the same instance. An instance that arrives after its study was closed
reopens it: the next result covers every evaluated instance of the study and supersedes the
previous one (same series, next instance number, Predecessor Documents reference; unsent
deliveries of the old one are cancelled). An instance already triaged is never triaged again
(the listener does not even store it twice).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cxr_triage.errors import CxrError, InvalidImageError
from cxr_triage.inference.batch import iter_scored
from cxr_triage.inference.predictor import Prediction, Predictor
from cxr_triage.inference.predlog import PredictionLog
from cxr_triage.io.dicom.header import dicom_meta
from cxr_triage.io.dicom.parse import parse_dicom
from cxr_triage.io.images import read_image
from cxr_triage.io.sources import open_source
from cxr_triage.pacs.report import (
    ImageResult,
    ModelInfo,
    build_secondary_capture,
    build_sr,
    study_result,
)
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import InstanceRow, ResultRow, Spool, part10_bytes, write_durably

__all__ = ["FRONTAL_VIEWS", "NotFrontalError", "TriageWorker", "WorkSummary"]

log = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP", "")


class NotFrontalError(CxrError):
    """A lateral (or other non-frontal) view: the model reads frontal chest films only.

    Not an :class:`InvalidImageError`: the file is a valid radiograph the reader accepts (the
    HTTP service scores whatever view it is sent); only the listener's study rule sets it
    aside. Like the reader's refusals it carries a ``reason``.
    """

    reason = "not_frontal"


@dataclass
class WorkSummary:
    """What one pass of the worker did."""

    triaged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    results: list[ResultRow] = field(default_factory=list)
    housekeeping: dict[str, int] = field(default_factory=dict)


def _header_bytes(ds: Dataset) -> bytes:
    """A parsed header (no pixel data) as a Part 10 file, stored uncompressed whatever the
    transfer syntax it arrived in (without pixels, the syntax only says how it is encoded)."""
    from pydicom.uid import ExplicitVRLittleEndian

    header = Dataset()
    header.update(ds)
    header.file_meta = ds.file_meta.copy()
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10_bytes(header)


def _read_header(path: Path, predictor: Predictor) -> Dataset:
    """The header of a spooled file, with the reader's guards (typed refusals only)."""
    try:
        with open_source(path, predictor.limits) as (fp, size):
            return parse_dicom(fp, size, predictor.limits, header_only=True).ds
    except OSError as exc:
        from cxr_triage.errors import NotAnImageError

        raise NotAnImageError(f"the spooled file cannot be read ({exc})") from exc


class TriageWorker:
    """Drains a spool through a :class:`Predictor` and makes study results.

    Args:
        settings: quiet period, study rule, batch size, destinations, retention.
        spool: the spool (this process should hold its :meth:`Spool.worker_lock`).
        predictor: the model.
        prediction_log: where predictions are recorded (same rows as the HTTP service).
        on_result: called after each new result is queued (e.g. to wake the sender).
    """

    def __init__(
        self,
        settings: PacsSettings,
        spool: Spool,
        predictor: Predictor,
        prediction_log: PredictionLog,
        *,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.predictor = predictor
        self.prediction_log = prediction_log
        self.on_result = on_result
        self.model = ModelInfo.from_package_info(predictor.info, predictor.model_tag)

    # -- instances -----------------------------------------------------------------------

    def triage_batch(self, summary: WorkSummary | None = None) -> int:
        """Triage up to ``batch_size`` pending instances; return how many were handled."""
        summary = summary if summary is not None else WorkSummary()
        rows = self.spool.pending(self.settings.batch_size)
        if not rows:
            return 0
        refused: list[tuple[str, str, str]] = []
        frontal: dict[str | None, list[tuple[InstanceRow, Dataset]]] = defaultdict(list)
        for row in rows:
            try:
                header = _read_header(self.spool.incoming_path(row.key), self.predictor)
                view = (dicom_meta(header).view_position or "").strip().upper()
                if view not in FRONTAL_VIEWS:
                    raise NotFrontalError(
                        f"view position {view} is not frontal; the model reads PA/AP chest "
                        "films only"
                    )
            except (InvalidImageError, NotFrontalError) as exc:
                refused.append((row.key, exc.reason, str(exc)))
                continue
            frontal[row.site].append((row, header))
        triaged: list[tuple[str, float, str]] = []
        log_rows: list[dict[str, Any]] = []
        for site, items in frontal.items():
            paths = [self.spool.incoming_path(row.key) for row, _ in items]
            scored = iter_scored(
                self.predictor,
                paths,
                metadata={"site": site} if site else None,
                batch_size=self.settings.batch_size,
                workers=self.settings.decode_threads,
                enforce_qc=True,  # the same gate as /predict: no probability for a refused image
            )
            for (row, header), (_, outcome) in zip(items, scored, strict=True):
                if isinstance(outcome, InvalidImageError):
                    refused.append((row.key, outcome.reason, str(outcome)))
                    continue
                assert isinstance(outcome, Prediction)
                request_id = f"{row.source}-{row.key}"
                write_durably(self.spool.header_path(row.key), _header_bytes(header))
                triaged.append((row.key, outcome.prob_abnormal, request_id))
                log_rows.append(
                    {
                        **outcome.features,
                        "request_id": request_id,
                        "study_key": row.study,
                        "model_tag": outcome.model_tag,
                        "threshold": outcome.threshold,
                    }
                )
        if log_rows:
            logged = self.prediction_log.matched_keys(
                [("request_id", r["request_id"]) for r in log_rows]
            )
            self.prediction_log.append(
                [r for r in log_rows if ("request_id", r["request_id"]) not in logged]
            )
        self.spool.mark_outcomes(triaged, refused)
        by_key = {row.key: row for row in rows}
        for key, prob, _ in triaged:
            log.info(
                "instance %s of study %s triaged: p(abnormal)=%.4f",
                key,
                by_key[key].study,
                prob,
            )
        for key, reason, message in refused:
            log.warning(
                "instance %s of study %s refused (%s): %s", key, by_key[key].study, reason, message
            )
            summary.refused[reason] = summary.refused.get(reason, 0) + 1
        summary.triaged += len(triaged)
        return len(rows)

    def triage_pending(self) -> WorkSummary:
        """Triage every pending instance (no study is closed)."""
        summary = WorkSummary()
        while self.triage_batch(summary):
            pass
        return summary

    # -- studies -------------------------------------------------------------------------

    def close_study(self, study: str) -> ResultRow | None:
        """Make (or supersede) the result of one study from its evaluated instances."""
        from pydicom.uid import ComprehensiveSRStorage, generate_uid

        rows = self.spool.evaluated_instances(study)
        images = []
        for row in rows:
            try:
                header = _read_header(self.spool.header_path(row.key), self.predictor)
            except InvalidImageError as exc:  # the kept header is ours: should never happen
                log.error("header of instance %s lost (%s); left out of the result", row.key, exc)
                continue
            images.append((row, ImageResult(header, float(row.prob))))
        if not images:
            return None
        result = study_result(
            [image for _, image in images],
            rule=self.settings.study_rule,
            threshold=self.predictor.threshold,
            labels=self.predictor.class_names,
        )
        current = self.spool.current_result(study)
        version = 1 if current is None else current.version + 1
        series_uid = generate_uid() if current is None else current.series_uid
        previous = None
        if current is not None:
            previous = Dataset()
            previous.SOPClassUID = ComprehensiveSRStorage
            previous.SOPInstanceUID = current.sr_uid
            previous.SeriesInstanceUID = current.series_uid
            previous.StudyInstanceUID = images[0][1].header.StudyInstanceUID
        sr_uid = str(generate_uid())
        sr = build_sr(
            result,
            self.model,
            sr_uid=sr_uid,
            series_uid=series_uid,
            version=version,
            device_name=self.settings.ae_title,
            previous=previous,
        )
        files = [f"{sr_uid}.dcm"]
        write_durably(self.spool.outbox / files[0], part10_bytes(sr))
        if self.settings.secondary_capture:
            capture = self._secondary_capture(images, result, version)
            if capture is not None:
                files.append(f"{capture.SOPInstanceUID}.dcm")
                write_durably(self.spool.outbox / files[-1], part10_bytes(capture))
        record = self.spool.add_result(
            study=study,
            sr_uid=sr_uid,
            series_uid=str(series_uid),
            files=files,
            prob=result.prob_abnormal,
            label=result.label,
            rule=result.rule,
            model_tag=self.predictor.model_tag,
            instance_keys=[row.key for row, _ in images],
            destinations=self.settings.destination_names,
        )
        log.info(
            "study %s: result v%d %s, p(abnormal)=%.4f (%s of %d image(s)); queued for %s",
            study,
            record.version,
            record.label,
            record.prob,
            "maximum" if result.rule == "max" else "mean",
            record.n_images,
            ", ".join(self.settings.destination_names) or "no destination",
        )
        if self.on_result is not None:
            self.on_result()
        return record

    def _secondary_capture(
        self, images: list[tuple[InstanceRow, ImageResult]], result: Any, version: int
    ) -> Dataset | None:
        from pydicom.uid import generate_uid

        for row, image in sorted(images, key=lambda item: -item[1].prob_abnormal):
            path = self.spool.incoming_path(row.key)
            if not path.exists():
                continue
            try:
                display = read_image(path, self.predictor.limits).pixels
            except InvalidImageError:
                continue
            return build_secondary_capture(
                image.header,
                display,
                result,
                self.model,
                sop_uid=str(generate_uid()),
                series_uid=str(generate_uid(entropy_srcs=[row.study, "secondary capture"])),
                version=version,
            )
        log.warning("no received file left to draw the secondary capture on; SR only")
        return None

    def close_due_studies(
        self, *, force: bool = False, now: float | None = None
    ) -> list[ResultRow]:
        """Close every study that has been quiet long enough (``force``: whatever its age)."""
        quiet = 0.0 if force else self.settings.quiet_seconds
        out = []
        for study in self.spool.due_studies(quiet, now=float("inf") if force else now):
            record = self.close_study(study)
            if record is not None:
                out.append(record)
        return out

    # -- one pass ------------------------------------------------------------------------

    def run_once(self, *, force_close: bool = False, batches: int | None = None) -> WorkSummary:
        """Triage what is pending, close due studies, delete what retention allows.

        Args:
            force_close: close every study with triaged instances, quiet or not.
            batches: triage at most this many batches first (None: until nothing is pending).
                The listener passes 1, so that studies keep closing while instances keep
                arriving (a steady stream would otherwise hold every result back).
        """
        summary = WorkSummary()
        done = 0
        while (batches is None or done < batches) and self.triage_batch(summary):
            done += 1
        summary.results = self.close_due_studies(force=force_close)
        summary.housekeeping = self.spool.housekeeping(
            retention_seconds=self.settings.retention_hours * 3600,
            study_window_seconds=self.settings.study_window_hours * 3600,
        )
        return summary

    def next_close_at(self) -> float | None:
        """When the next open study becomes due (to sleep until then); None if none is open."""
        last = self.spool.last_received_of_open_studies()
        return None if last is None else last + self.settings.quiet_seconds


def wait_time(deadlines: list[float | None], *, idle: float = 1.0) -> float:
    """Seconds to sleep until the earliest deadline (at most ``idle``, at least 0)."""
    now = time.time()
    due = [d - now for d in deadlines if d is not None]
    return max(0.0, min([idle, *due]))
