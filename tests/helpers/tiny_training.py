"""A tiny training run (small_cnn, 32 px, 2 epochs) in a fresh Python process: its weights' hash.

Used by ``integration/test_reproducibility.py`` (the golden weights under the pinned CPU
instruction set) and its ``pinned_run`` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from cxr_triage.numerics import ISA_ENV, PINNED_ISA

TRAIN_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys, tempfile
    from pathlib import Path
    import numpy as np, torch
    from cxr_triage.config import FinetuneOptions
    from cxr_triage.models.finetune import predict_scores, train_classifier
    from cxr_triage.models.networks import Classifier, build_backbone

    def blobs(n, seed, size=32):
        rng = np.random.default_rng(seed)
        y = (np.arange(n) % 2).astype(np.int64)
        yy, xx = np.mgrid[:size, :size]
        x = rng.normal(90, 20, size=(n, size, size))
        for i in np.flatnonzero(y):
            cy, cx = rng.uniform(10, size - 10, size=2)
            x[i] += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.5)
        return np.clip(x, 0, 255).astype(np.uint8), y

    x, y = blobs(48, 1)
    vx, vy = blobs(16, 2)
    torch.manual_seed(0)
    model = Classifier(build_backbone("small_cnn"), 1)
    options = FinetuneOptions(epochs=2, batch_size=16, lr=3e-3, patience=None, augment=True,
                              seed=7, num_threads=int(sys.argv[1]))
    with tempfile.TemporaryDirectory() as tmp:
        train_classifier(model, x, y, vx, vy, options=options, checkpoint_dir=Path(tmp),
                         device="cpu")
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        digest.update(key.encode() + state[key].detach().contiguous().numpy().tobytes())
    print(json.dumps({"sha": digest.hexdigest()[:16],
                      "isa": torch.backends.cpu.get_cpu_capability(),
                      "scores": predict_scores(model, vx).tolist()}))
    """
)


def train_in_subprocess(threads: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ISA}
    env.pop(ISA_ENV, None)
    return env
