"""Where a drift check's current rows come from: a prediction-log window or an image folder.

A source's :meth:`load` gives :class:`CurrentData`: the monitoring rows and a description of
where they came from (recorded as ``summary.json``'s ``source``, unreadable files included).
Rows already in hand (a notebook, a test) are passed as :class:`CurrentData` directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_triage.errors import ConfigError, DataError, InvalidImageError
from cxr_triage.state import state_layout

__all__ = [
    "CurrentData",
    "CurrentSource",
    "ImageFolder",
    "LogWindow",
    "current_from_images",
    "current_from_log",
]

log = logging.getLogger(__name__)

# Images per network call when scoring a folder (the Predictor splits further).
_SCORE_CHUNK = 256


@dataclass(frozen=True)
class CurrentData:
    """Current monitoring rows and where they came from.

    Attributes:
        rows: one row of monitoring features per image or prediction.
        source: ``kind`` (``log``, ``images`` or ``rows``), ``description`` (one line for
            people) and its details, recorded in the summary.
    """

    rows: pd.DataFrame
    source: dict[str, Any] = field(
        default_factory=lambda: {"kind": "rows", "description": "rows in hand"}
    )

    def load(self, package_dir: Path, site: str | None) -> CurrentData:
        """Itself: the rows are already in hand."""
        return self


@dataclass(frozen=True)
class LogWindow:
    """A window of the service's prediction log.

    A log that does not exist yet (no prediction served, e.g. on the first day) is an empty
    window, and the summary says so (``source.log_exists``, ``source.note``).

    Attributes:
        log: the SQLite log; None: the state folder's
            (:func:`cxr_triage.state.state_layout`).
        since, until: ISO 8601 times (UTC when no offset; a date alone is its midnight) or
            datetimes; rows with ``since <= ts < until``.
        last: only the most recent N rows of that window.
    """

    log: Path | None = None
    since: str | datetime | None = None
    until: str | datetime | None = None
    last: int | None = None

    @classmethod
    def from_options(
        cls,
        *,
        log: Path | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        last: int | None = None,
        hours: float | None = None,
        now: datetime | None = None,
    ) -> LogWindow:
        """The window the CLI's and the flow's options describe (``--hours H``: the last H).

        Raises:
            ConfigError: ``hours`` with ``since``, or ``hours`` not positive.
        """
        if hours is None:
            return cls(log=log, since=since, until=until, last=last)
        if since is not None:
            raise ConfigError("give --hours or --since, not both (--hours H means the last H)")
        if not hours > 0:
            raise ConfigError(f"the window must be a positive number of hours, got {hours}")
        start = (now or datetime.now(UTC)) - timedelta(hours=hours)
        return cls(log=log, since=start, until=until, last=last)

    @property
    def path(self) -> Path:
        return Path(self.log) if self.log else state_layout().prediction_log

    def describe(self) -> dict[str, Any]:
        """The window as recorded in the summary (times as ISO strings)."""
        since, until = (_iso(t) for t in (self.since, self.until))
        description = f"prediction log from {since or 'the start'} to {until or 'now'}"
        if self.last is not None:
            description += f", last {self.last}"
        return {
            "kind": "log",
            "description": description,
            "log": str(self.path),
            "since": since,
            "until": until,
            "last": self.last,
            "log_exists": self.path.is_file(),
        }

    def load(self, package_dir: Path, site: str | None) -> CurrentData:
        """The window's rows (``package_dir`` and ``site`` are not needed to read a log)."""
        source = self.describe()
        if not source["log_exists"]:
            source["note"] = (
                f"no prediction log at {self.path} yet (treated as empty: the service creates "
                "it with its first prediction)"
            )
        rows = current_from_log(
            self.path, since=self.since, until=self.until, last=self.last, with_feedback=True
        )
        return CurrentData(rows, source)


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images (DICOM, PNG, JPEG; searched recursively), scored with the package."""

    folder: Path

    def load(self, package_dir: Path, site: str | None) -> CurrentData:
        """Score the folder with the package; unreadable files are listed in the source."""
        rows, unreadable, non_images = current_from_images(package_dir, self.folder, site=site)
        description = f"images in {self.folder}"
        if unreadable:
            description += f", {len(unreadable)} unreadable"
        if non_images:
            description += f", {len(non_images)} non-image files set aside"
        return CurrentData(
            rows,
            {
                "kind": "images",
                "description": description,
                "folder": str(self.folder),
                "n_unreadable": len(unreadable),
                "unreadable": [{"file": f, "reason": r} for f, r in unreadable],
                "n_non_image": len(non_images),
                "non_image_files": [str(p) for p in non_images],
            },
        )


CurrentSource = LogWindow | ImageFolder | CurrentData


def current_from_log(
    log_path: Path,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    last: int | None = None,
    with_feedback: bool = False,
) -> pd.DataFrame:
    """A window of the prediction log as current data.

    Args:
        log_path: the service's prediction log.
        since, until: ISO 8601 times (UTC when no offset; a date alone is its midnight) or
            datetimes; rows with ``since <= ts < until``.
        last: only the most recent N rows of that window.
        with_feedback: add the fed-back reads (``true_label``, ``true_findings``).

    Returns:
        The rows in time order; none when the log does not exist (it is not created).

    Raises:
        ConfigError: a time is not ISO 8601 or ``last`` is below 1.
    """
    from cxr_triage.inference.predlog import PredictionLog, normalise_time

    if last is not None and last < 1:
        raise ConfigError(f"--last must be >= 1, got {last}")
    path = Path(log_path)
    if not path.is_file():
        for moment in (since, until):  # the same refusals as with a log
            if isinstance(moment, str):
                normalise_time(moment)
        return pd.DataFrame()
    predictions = PredictionLog(path)
    try:
        # A datetime (e.g. now - 24 h in a flow) is accepted too; the log compares ISO strings.
        return predictions.read(
            since=_iso(since), until=_iso(until), last=last, with_feedback=with_feedback
        )
    finally:
        predictions.close()


def _iso(moment: str | datetime | None) -> str | None:
    return moment.isoformat() if isinstance(moment, datetime) else moment


def current_from_images(
    package_dir: Path, folder: Path, *, site: str | None = None
) -> tuple[pd.DataFrame, list[tuple[str, str]], list[Path]]:
    """Score every file under ``folder`` through the package's Predictor.

    Hidden files and folders (``.name``) are left out; labels tables and other non-image files
    (by suffix) are set apart and returned; every other file is either scored or reported as
    unreadable, never skipped silently. Scoring goes through
    :func:`cxr_triage.inference.batch.iter_scored`, the one scoring loop.

    Args:
        package_dir: the model package to score with.
        folder: images (DICOM, PNG, JPEG), searched recursively.
        site: the site the images come from (fills the ``site`` column).

    Returns:
        The monitoring rows of the usable images, ``(file, reason)`` for every file that could
        not be used, and the non-image files found.

    Raises:
        DataError: ``folder`` is not a folder or holds no files; the package is incomplete.
    """
    from cxr_triage.inference.batch import collect_files, iter_scored
    from cxr_triage.inference.predictor import Predictor

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass --images FOLDER with the images to check")
    files, non_images = collect_files([folder])
    if not files:
        raise DataError(
            f"{folder} holds no image files ({len(non_images)} other files); pass the folder "
            "that contains the images"
        )
    rows, unreadable = [], []
    scored = iter_scored(
        Predictor(package_dir),
        files,
        metadata={"site": site} if site else None,
        batch_size=_SCORE_CHUNK,
    )
    for path, outcome in scored:
        if isinstance(outcome, InvalidImageError):
            unreadable.append((str(path), f"{outcome.reason}: {outcome}"))
        else:
            rows.append(outcome.features)
    if unreadable:
        log.warning(
            "%d of %d files under %s are unreadable (first: %s: %s)",
            len(unreadable),
            len(files),
            folder,
            *unreadable[0],
        )
    return pd.DataFrame(rows), unreadable, non_images
