"""A study's result as DICOM: a Comprehensive SR (highdicom, TID 1500), optionally a secondary
capture with the result burned in.

Why Comprehensive SR: the content is a TID 1500 Measurement Report (coded finding, numeric
measurements, image references, algorithm identification), which Enhanced SR could also hold;
Comprehensive SR is its superset that PACS, viewers (OHIF, Orthanc's viewer) and dcmtk's
``dsrdump`` handle the same way, and it also allows by-reference relationships, so adding
regions (a heatmap's areas) later keeps the SOP class a receiving PACS was configured for. It
is the class highdicom's TID 1500 support and its tests centre on.

The SR is written into the *original* study (Study Instance UID, patient and study modules
copied from the evaluated images, so the PACS files it with the study: the one place where
identifiers travel, back to their own PACS), in a new series (number :data:`SERIES_NUMBER`, one
per study, later versions in the same series with a higher instance number and a Predecessor
Documents reference), and references every evaluated instance. Content::

    Imaging Measurements
      Measurement Group "study"                    (every evaluated image as source)
        Algorithm Identification (TID 4019)        name "cxr-triage <candidate>", version =
                                                   model tag, parameters: threshold, study rule
        Normality = Normal | Abnormal              (DCM 121402; SCT 17621005 | 263654008)
        Probability of abnormal chest radiograph   calibrated, 0..1 (99CXRT ABNPROB, UCUM 1)
        Decision threshold for abnormal            (99CXRT ABNTHR)
        Sensitivity / Specificity at threshold     on the validation split (99CXRT OPSENS/OPSPEC)
        Comment                                    "Not for clinical use: ..." and the rule
      Measurement Group "image <n>", one per evaluated image: its Normality and probability

``99CXRT`` is this product's private coding scheme (PS3.16 8.2: ``99`` prefix); the SR declares
it in its Coding Scheme Identification Sequence. No standard code exists for a generic
"probability of abnormal" (DCM 111047 is the probability of cancer).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM

from cxr_triage.vocabulary import ABNORMAL, NOT_FOR_CLINICAL_USE

__all__ = [
    "CODING_SCHEME",
    "SERIES_DESCRIPTION",
    "SERIES_NUMBER",
    "ImageResult",
    "ModelInfo",
    "StudyResult",
    "build_secondary_capture",
    "build_sr",
    "device_uid",
    "read_sr_result",
]

log = logging.getLogger(__name__)

CODING_SCHEME = "99CXRT"
PROBABILITY = Code("ABNPROB", CODING_SCHEME, "Probability of abnormal chest radiograph")
THRESHOLD = Code("ABNTHR", CODING_SCHEME, "Decision threshold for abnormal")
SENSITIVITY = Code("OPSENS", CODING_SCHEME, "Sensitivity at the decision threshold")
SPECIFICITY = Code("OPSPEC", CODING_SCHEME, "Specificity at the decision threshold")
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI triage result - NOT FOR CLINICAL USE"
MANUFACTURER = "cxr-triage"
_DIGITS = 6  # probabilities in the SR: 6 decimals (DS holds 16 characters)
_AGE = re.compile(r"\d{3}[DWMY]")


@dataclass(frozen=True)
class ModelInfo:
    """What the SR says about the model (from the package: ``Predictor.info``)."""

    model_tag: str
    candidate: str
    threshold: float
    sensitivity: float | None
    specificity: float | None

    @classmethod
    def from_package_info(cls, info: dict[str, Any], model_tag: str) -> ModelInfo:
        """From a package's ``package.json`` (its ``operating_point`` is on the validation
        split, where the threshold was chosen)."""
        point = info.get("operating_point") or {}

        def number(key: str) -> float | None:
            value = point.get(key)
            return None if value is None else float(value)

        return cls(
            model_tag=model_tag,
            candidate=str(info.get("candidate", "unknown")),
            threshold=float(info["threshold"]),
            sensitivity=number("sensitivity"),
            specificity=number("specificity"),
        )


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image: its header (no pixels needed) and its probability."""

    header: Dataset
    prob_abnormal: float


@dataclass(frozen=True)
class StudyResult:
    """A study's result: the rule's probability over its evaluated images, and its label."""

    images: tuple[ImageResult, ...]
    prob_abnormal: float
    label: str
    rule: str


def device_uid(name: str) -> str:
    """A stable UID for this device (the same AE title gives the same observer UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None, entropy_srcs=["cxr-triage device", name]))


def _normality(label: str) -> Code:
    from pydicom.sr.codedict import codes

    return codes.SCT.Abnormal if label == ABNORMAL else codes.SCT.Normal


def _number(name: Code, value: float) -> Any:
    from highdicom.sr import Measurement
    from pydicom.sr.codedict import codes

    return Measurement(name=name, value=round(float(value), _DIGITS), unit=codes.UCUM.NoUnits)


def _fix_copied_attributes(sr: Dataset) -> None:
    """Values copied from the source that would make the SR invalid (an AS without unit)."""
    age = str(sr.get("PatientAge", "") or "")
    if age and not _AGE.fullmatch(age):
        digits = age.strip().rstrip("Yy")
        if digits.isdigit() and len(digits) <= 3:
            sr.PatientAge = f"{int(digits):03d}Y"
        else:
            del sr.PatientAge


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom logs the source's SOP Instance UIDs (INFO) and warns with the patient's name
    when it is not in PN form; identifiers must never reach our logs, so both are held back
    while it copies the patient and study modules."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="highdicom")
            yield
    finally:
        logger.setLevel(level)


# Type 2 attributes of the Patient and General Study modules that highdicom copies from the
# first evidence item: present (empty if unknown) in a valid image, missing in some.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _with_type2(header: Dataset) -> Dataset:
    """A copy of ``header`` with every attribute of :data:`_TYPE2` present, empty where absent
    or where its value is one highdicom refuses to copy.

    Modalities write values the standard does not allow (PatientSex "U" or "MALE", a date
    "0000"): highdicom validates what it copies and raises, which would stop the listener on
    one study. Such a value is sent empty (Type 2 allows it); the image keeps the original.
    """
    out = Dataset()
    out.update(header)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)
    for keyword, valid in _COPIED_CHECKS.items():
        value = out.get(keyword)
        if value not in (None, "") and not valid(value):
            log.warning("%s of a source image is not a valid DICOM value: sent empty", keyword)
            setattr(out, keyword, None)
    return out


def _valid_sex(value: object) -> bool:
    from highdicom import PatientSexValues

    return str(value) in {member.value for member in PatientSexValues}


def _valid(vr_class: type) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        try:
            vr_class(value)
        except (TypeError, ValueError):
            return False
        return True

    return check


# What highdicom parses or checks among the copied attributes (highdicom.base.SOPClass).
_COPIED_CHECKS: dict[str, Callable[[object], bool]] = {
    "PatientSex": _valid_sex,
    "PatientBirthDate": _valid(DA),
    "StudyDate": _valid(DA),
    "StudyTime": _valid(TM),
}


def _coding_scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = "cxr-triage local codes"
    item.CodingSchemeResponsibleOrganization = "cxr-triage project"
    return item


def build_sr(
    result: StudyResult,
    model: ModelInfo,
    *,
    sr_uid: str,
    series_uid: str,
    version: int,
    device_name: str,
    previous: Dataset | None = None,
) -> Dataset:
    """The study's Comprehensive SR (see the module docstring for its content).

    Args:
        result: the evaluated images (headers: patient, study and SOP identifiers) and the
            study's probability and label.
        model: tag, candidate, threshold, operating point.
        sr_uid: the SR's SOP Instance UID, fixed before the first send.
        series_uid: the result series of this study (the same for every version).
        version: 1 for the first result of the study; becomes the instance number.
        device_name: the observer device's name (the listener's AE title).
        previous: the result this one supersedes (its SOP Class/Instance, Study and Series
            UIDs are enough); referenced as a predecessor document.

    Returns:
        The SR data set, ready to save (``enforce_file_format=True``) or send.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    algorithm = AlgorithmIdentification(
        name=f"cxr-triage {model.candidate}",
        version=model.model_tag,
        parameters=[f"threshold={model.threshold:.{_DIGITS}f}", f"study_rule={result.rule}"],
    )
    sources = [SourceImageForMeasurementGroup.from_source_image(i.header) for i in result.images]
    measurements = [
        _number(PROBABILITY, result.prob_abnormal),
        _number(THRESHOLD, model.threshold),
    ]
    if model.sensitivity is not None:
        measurements.append(_number(SENSITIVITY, model.sensitivity))
    if model.specificity is not None:
        measurements.append(_number(SPECIFICITY, model.specificity))
    study_group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="study"),
        algorithm_id=algorithm,
        source_images=sources,
        qualitative_evaluations=[
            QualitativeEvaluation(codes.DCM.Normality, _normality(result.label))
        ],
        measurements=measurements,
    )
    rule = (
        f"Study result: the {result.rule} of the abnormal probability over "
        f"{len(result.images)} frontal image(s); operating point from the validation split."
    )
    for text in (NOT_FOR_CLINICAL_USE, rule):
        study_group[0].ContentSequence.append(
            TextContentItem(
                name=codes.DCM.Comment,
                value=text,
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
        )
    groups = [study_group]
    for n, image in enumerate(result.images, start=1):
        label = ABNORMAL if image.prob_abnormal >= model.threshold else "normal"
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"image {n}"),
                algorithm_id=algorithm,
                source_images=[SourceImageForMeasurementGroup.from_source_image(image.header)],
                qualitative_evaluations=[
                    QualitativeEvaluation(codes.DCM.Normality, _normality(label))
                ],
                measurements=[_number(PROBABILITY, image.prob_abnormal)],
            )
        )
    device = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid(device_name),
            name=device_name,
            manufacturer_name=MANUFACTURER,
            model_name=model.model_tag[:64],
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
    )
    with _quiet_highdicom():
        sr = ComprehensiveSR(
            evidence=[_with_type2(i.header) for i in result.images],
            content=report[0],
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sr_uid,
            instance_number=version,
            manufacturer=MANUFACTURER,
            series_description=SERIES_DESCRIPTION,
            is_complete=True,
            previous_versions=[previous] if previous is not None else None,
        )
    sr.CodingSchemeIdentificationSequence = [_coding_scheme_item()]
    _fix_copied_attributes(sr)
    return sr


def read_sr_result(sr: Dataset) -> dict[str, Any]:
    """The study-level figures back from an SR built here (probability, label, references).

    Returns:
        ``prob_abnormal``, ``threshold``, ``label`` (normal/abnormal), ``model_tag`` and
        ``referenced`` (SOP Instance UIDs of the evaluated images, in order).
    """
    root = sr.ContentSequence
    measurements = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    study = measurements.ContentSequence[0]
    out: dict[str, Any] = {"referenced": []}
    for item in study.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "NUM" and code == PROBABILITY.value:
            out["prob_abnormal"] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "NUM" and code == THRESHOLD.value:
            out["threshold"] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE" and code == "121402":
            value = item.ConceptCodeSequence[0].CodeValue
            out["label"] = ABNORMAL if value == "263654008" else "normal"
        elif item.ValueType == "IMAGE":
            out["referenced"].append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        elif item.ValueType == "CODE" and code == "111001":  # Algorithm Name
            pass
        elif item.ValueType == "TEXT" and code == "111003":  # Algorithm Version
            out["model_tag"] = str(item.TextValue)
    return out


def build_secondary_capture(
    header: Dataset,
    display: np.ndarray,
    result: StudyResult,
    model: ModelInfo,
    *,
    sop_uid: str,
    series_uid: str,
    version: int,
) -> Dataset:
    """A secondary capture of one evaluated image with the result burned in, for viewers that
    do not show SR.

    Args:
        header: the image's header (patient and study modules are copied from it).
        display: its display pixels (float in [0, 1], MONOCHROME2), as the reader gives them.
        result, model: what to write on it.
        sop_uid, series_uid, version: identifiers of the capture (its own series).
    """
    from highdicom.sc import SCImage
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.rint(np.clip(display, 0, 1) * 255).astype(np.uint8))
    image.thumbnail((1024, 1024))
    lines = [
        f"AI TRIAGE: {result.label.upper()}  p(abnormal)={result.prob_abnormal:.3f}",
        f"threshold {model.threshold:.3f}  {result.rule} of {len(result.images)} image(s)",
        f"model {model.model_tag}",
        "NOT FOR CLINICAL USE",
    ]
    font = ImageFont.load_default(size=max(12, image.width // 48))
    draw = ImageDraw.Draw(image)
    step = font.size + 6 if hasattr(font, "size") else 18
    height = step * len(lines) + 8
    draw.rectangle((0, 0, image.width, height), fill=0)
    for n, text in enumerate(lines):
        draw.text((6, 4 + n * step), text, fill=255, font=font)
    with _quiet_highdicom():
        sc = SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=np.asarray(image),
            photometric_interpretation="MONOCHROME2",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=version,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:  # type 2C in General Series; a chest film has none
        sc.Laterality = None
    _fix_copied_attributes(sc)
    return sc


def study_result(
    images: Sequence[ImageResult], *, rule: str, threshold: float, labels: Sequence[str]
) -> StudyResult:
    """Combine a study's images: ``max`` (default: one abnormal image flags the study) or
    ``mean`` of their probabilities; the label at ``threshold``.

    Args:
        labels: the class names (normal, abnormal), as the package orders them.
    """
    probs = [i.prob_abnormal for i in images]
    prob = float(max(probs) if rule == "max" else float(np.mean(probs)))
    return StudyResult(
        images=tuple(images),
        prob_abnormal=prob,
        label=labels[1] if prob >= threshold else labels[0],
        rule=rule,
    )
