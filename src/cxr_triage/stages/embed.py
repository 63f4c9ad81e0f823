"""``embed`` stage: frozen backbone -> one embedding per image, every split, manifest row order."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cxr_triage.atomic import atomic_path, write_json_atomically
from cxr_triage.config import Params
from cxr_triage.data.dataset import load_dataset
from cxr_triage.models.artifacts import load_backbone
from cxr_triage.stages._entry import run_stage

log = logging.getLogger(__name__)


def run(params: Params) -> dict[str, object]:
    """Write ``paths.embed_dir/embeddings.npy`` (float32 ``(N, D)``) and ``embed.json``."""
    from cxr_triage.models.embed import embed_images

    data = load_dataset(params.paths.ingest_dir, params.paths.split_dir)
    model, info = load_backbone(Path(params.paths.backbone_dir))
    mode = "onnx" if info["format"] == "onnx" else params.embed.mode
    start = time.perf_counter()
    embeddings = embed_images(model, data.pixels, batch_size=params.embed.batch_size, mode=mode)
    seconds = time.perf_counter() - start
    out = Path(params.paths.embed_dir)
    with atomic_path(out / "embeddings.npy") as tmp:
        np.save(tmp, embeddings)
    # No timing in the output: a DVC-tracked file must hash the same on every run.
    summary = {"n_images": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]), "mode": mode}
    write_json_atomically(out / "embed.json", summary)
    log.info("embed: %s in %.1f s (%.1f images/s)", summary, seconds, len(embeddings) / seconds)
    return summary


def main() -> None:
    run_stage("embed", run)


if __name__ == "__main__":
    main()
