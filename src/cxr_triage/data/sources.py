"""Sources: which files to ingest and the label row of each.

=============== ===================================================================================
source          layout
=============== ===================================================================================
``synthetic``   the generator's output: ``<dir>/<site>/labels.csv`` + ``<site>/images/*.dcm``
                (or one such site folder directly); the site is the folder name
``chestxray14`` NIH ChestX-ray14: ``Data_Entry_2017*.csv[.gz]`` and the images anywhere below
                (``images_001/images/...`` as unpacked); ``test_list.txt``/``train_val_list.txt``
                beside the CSV give the official split when present
``folder``      PNG/JPEG/DICOM files (by extension: .png .jpg .jpeg .dcm .dicom) anywhere below,
                plus an optional labels CSV (default ``labels.csv`` when it exists)
``dicom``       a DICOM tree: every file below counts (DICOM often has no extension), plus an
                optional labels CSV keyed by relative path or file name
=============== ===================================================================================

Every file is accounted for: a file without a label row, a label row without a file, and (for
``folder``) a file that is not an image by its extension are counted and reported, never skipped
silently.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxr_triage.data.labels import read_labels_table
from cxr_triage.errors import ConfigError, DataError

__all__ = ["NON_IMAGE_SUFFIXES", "Discovery", "SourceItem", "discover"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
_NIH_INDEX = re.compile(r"(\d{8}_\d{3}\.png)$")
# Files that travel with images (labels tables, notes, reports) but are never images: counted
# and reported as such, not as unreadable images. DICOM often has no extension, so any other
# file is tried as an image.
NON_IMAGE_SUFFIXES = frozenset(
    {".csv", ".gz", ".txt", ".md", ".json", ".yaml", ".yml", ".tsv", ".html", ".pdf", ".xlsx"}
)


@dataclass(frozen=True)
class SourceItem:
    """One candidate file and its label row (``labels`` is empty for unlabelled sources)."""

    path: Path
    rel_path: str
    labels: dict[str, object] = field(default_factory=dict)
    site: str = ""


@dataclass
class Discovery:
    """What a source holds: files to read, problems found before reading, files not considered."""

    items: list[SourceItem]
    rejects: list[dict[str, str]]
    ignored_files: int = 0  # non-image files in a folder source (CSV, text...), counted
    labelled: bool = True


def _files_below(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _match(
    table: pd.DataFrame, files: list[Path], root: Path, where: str, key=None, site: str = ""
) -> Discovery:  # noqa: ANN001
    """Pair label rows with files by relative path, else by file name (or ``key`` of the name)."""
    rel = {p.relative_to(root).as_posix(): p for p in files}
    by_name: dict[str, list[Path]] = {}
    for p in files:
        by_name.setdefault(key(p.name) if key else p.name, []).append(p)
    items, rejects, used = [], [], set()
    for row in table.to_dict("records"):
        name = row["image"]
        path = rel.get(name)
        if path is None:
            candidates = by_name.get(key(Path(name).name) if key else Path(name).name, [])
            if len(candidates) > 1:
                rejects.append(
                    {
                        "source_path": name,
                        "reason": "ambiguous_file",
                        "message": f"{len(candidates)} files named {Path(name).name}; "
                        "give the relative path in the labels table",
                    }
                )
                continue
            path = candidates[0] if candidates else None
        if path is None:
            rejects.append(
                {
                    "source_path": name,
                    "reason": "file_missing",
                    "message": f"listed in {where} but no such file below {root}",
                }
            )
            continue
        used.add(path)
        items.append(
            SourceItem(path, path.relative_to(root).as_posix(), row, row.get("site") or site)
        )
    for p in files:
        if p not in used:
            rejects.append(
                {
                    "source_path": p.relative_to(root).as_posix(),
                    "reason": "no_label_row",
                    "message": f"file has no row in {where}; add one or move the file",
                }
            )
    return Discovery(items, rejects)


def _nih_key(name: str) -> str:
    m = _NIH_INDEX.search(name)
    return m.group(1) if m else name


def _official_split(root: Path, table: pd.DataFrame) -> pd.DataFrame:
    test_list, train_list = root / "test_list.txt", root / "train_val_list.txt"
    if not test_list.exists():
        return table
    test = set(test_list.read_text().split())
    train = set(train_list.read_text().split()) if train_list.exists() else set()
    key = table["image"].map(_nih_key)
    table = table.copy()
    table["official_split"] = [
        "test" if k in test else "train_val" if (k in train or not train) else "" for k in key
    ]
    return table


def discover(
    source: str, source_dir: Path, labels_csv: str | None = None, site: str | None = None
) -> Discovery:
    """List the candidate files of a source and pair them with their labels.

    Args:
        source: ``synthetic``, ``chestxray14``, ``folder`` or ``dicom``.
        source_dir: the source's root folder.
        labels_csv: labels table relative to ``source_dir`` (a source-specific default if None).
        site: site name for images whose labels carry none.

    Raises:
        ConfigError: unknown source or missing folder.
        DataError: unusable labels table.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ConfigError(
            f"source folder {source_dir} does not exist; check ingest.source_dir "
            "(for the synthetic default, run `dvc repro synth` first)"
        )
    if source == "synthetic":
        return _discover_synthetic(source_dir, site)
    if source == "chestxray14":
        return _discover_chestxray14(source_dir, labels_csv, site)
    if source in ("folder", "dicom"):
        return _discover_files(source, source_dir, labels_csv, site)
    raise ConfigError(
        f"ingest.source: unknown source {source!r}; use synthetic, chestxray14, folder or dicom"
    )


def _discover_synthetic(source_dir: Path, site: str | None) -> Discovery:
    """The synthetic layout: ``<site>/labels.csv`` and ``<site>/images/`` per site (or one)."""
    tables = (
        [source_dir / "labels.csv"]
        if (source_dir / "labels.csv").exists()
        else sorted(source_dir.glob("*/labels.csv"))
    )
    if not tables:
        raise DataError(
            f"{source_dir} holds no synthetic site (no */labels.csv); generate one "
            "with `cxr-triage synth` or `dvc repro synth`"
        )
    out = Discovery([], [])
    for table_path in tables:
        site_dir = table_path.parent
        part = _match(
            read_labels_table(table_path),
            _files_below(site_dir / "images"),
            site_dir,
            str(table_path),
            site=site or site_dir.name,
        )
        prefix = site_dir.relative_to(source_dir).as_posix()
        out.items += [
            SourceItem(i.path, f"{prefix}/{i.rel_path}".lstrip("./"), i.labels, i.site)
            for i in part.items
        ]
        out.rejects += part.rejects
    return out


def _discover_chestxray14(source_dir: Path, labels_csv: str | None, site: str | None) -> Discovery:
    """NIH ChestX-ray14: the Data_Entry table's rows with an image file here; the rest counted."""
    if labels_csv:
        table_path = source_dir / labels_csv
    else:
        found = sorted(source_dir.glob("Data_Entry_2017*.csv*"))
        if not found:
            raise DataError(
                f"no Data_Entry_2017*.csv(.gz) in {source_dir}; point "
                "ingest.labels_csv at the NIH metadata table"
            )
        table_path = found[-1]
    table = read_labels_table(table_path)
    files = [p for p in _files_below(source_dir) if p.suffix.lower() == ".png"]
    # The full NIH table lists 112k images; a partial download is the common case, so rows
    # without a file are counted in the summary rather than listed one by one.
    found_keys = {_nih_key(p.name) for p in files}
    present = table["image"].map(_nih_key).isin(found_keys)
    missing = int((~present).sum())
    table = _official_split(table_path.parent, table[present].reset_index(drop=True))
    out = _match(table, files, source_dir, str(table_path), key=_nih_key, site=site or "nih")
    if missing:
        log.info(
            "%d rows of %s have no image file here (partial download)",
            missing,
            table_path.name,
        )
        out.rejects.append(
            {
                "source_path": table_path.name,
                "reason": "rows_without_file",
                "message": f"{missing} listed images are not below {source_dir}",
            }
        )
    return out


def _discover_files(
    source: str, source_dir: Path, labels_csv: str | None, site: str | None
) -> Discovery:
    """``folder`` (image files) or ``dicom`` (any file but known non-images), labelled or not."""
    files = _files_below(source_dir)
    table_path = source_dir / (labels_csv or "labels.csv")
    if labels_csv and not table_path.exists():
        raise ConfigError(f"labels table {table_path} not found; fix ingest.labels_csv")
    files = [p for p in files if p != table_path]
    ignored = 0
    if source == "folder":
        ignored = sum(p.suffix.lower() not in _IMAGE_SUFFIXES for p in files)
        files = [p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
    else:
        ignored = sum(p.suffix.lower() in NON_IMAGE_SUFFIXES for p in files)
        files = [p for p in files if p.suffix.lower() not in NON_IMAGE_SUFFIXES]
    if table_path.exists():
        out = _match(
            read_labels_table(table_path),
            files,
            source_dir,
            str(table_path),
            site=site or source_dir.name,
        )
    else:
        out = Discovery(
            [
                SourceItem(p, p.relative_to(source_dir).as_posix(), {}, site or source_dir.name)
                for p in files
            ],
            [],
            labelled=False,
        )
    out.ignored_files = ignored
    return out
