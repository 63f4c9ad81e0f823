"""The input quality gate: is this image what the model was made for (a frontal adult chest
radiograph, upright, not inverted, large enough)?

Every image gets a :class:`QcVerdict` before it is scored: a list of checks, each passed or
failed with its value and limit, and what a failure does (``params.yaml`` ``qc.actions``,
recorded in the package): ``refuse`` (the service answers 422 ``qc_failed`` naming the check,
never a probability), ``warn`` (scored; the verdict says why) or ``off``.

Header checks (the DICOM header, or metadata the caller passed; the reader has already refused
other modalities and non-chest ``BodyPartExamined`` as ``wrong_modality``):

- ``view``: ViewPosition is lateral (``qc.lateral_views``);
- ``min_size``: the shorter side is below ``qc.min_size_px``;
- ``pediatric``: PatientAge is known and below ``qc.adult_min_age``;
- ``burned_in_annotation``: BurnedInAnnotation is YES (text in the pixels).

Content checks, which trust no header, read the prepared image at a coarse ``grid x grid``
layout (cell means, each image standardised to mean 0, sd 1):

- an **orientation model** (:class:`QcModel`, fitted at package time on the package's train
  images): a logistic regression scoring how much a layout looks like an upright, non-inverted
  training image, against rotated, flipped and inverted copies of the same (augmented)
  images. The checks are *relative*, so that they carry over to images unlike the training
  set: ``inverted`` fails when the inverted image scores higher than the image itself, and
  ``rotated`` when a 90-degree rotation does (margins below ``min(0, q)``, ``q`` the
  ``qc.calibration_quantile`` of the val images' margins);
- ``out_of_distribution``: the Mahalanobis distance of the layout from the train images' (a
  Ledoit-Wolf shrunk covariance), failing above the ``qc.ood_quantile`` of the val images'
  distances times ``qc.ood_margin``. It is absolute: a package trained on the synthetic
  stand-in finds every real radiograph out of distribution, hence ``warn`` by default.

Nothing here is a medical device; the gate keeps the model to the inputs it was validated on.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cxr_triage.config import QC_ACTIONS
from cxr_triage.errors import DataError, QcFailedError

__all__ = [
    "CHECKS",
    "CONTENT_CHECKS",
    "HEADER_CHECKS",
    "QcCheck",
    "QcModel",
    "QcSettings",
    "QcVerdict",
    "QualityGate",
    "fit_qc_model",
    "layout",
]

log = logging.getLogger(__name__)

HEADER_CHECKS = ("view", "min_size", "pediatric", "burned_in_annotation")
CONTENT_CHECKS = ("inverted", "rotated", "out_of_distribution")
CHECKS = HEADER_CHECKS + CONTENT_CHECKS
_WHAT_TO_SEND = "send a frontal (PA/AP) adult chest radiograph, upright and not inverted"


# -- settings and verdicts -------------------------------------------------------------------


@dataclass(frozen=True)
class QcSettings:
    """What the gate checks and does (``params.yaml`` ``qc``, recorded in the package).

    Attributes:
        actions: check name -> ``refuse`` | ``warn`` | ``off``.
        min_size_px: shorter side below which ``min_size`` fails.
        adult_min_age: age in years below which ``pediatric`` fails.
        lateral_views: ViewPosition values that fail ``view`` (upper case).
    """

    actions: Mapping[str, str] = field(default_factory=dict)
    min_size_px: int = 256
    adult_min_age: float = 18.0
    lateral_views: tuple[str, ...] = ("LL", "RL", "LATERAL", "LAT")

    def action(self, check: str) -> str:
        return str(self.actions.get(check, "refuse"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "actions": dict(self.actions),
            "min_size_px": self.min_size_px,
            "adult_min_age": self.adult_min_age,
            "lateral_views": list(self.lateral_views),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QcSettings:
        unknown = sorted(set(data) - {"actions", "min_size_px", "adult_min_age", "lateral_views"})
        if unknown:
            raise DataError(f"unknown QC settings {unknown} in the package; rebuild it")
        actions = dict(data.get("actions", {}))
        bad = {k: v for k, v in actions.items() if k not in CHECKS or v not in QC_ACTIONS}
        if bad:
            raise DataError(f"invalid QC actions {bad} in the package; rebuild it")
        return cls(
            actions=actions,
            min_size_px=int(data.get("min_size_px", 256)),
            adult_min_age=float(data.get("adult_min_age", 18.0)),
            lateral_views=tuple(str(v).upper() for v in data.get("lateral_views", ())),
        )

    @classmethod
    def from_params(cls, qc: Any) -> QcSettings:
        """From ``params.qc`` (a :class:`~cxr_triage.config.QcParams`)."""
        from dataclasses import asdict

        return cls(
            actions=asdict(qc.actions),
            min_size_px=int(qc.min_size_px),
            adult_min_age=float(qc.adult_min_age),
            lateral_views=tuple(str(v).upper() for v in qc.lateral_views),
        )


@dataclass(frozen=True)
class QcCheck:
    """One check's outcome. ``value`` and ``limit`` are what was compared (None: unknown)."""

    name: str
    passed: bool
    action: str
    value: float | str | None
    limit: float | str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "action": self.action,
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
        }


@dataclass(frozen=True)
class QcVerdict:
    """All checks of one image. ``status``: ``pass`` (nothing failed), ``warn`` (only checks
    that warn failed) or ``refuse`` (a check that refuses failed)."""

    checks: tuple[QcCheck, ...]

    @property
    def refusing(self) -> tuple[QcCheck, ...]:
        return tuple(c for c in self.checks if not c.passed and c.action == "refuse")

    @property
    def warnings(self) -> tuple[QcCheck, ...]:
        return tuple(c for c in self.checks if not c.passed and c.action == "warn")

    @property
    def status(self) -> str:
        if self.refusing:
            return "refuse"
        return "warn" if self.warnings else "pass"

    @property
    def passed(self) -> bool:
        """Not refused (it may carry warnings)."""
        return not self.refusing

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "failed": [c.name for c in self.checks if not c.passed and c.action != "off"],
            "checks": [c.to_dict() for c in self.checks if c.action != "off"],
        }

    def error(self) -> QcFailedError | None:
        """The refusal this verdict calls for, or None."""
        refusing = self.refusing
        if not refusing:
            return None
        names = tuple(c.name for c in refusing)
        detail = "; ".join(f"{c.name}: {c.message}" for c in refusing)
        return QcFailedError(
            f"the input quality gate refused the image ({detail}); {_WHAT_TO_SEND}",
            checks=names,
        )


# -- the content model -----------------------------------------------------------------------


def layout(images: np.ndarray, grid: int) -> np.ndarray:
    """The coarse layout the content checks read: ``(N, grid * grid)`` float64 cell means of
    ``uint8`` images ``(N, S, S)`` (area average), each row standardised to mean 0, sd 1."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    n, side = images.shape[0], images.shape[1]
    if side % grid == 0:
        k = side // grid
        cells = images.astype(np.float64).reshape(n, grid, k, grid, k).mean(axis=(2, 4))
    else:
        cells = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(im, dtype=np.float32), mode="F").resize(
                        (grid, grid), Image.Resampling.BOX
                    )
                )
                for im in images
            ]
        ).astype(np.float64)
    flat = cells.reshape(n, -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / (flat.std(axis=1, keepdims=True) + 1e-6)


def _rot(images: np.ndarray, quarter_turns: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(images, quarter_turns, axes=(1, 2)))


def _inverted(images: np.ndarray) -> np.ndarray:
    return 255 - images


# The transformed copies the orientation model learns to score below the upright image.
_NEGATIVES = (
    lambda x: _rot(x, 1),
    lambda x: _rot(x, 2),
    lambda x: _rot(x, 3),
    lambda x: np.ascontiguousarray(x[:, ::-1]),
    _inverted,
    lambda x: _inverted(_rot(x, 1)),
    lambda x: _inverted(_rot(x, 3)),
)


@dataclass(frozen=True)
class QcModel:
    """The fitted content checks (``qc.npz`` in a package; plain arrays, no pickle).

    Attributes:
        grid: layout side.
        coef, intercept: the orientation model's linear score of a layout ``(grid * grid,)``.
        mean, precision: the train layouts' mean and (shrunk) precision matrix.
        inverted_limit, rotated_limit: the margins below which those checks fail.
        ood_limit: the distance above which ``out_of_distribution`` fails.
    """

    grid: int
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    precision: np.ndarray
    inverted_limit: float
    rotated_limit: float
    ood_limit: float

    def upright_score(self, images: np.ndarray) -> np.ndarray:
        """How much each image's layout looks like an upright training image (logit)."""
        return layout(images, self.grid) @ self.coef + self.intercept

    def margins(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``inverted`` and ``rotated`` margins (image score minus the transformed one's) and
        the ``out_of_distribution`` distance, per image of ``uint8 (N, S, S)``."""
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 2:
            images = images[None]
        own = self.upright_score(images)
        rotated = np.maximum(
            self.upright_score(_rot(images, 1)), self.upright_score(_rot(images, 3))
        )
        centred = layout(images, self.grid) - self.mean
        distance = np.sqrt(
            np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0)
        )
        return {
            "inverted": own - self.upright_score(_inverted(images)),
            "rotated": own - rotated,
            "out_of_distribution": distance,
        }

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            grid=np.int64(self.grid),
            coef=self.coef,
            intercept=np.float64(self.intercept),
            mean=self.mean,
            precision=self.precision,
            limits=np.array([self.inverted_limit, self.rotated_limit, self.ood_limit]),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Any) -> QcModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                limits = z["limits"]
                return cls(
                    grid=int(z["grid"]),
                    coef=z["coef"].astype(np.float64),
                    intercept=float(z["intercept"]),
                    mean=z["mean"].astype(np.float64),
                    precision=z["precision"].astype(np.float64),
                    inverted_limit=float(limits[0]),
                    rotated_limit=float(limits[1]),
                    ood_limit=float(limits[2]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(
                f"{path} is not a readable QC model ({exc}); rebuild the package"
            ) from exc


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small rotations, shifts, zooms and gamma changes, so the model learns the layout rather
    than one acquisition's exact framing."""
    out = np.empty_like(images)
    side = images.shape[1]
    for i, image in enumerate(images):
        fill = int(np.median(image[0]))
        pil = Image.fromarray(image).rotate(
            float(rng.uniform(-10, 10)),
            resample=Image.Resampling.BILINEAR,
            translate=tuple(float(t) for t in rng.uniform(-0.1, 0.1, 2) * side),
            fillcolor=fill,
        )
        width = max(2, int(side * rng.uniform(0.8, 1.25)))
        pil = pil.resize((width, width), Image.Resampling.BILINEAR)
        if width >= side:
            offset = (width - side) // 2
            pil = pil.crop((offset, offset, offset + side, offset + side))
        else:
            canvas = Image.new("L", (side, side), fill)
            canvas.paste(pil, ((side - width) // 2, (side - width) // 2))
            pil = canvas
        scaled = (np.asarray(pil, dtype=np.float32) / 255.0) ** np.float32(rng.uniform(0.6, 1.6))
        out[i] = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return out


def fit_qc_model(
    train_images: np.ndarray,
    val_images: np.ndarray,
    *,
    grid: int = 16,
    augment_copies: int = 3,
    calibration_quantile: float = 0.005,
    ood_quantile: float = 0.995,
    ood_margin: float = 1.5,
    seed: int = 0,
) -> QcModel:
    """Fit the content checks on a package's train images; calibrate their limits on val.

    Args:
        train_images: ``uint8 (N, S, S)`` prepared train images (upright, not inverted).
        val_images: ``uint8 (M, S, S)`` prepared val images, for the limits only.
        grid: layout side (``S`` need not be a multiple).
        augment_copies: augmented copies of each train image (positives and, transformed,
            negatives).
        calibration_quantile: the orientation limits are ``min(0, this quantile of val)``.
        ood_quantile, ood_margin: the distance limit is this quantile of val times the margin.
        seed: augmentation seed (same inputs and seed, same model).

    Raises:
        DataError: fewer than 2 train or 1 val images.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    train = np.asarray(train_images, dtype=np.uint8)
    val = np.asarray(val_images, dtype=np.uint8)
    if len(train) < 2 or len(val) < 1:
        raise DataError("the QC model needs at least 2 train and 1 val images")
    rng = np.random.default_rng(seed)
    augmented = np.concatenate([_augment(train, rng) for _ in range(max(1, augment_copies))])
    features = [layout(augmented, grid)] + [layout(t(augmented), grid) for t in _NEGATIVES]
    x = np.concatenate(features)
    y = np.r_[np.ones(len(augmented)), np.zeros(len(augmented) * len(_NEGATIVES))]
    model = LogisticRegression(C=0.01, max_iter=5000, class_weight="balanced").fit(x, y)
    shrunk = LedoitWolf().fit(layout(train, grid))
    fitted = QcModel(
        grid=grid,
        coef=model.coef_[0].astype(np.float64),
        intercept=float(model.intercept_[0]),
        mean=shrunk.location_.astype(np.float64),
        precision=shrunk.precision_.astype(np.float64),
        inverted_limit=0.0,
        rotated_limit=0.0,
        ood_limit=np.inf,
    )
    margins = fitted.margins(val)
    return QcModel(
        **{
            **fitted.__dict__,
            "inverted_limit": min(
                0.0, float(np.quantile(margins["inverted"], calibration_quantile))
            ),
            "rotated_limit": min(
                0.0, float(np.quantile(margins["rotated"], calibration_quantile))
            ),
            "ood_limit": float(np.quantile(margins["out_of_distribution"], ood_quantile))
            * ood_margin,
        }
    )


# -- the gate --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


class QualityGate:
    """Verdicts for prepared images: header checks on their metadata, content checks on pixels.

    Args:
        settings: what to check and do.
        model: the fitted content checks; None skips them (recorded as not run).
    """

    def __init__(self, settings: QcSettings, model: QcModel | None) -> None:
        self.settings = settings
        self.model = model

    def check(self, pixels: np.ndarray, metadata: Mapping[str, Any]) -> QcVerdict:
        """The verdict of one prepared ``uint8 (S, S)`` image with its metadata."""
        return self.check_many(np.asarray(pixels)[None], [metadata])[0]

    def check_many(
        self, images: np.ndarray, metadata: Sequence[Mapping[str, Any]]
    ) -> list[QcVerdict]:
        """Verdicts of prepared ``uint8 (N, S, S)`` images, one metadata mapping each.

        Metadata keys read: ``view_position``, ``orig_rows``, ``orig_cols``, ``age``,
        ``burned_in_annotation`` (absent or empty: the check passes, value None).
        """
        images = np.asarray(images)
        if len(images) != len(metadata):
            raise ValueError(f"{len(images)} images but {len(metadata)} metadata rows")
        content: dict[str, np.ndarray] = {}
        if self.model is not None and len(images):
            content = self.model.margins(images)
        return [
            QcVerdict(
                tuple(self._header(meta))
                + tuple(self._content({k: float(v[i]) for k, v in content.items()}))
            )
            for i, meta in enumerate(metadata)
        ]

    def _check(self, name: str, passed: bool, value: Any, limit: Any, message: str) -> QcCheck:
        return QcCheck(name, bool(passed), self.settings.action(name), value, limit, message)

    def _header(self, meta: Mapping[str, Any]) -> list[QcCheck]:
        s = self.settings
        view = str(meta.get("view_position") or "").strip().upper()
        lateral = view in s.lateral_views
        rows, cols = _number(meta.get("orig_rows")), _number(meta.get("orig_cols"))
        side = min(rows, cols) if rows and cols else None
        age = _number(meta.get("age"))
        burned = str(meta.get("burned_in_annotation") or "").strip().upper()
        return [
            self._check(
                "view",
                not lateral,
                view or None,
                "frontal (not " + "/".join(s.lateral_views) + ")",
                f"ViewPosition {view} is a lateral view" if lateral else "not lateral",
            ),
            self._check(
                "min_size",
                side is None or side >= s.min_size_px,
                side,
                s.min_size_px,
                f"the image is {int(side)} px on its shorter side, below {s.min_size_px}"
                if side is not None and side < s.min_size_px
                else "large enough",
            ),
            self._check(
                "pediatric",
                age is None or age >= s.adult_min_age,
                age,
                s.adult_min_age,
                f"PatientAge {age:g} years is below {s.adult_min_age:g} (the model is for adults)"
                if age is not None and age < s.adult_min_age
                else ("age unknown" if age is None else "adult"),
            ),
            self._check(
                "burned_in_annotation",
                burned != "YES",
                burned or None,
                "not YES",
                "BurnedInAnnotation is YES: text in the pixels (never shown as a similar case)"
                if burned == "YES"
                else "no burned-in annotation flagged",
            ),
        ]

    def _content(self, values: Mapping[str, float]) -> list[QcCheck]:
        model = self.model
        if model is None:
            return [
                QcCheck(name, True, self.settings.action(name), None, None, "not run: no model")
                for name in CONTENT_CHECKS
            ]
        inverted, rotated = values["inverted"], values["rotated"]
        distance = values["out_of_distribution"]
        return [
            self._check(
                "inverted",
                inverted >= model.inverted_limit,
                round(inverted, 3),
                round(model.inverted_limit, 3),
                "the inverted image looks more like a chest radiograph than this one (margin "
                f"{inverted:.2f} < {model.inverted_limit:.2f}): bone dark, air bright?"
                if inverted < model.inverted_limit
                else "not inverted",
            ),
            self._check(
                "rotated",
                rotated >= model.rotated_limit,
                round(rotated, 3),
                round(model.rotated_limit, 3),
                "a 90-degree rotation looks more like a chest radiograph than this image "
                f"(margin {rotated:.2f} < {model.rotated_limit:.2f}): rotated or lateral?"
                if rotated < model.rotated_limit
                else "upright",
            ),
            self._check(
                "out_of_distribution",
                distance <= model.ood_limit,
                round(distance, 3),
                round(model.ood_limit, 3),
                f"unlike the images the model was trained on (distance {distance:.1f} > "
                f"{model.ood_limit:.1f}): another body part, a photograph, another kind of image?"
                if distance > model.ood_limit
                else "like the training images",
            ),
        ]
