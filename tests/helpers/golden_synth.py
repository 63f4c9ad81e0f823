"""The synthetic generator's golden sets: the files whose md5s must never change by machine.

Shared by ``unit/test_synth_reproducibility.py`` (the hashes match the recorded digest) and
``integration/test_synth_simd.py`` (the same files with numpy's SIMD dispatch switched off).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cxr_triage.data.synth import SynthConfig, generate_dataset

# Every knob spelled out, so that retuning the defaults does not move the golden hashes.
GOLDEN_CONFIG = SynthConfig(
    lesion_contrast=(0.6, 1.3),
    lesion_size=(0.6, 1.3),
    subtle_fraction=0.25,
    subtle_scale=0.3,
    max_findings=3,
    label_noise=0.06,
    anatomy_variation=1.0,
    pose_jitter=1.0,
    ap_abnormal_ratio=2.0,
    max_followups=5,
    prevalence=0.8,
    image_size=96,
)
# (n, site, seed): a DX site with a gamma below 1, a MONOCHROME1 CR site, the drift site.
GOLDEN_SETS = ((8, "hospital_b", 11), (6, "hospital_c", 12), (3, "new_hospital", 13))
# md5 over "<set>/<relative path> <md5 of the file>" lines; recorded with numpy 2.4.6 and
# pydicom 3.0.2 (an AVX-512 machine, and the same with AVX-512 and AVX2 disabled). If the
# generator changes on purpose, run digest() and record the new value.
GOLDEN_DIGEST = "ec4683f30c7dcbb0d925d34d3919a816"


def file_hashes(root: Path) -> dict[str, str]:
    """Generate the golden sets under ``root``; md5 of every file by relative path."""
    hashes = {}
    for n, site, seed in GOLDEN_SETS:
        out = root / f"{site}-{seed}"
        generate_dataset(out, n, site, seed, config=GOLDEN_CONFIG)
        for path in sorted(out.rglob("*")):
            # The lesion boxes (issue 14) came later: the digest still covers exactly the
            # images and labels it covered before them, proving that they changed no byte.
            if path.is_file() and path.name != "lesion_boxes.csv":
                key = f"{site}-{seed}/{path.relative_to(out).as_posix()}"
                hashes[key] = hashlib.md5(path.read_bytes()).hexdigest()
    return hashes


def digest(hashes: dict[str, str]) -> str:
    lines = "".join(f"{key} {value}\n" for key, value in sorted(hashes.items()))
    return hashlib.md5(lines.encode()).hexdigest()
