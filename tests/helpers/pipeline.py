"""A tiny trained pipeline up to a model package, built once per test session.

Used by the serving, monitoring and orchestration tests: they need a real package (real
network, calibrator, threshold and monitoring reference), not a mock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from cxr_triage.config import Params, parse_section
from cxr_triage.data.synth import SynthConfig

REPO = Path(__file__).resolve().parents[2]

# 64 px synthetic images: enough for the generator's tests, seconds to write.
SMALL_SYNTH = SynthConfig(image_size=64)


def tiny_params_data(root: Path | None = None) -> dict:
    """The repository's params.yaml scaled down to seconds: few images, 32 px, 2 epochs.

    Args:
        root: prefix for every path (None keeps them relative, as in a repository).
    """
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    if root is not None:
        data["paths"] = {k: str(root / v) for k, v in data["paths"].items()}
    data["synth"] = {"sites": {"hospital_a": 40, "hospital_c": 32}, "workers": 1}
    data["ingest"].update(image_size=32, workers=1, source_dir=data["paths"]["synth_dir"])
    train = {
        "epochs": 2,
        "batch_size": 16,
        "patience": None,
        "num_threads": 1,
        "augment": True,
        "mixed_precision": False,
    }
    data["backbone"]["pretrain"].update(train)
    data["finetune"].update(train, freeze_backbone_epochs=0)
    data["transfer"].update(candidates=["logreg", "knn"], n_jobs=1)
    data["finetune"].update(cv_repeats=1, inner_val_frac=0.2)
    data["compare"].update(
        n_boot=50, calibration_folds=2, cv_folds=3, cv_repeats=2, nested_inner_folds=2
    )
    data["threshold"]["n_boot"] = 50
    data["evaluate"].update(n_boot=50, min_slice_count=5)
    data["package"].update(register=False, build_bento=False)
    # Tests send small drawn DICOMs (make_dicom's 48x64 ramps), which are no chest films: the
    # tiny package refuses only by header (lateral, children); tests/integration/test_qc_gate.py
    # checks the content rules with refusing settings.
    data["qc"].update(min_size_px=32, benchmark_dir=None)
    data["qc"]["actions"].update(inverted="warn", rotated="warn")
    data["explain"].update(max_images=8, sanity_images=2, n_steps=5, n_boot=50, bbox_csv=None)
    return data


@dataclass(frozen=True)
class TinyPipeline:
    root: Path
    params: Params

    @property
    def package_dir(self) -> Path:
        return Path(self.params.paths.package_dir)


def build_tiny_pipeline(
    root: Path, after_synth: Callable[[Params], None] | None = None
) -> TinyPipeline:
    """Run every stage's ``run()`` from synth to package under ``root``.

    Args:
        root: the folder every path goes under.
        after_synth: called with the params once the synthetic source exists (e.g. to corrupt
            its labels for a deliberately worse model).
    """
    from cxr_triage.stages import (
        backbone,
        compare,
        embed,
        evaluate,
        finetune,
        ingest,
        package,
        split,
        synth,
        threshold,
        transfer,
    )

    params = parse_section(Params, tiny_params_data(root), "")
    synth.run(params)
    if after_synth is not None:
        after_synth(params)
    stages = (ingest, split, backbone, embed, transfer, finetune, compare, threshold)
    for stage in (*stages, evaluate, package):
        stage.run(params)
    return TinyPipeline(root, params)


def stub_package(folder: Path, reference: pd.DataFrame, tag: str = "cxr-triage:stub") -> Path:
    """A package folder with only what monitoring reads: ``package.json`` and the reference.

    No network: it cannot score images, only be monitored against (frames in hand).
    """
    from cxr_triage.inference.layout import FORMAT_VERSION, PACKAGE_FILE, REFERENCE_FILE

    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": FORMAT_VERSION,
        "kind": "transfer",
        "image_size": 32,
        "class_names": ["normal", "abnormal"],
        "threshold": 0.5,
        "operating_point": {"policy": "target_sensitivity", "target": 0.95, "threshold": 0.5},
        "calibrator": {"method": "identity"},
        "limits": {},
        "qc": {},
        "explain": {},
        "similar": {},
        "model_tag": tag,
    }
    (folder / PACKAGE_FILE).write_text(json.dumps(info))
    reference.to_parquet(folder / REFERENCE_FILE, index=False)
    return folder
