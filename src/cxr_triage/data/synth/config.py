"""The generator's difficulty and content knobs (``params.yaml`` ``synth`` section feeds them)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from cxr_triage.config import SynthKnobs
from cxr_triage.errors import ConfigError
from cxr_triage.vocabulary import FINDINGS

__all__ = ["SynthConfig"]


@dataclass(frozen=True)
class SynthConfig(SynthKnobs):
    """The generator's knobs (:class:`cxr_triage.config.SynthKnobs`, documented there), checked.

    Raises:
        ConfigError: a knob is out of range.
    """

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

    @classmethod
    def from_params(cls, params: SynthKnobs) -> SynthConfig:
        """The knobs of ``params.yaml``'s ``synth`` section (``params.synth``).

        Raises:
            ConfigError: a knob is out of range.
        """
        return cls(**{f.name: getattr(params, f.name) for f in fields(SynthKnobs)})
