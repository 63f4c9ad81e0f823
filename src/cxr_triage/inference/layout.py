"""The model package's layout: file names, format version, and reading its ``package.json``.

A package folder holds everything :class:`~cxr_triage.inference.predictor.Predictor` needs, in
formats that are safe to load (ONNX, skops, JSON, npz; never pickle):

- ``package.json``: candidate, kind (``finetuned``, ``transfer`` or ``ensemble``), image size,
  class names,
  threshold and its operating point, the calibrator, the input limits, metrics, provenance
  (data and code versions) and the model tag (``cxr-triage:<content hash>``);
- ``network.onnx``: the network on normalised images. For a fine-tuned winner its output is the
  embedding followed by the logit, ``(B, D + 1)``; for a transfer winner the frozen embedding
  ``(B, D)``. Every score comes from it;
- ``network.safetensors``: the same network's torch weights (``package.json`` ``torch_network``:
  architecture and head), for Grad-CAM and the sanity checks of explanations; absent when the
  backbone was supplied as ONNX only;
- ``classifier.skops``: the transfer winner's classifier (transfer only);
- ``member-<candidate>.skops``: each frozen-feature member of an ensemble winner. An ensemble's
  network outputs the frozen backbone's embedding, followed by the fine-tuned network's logit
  when that network is a member (``members`` in ``package.json``: candidate, kind, calibrator);
  its probability is the ensemble calibrator applied to the mean of the members' calibrated
  probabilities;
- ``projection.npz``: mean and principal axes of the train embeddings, for the embedding summary
  logged with every prediction (monitoring);
- ``qc.npz``: the input quality gate's content model (``package.json`` ``qc``: its settings);
- ``neighbours.npz``: the reference set of similar-case search (train and val images:
  pseudonymous ids, labels, findings, embeddings, thumbnails);
- ``reference.parquet``: monitoring features of the val/test images (written by ``package``);
- ``model_card.md``: the model card (written by ``package``).

Format 2 added the torch weights, the quality gate, the similar-case reference and the card;
a format-1 package is refused with how to rebuild it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr_triage.errors import DataError

__all__ = [
    "CLASSIFIER_FILE",
    "FORMAT_VERSION",
    "KINDS",
    "MEMBER_FILE",
    "MODEL_CARD_FILE",
    "MODEL_NAME",
    "NEIGHBOURS_FILE",
    "NETWORK_FILE",
    "PACKAGE_FILE",
    "PROJECTION_FILE",
    "PROVENANCE_KEYS",
    "QC_FILE",
    "REFERENCE_FILE",
    "TORCH_NETWORK_FILE",
    "read_package_info",
]

MODEL_NAME = "cxr-triage"  # the BentoML model name; the version is the package's content hash
FORMAT_VERSION = 2
PACKAGE_FILE = "package.json"
NETWORK_FILE = "network.onnx"
TORCH_NETWORK_FILE = "network.safetensors"
CLASSIFIER_FILE = "classifier.skops"
PROJECTION_FILE = "projection.npz"
QC_FILE = "qc.npz"
NEIGHBOURS_FILE = "neighbours.npz"
REFERENCE_FILE = "reference.parquet"
MEMBER_FILE = "member-{}.skops"  # .format(candidate)
MODEL_CARD_FILE = "model_card.md"
KINDS = ("finetuned", "transfer", "ensemble")
# Keys of package.json that describe where a model came from, not what it computes: they are
# left out of the model tag, so that re-packaging identical weights gives the same tag.
PROVENANCE_KEYS = ("model_tag", "versions")
_REQUIRED = (
    "kind",
    "image_size",
    "threshold",
    "class_names",
    "calibrator",
    "limits",
    "qc",
    "explain",
    "similar",
)


def read_package_info(package_dir: str | Path) -> dict[str, Any]:
    """``package.json`` of a package folder, checked for the keys the Predictor needs.

    Raises:
        DataError: not a package folder, an unreadable file, or a package of another format.
    """
    path = Path(package_dir) / PACKAGE_FILE
    if not path.is_file():
        raise DataError(
            f"{package_dir} is not a model package (no {PACKAGE_FILE}); run `dvc repro package` "
            "or pass the folder it wrote (models/package)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is unreadable ({exc}); rebuild it with `dvc repro package`"
        ) from exc
    missing = [key for key in _REQUIRED if key not in info]
    version = info.get("format_version")
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise DataError(
            f"{path} is a format-{version} model package, from before explanations, similar "
            f"cases and the input quality gate (format {FORMAT_VERSION}); rebuild it with this "
            "version (`dvc repro package`), then register and promote the new tag "
            "(`cxr-triage register models/package`, `cxr-triage promote TAG --reason ...`)"
        )
    if missing or version != FORMAT_VERSION or info.get("kind") not in KINDS:
        raise DataError(
            f"{path} is not a format-{FORMAT_VERSION} model package (format {version!r}, kind "
            f"{info.get('kind')!r}, missing {missing or 'nothing'}); rebuild it with this "
            "version: `dvc repro package`"
        )
    return info
