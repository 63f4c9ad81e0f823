"""The generator's difficulty and content knobs (``params.yaml`` ``synth`` section feeds them)."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_triage.errors import ConfigError
from cxr_triage.vocabulary import FINDINGS

__all__ = ["SynthConfig"]


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty and content knobs of the generator (defaults give a realistic, imperfect task).

    Args:
        lesion_contrast: range of the per-finding contrast multiplier (1 = a clearly visible
            lesion of that kind); drawn uniformly per finding.
        lesion_size: range of the per-finding size multiplier (1 = typical size of that kind).
        subtle_fraction: fraction of abnormal images drawn subtle: every finding at
            ``subtle_scale`` times its contrast and at the smallest size of ``lesion_size``.
            These are what keeps a good model well below AUROC 1.0.
        subtle_scale: contrast multiplier of subtle findings.
        max_findings: most findings per abnormal image (1 to 14); the count is drawn with
            decreasing probability, as in ChestX-ray14.
        label_noise: fraction of images whose content disagrees with the label, as in report-mined
            labels: a labelled abnormal image drawn without visible finding, or a "No Finding"
            image with an unlabelled faint finding.
        anatomy_variation: scale of normal anatomical variability (heart and lung size and shape,
            diaphragm height, breast and rib density); 0 makes all patients alike.
        pose_jitter: scale of per-image rotation (about 3 degrees at 1), translation and scale.
        ap_abnormal_ratio: how much more often abnormal images are AP than normal ones (about 2 in
            real data); 1 removes the view shortcut.
        max_followups: most images per patient (follow-ups share sex, age, anatomy and chronic
            findings; their labels may differ).
        prevalence: abnormal fraction overriding the site's ``abnormal_prevalence``; None keeps it.
        image_size: longest side in pixels overriding the site's native size (aspect and field of
            view kept, pixel spacing scaled); None keeps the native size.
    """

    lesion_contrast: tuple[float, float] = (0.6, 1.3)
    lesion_size: tuple[float, float] = (0.6, 1.3)
    subtle_fraction: float = 0.25
    subtle_scale: float = 0.3
    max_findings: int = 3
    label_noise: float = 0.06
    anatomy_variation: float = 1.0
    pose_jitter: float = 1.0
    ap_abnormal_ratio: float = 2.0
    max_followups: int = 5
    prevalence: float | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        for key in ("lesion_contrast", "lesion_size"):
            lo, hi = getattr(self, key)
            if not 0 <= lo <= hi:
                raise ConfigError(f"synth config: {key} must be (low, high) with 0 <= low <= high")
        for key in ("subtle_fraction", "subtle_scale", "label_noise"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"synth config: {key} must be in [0, 1]")
        if self.prevalence is not None and not 0 <= self.prevalence <= 1:
            raise ConfigError("synth config: prevalence must be in [0, 1] or None")
        if not 1 <= self.max_findings <= len(FINDINGS):
            raise ConfigError(f"synth config: max_findings must be 1..{len(FINDINGS)}")
        if self.max_followups < 1:
            raise ConfigError("synth config: max_followups must be >= 1")
        if self.anatomy_variation < 0 or self.pose_jitter < 0 or self.ap_abnormal_ratio < 1:
            raise ConfigError(
                "synth config: anatomy_variation and pose_jitter must be >= 0, "
                "ap_abnormal_ratio >= 1"
            )
        if self.image_size is not None and not 32 <= self.image_size <= 4096:
            raise ConfigError("synth config: image_size must be 32..4096 or None")
