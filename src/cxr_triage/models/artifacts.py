"""Trained artifacts on disk: the backbone, the fine-tuned classifier, and scoring any candidate.

Formats are safe to load (safetensors + JSON, skops for scikit-learn; never pickle):

- backbone dir: ``backbone.safetensors`` (or ``backbone.onnx``) + ``backbone.json``;
- fine-tune dir: ``model.safetensors`` + ``model.json``;
- transfer dir: ``<candidate>.skops`` per classifier.

Scoring a trained candidate goes through a model package (:mod:`cxr_triage.inference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from cxr_triage.atomic import atomic_path, write_json_atomically
from cxr_triage.errors import DataError

__all__ = [
    "FINETUNED",
    "load_backbone",
    "load_finetuned",
    "read_json",
    "save_backbone",
    "save_finetuned",
    "save_state",
]

FINETUNED = "finetuned"  # the candidate name of the end-to-end fine-tuned network


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing; run the stage that writes it (dvc repro)") from exc


def save_state(module: Any, path: Path) -> None:
    """A torch module's weights as one safetensors file (written atomically)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def save_backbone(directory: Path, backbone: Any, info: dict[str, Any]) -> None:
    """Save a torch backbone's weights and what is needed to rebuild it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_state(backbone, directory / "backbone.safetensors")
    write_json_atomically(directory / "backbone.json", {"format": "torch", **info})


def load_backbone(directory: Path) -> tuple[Any, dict[str, Any]]:
    """The frozen backbone (torch ``Backbone`` or ``OnnxEmbedder``) and its ``backbone.json``."""
    info = read_json(directory / "backbone.json")
    if info["format"] == "onnx":
        from cxr_triage.models.weights import OnnxEmbedder

        return OnnxEmbedder(directory / "backbone.onnx"), info
    from cxr_triage.models.networks import build_backbone

    backbone = build_backbone(info["arch"])
    backbone.load_state_dict(load_file(str(directory / "backbone.safetensors")))
    return backbone.eval(), info


def save_finetuned(directory: Path, classifier: Any, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_state(classifier, directory / "model.safetensors")
    write_json_atomically(directory / "model.json", info)


def load_finetuned(directory: Path) -> tuple[Any, dict[str, Any]]:
    """The fine-tuned classifier (backbone + 1-logit head) in eval mode, and its ``model.json``."""
    from cxr_triage.models.networks import Classifier, build_backbone

    info = read_json(directory / "model.json")
    model = Classifier(build_backbone(info["arch"]), 1)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval(), info
