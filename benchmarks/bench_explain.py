"""Explanation cost: p50/p99 seconds per method on a 2048x2048 DICOM, beside plain scoring.

Each call is what ``/explain`` and ``cxr-triage explain`` do (``explain_source``: decode, quality
gate, score, map, at the image's size), timed end to end; the same-run baseline is
``Predictor.predict`` on the same file (decode, gate, score). Packages:

- the demo package (``--package``, default ``models/package``; the synthetic default's winner at
  its training size);
- with ``--densenet``, a DenseNet121-at-224 package built here (random weights, a logistic
  regression head on its 1024 features: the cost of a CheXNet-sized network; weights do not
  change it).

The file is the shared real PA chest CR (``../shared/data/dicom/RG1_UNCR.dcm``) resampled to
2048x2048, 12 bits (or drawn noise when the shared data are absent).

    python benchmarks/bench_explain.py [--package models/package] [--repeats 20] [--densenet]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxr_triage.inference.explain import Explainer, choose_method, explain_source
from cxr_triage.inference.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
SHARED_CR = REPO.parent / "shared" / "data" / "dicom" / "RG1_UNCR.dcm"


def dicom_2048(folder: Path, side: int = 2048) -> Path:
    """A ``side`` x ``side`` 12-bit DX DICOM of a real chest radiograph (or noise)."""
    from PIL import Image

    from cxr_triage.data.synth.dicom import image_dataset
    from cxr_triage.io.images import read_image

    if SHARED_CR.is_file():
        grey = read_image(SHARED_CR).pixels
    else:
        grey = np.random.default_rng(0).random((side, side), dtype=np.float32)
    resized = np.asarray(
        Image.fromarray(grey.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR)
    )
    pixels = np.clip(np.rint(resized * 4095), 0, 4095).astype(np.uint16)
    ds = image_dataset(pixels, bits_stored=12, modality="DX")
    path = folder / "chest-2048.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def densenet_package(folder: Path, image_size: int = 224, n_reference: int = 48) -> Path:
    """A DenseNet121-at-``image_size`` package (random weights, logistic regression head)."""
    import pandas as pd

    from cxr_triage.config import ExplainParams, QcParams, SimilarParams
    from cxr_triage.evaluation.calibration import make_calibrator
    from cxr_triage.inference.package import (
        PackageSources,
        RadiologistSettings,
        ReferenceSet,
        assemble_package,
    )
    from cxr_triage.io.records import ImageLimits
    from cxr_triage.models.artifacts import save_backbone
    from cxr_triage.models.embed import embed_images
    from cxr_triage.models.networks import build_backbone
    from cxr_triage.models.transfer import fit_candidate, save_candidate
    from cxr_triage.vocabulary import FINDING_COLUMNS

    rng = np.random.default_rng(0)
    backbone = build_backbone("densenet121").eval()
    info = {"arch": "densenet121", "embedding_dim": backbone.embedding_dim, "image_size": 224}
    save_backbone(folder / "backbone", backbone, info)
    images = rng.integers(0, 256, (n_reference, image_size, image_size), dtype=np.uint8)
    y = np.arange(n_reference) % 2
    embeddings = embed_images(backbone, images, mode="eager", progress=False)
    candidate = fit_candidate("logreg", embeddings, y, np.arange(n_reference), cv_folds=2)
    (folder / "transfer").mkdir()
    save_candidate(candidate, folder / "transfer" / "logreg.skops")
    calibrator = make_calibrator("platt").fit(y, rng.random(n_reference))
    for name, body in (
        (
            "compare",
            {"candidate": "logreg", "calibrator": calibrator.to_dict(), "reason": "bench"},
        ),
        ("threshold", {"candidate": "logreg", "threshold": 0.5, "policy": "bench"}),
    ):
        (folder / name).mkdir()
        file = "winner.json" if name == "compare" else "threshold.json"
        (folder / name / file).write_text(json.dumps(body))
    manifest = pd.DataFrame(
        {
            "image_id": [f"ref{i}" for i in range(n_reference)],
            "split": ["train", "val"] * (n_reference // 2),
            "label": np.where(y == 1, "abnormal", "normal"),
            **{c: 0 for c in FINDING_COLUMNS},
        }
    )
    out = folder / "package"
    assemble_package(
        out,
        sources=PackageSources(
            folder / "backbone",
            folder / "transfer",
            folder / "finetune",
            folder / "compare",
            folder / "threshold",
        ),
        image_size=image_size,
        reference=ReferenceSet(images, manifest),
        summary_components=8,
        limits=ImageLimits(),
        settings=RadiologistSettings(QcParams(), ExplainParams(), SimilarParams()),
    )
    return out


def _timed(fn, repeats: int) -> np.ndarray:  # noqa: ANN001
    fn()  # warm-up (imports, first allocation)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.asarray(out)


def bench(package: Path, path: Path, repeats: int, threads: int) -> list[dict[str, object]]:
    predictor = Predictor(package, num_threads=threads)
    rows = []
    base = _timed(lambda: predictor.predict([path]), repeats)
    rows.append({"method": "predict (baseline)", "times": base})
    methods = ["occlusion"]
    if choose_method(predictor.info)[0] == "gradcam":
        methods.insert(0, "gradcam")
    for method in methods:
        explainer = Explainer(predictor, method=method)
        times = _timed(lambda e=explainer: explain_source(e, path, enforce_qc=False), repeats)
        rows.append({"method": method, "times": times})
    label = f"{predictor.info['candidate']} {predictor.info.get('torch_network') or 'onnx'} at "
    label += f"{predictor.image_size} px"
    for row in rows:
        t = row["times"]
        row.update(
            package=label,
            p50=float(np.percentile(t, 50)),
            p99=float(np.percentile(t, 99)),
            ratio=float(np.percentile(t, 50) / np.percentile(base, 50)),
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / "models" / "package")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--densenet", action="store_true", help="also a DenseNet121 at 224")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        path = dicom_2048(Path(tmp))
        rows += bench(args.package, path, args.repeats, args.threads)
        if args.densenet:
            rows += bench(densenet_package(Path(tmp)), path, args.repeats, args.threads)
    print(f"explain on a 2048x2048 DICOM, {args.repeats} calls each, {args.threads} threads")
    print("| package | method | p50 s | p99 s | p50 / predict p50 |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['package']} | {r['method']} | {r['p50']:.3f} | {r['p99']:.3f} "
            f"| {r['ratio']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
