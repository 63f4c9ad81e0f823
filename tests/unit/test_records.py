"""ImageLimits: one way to build the input guards, whatever case the configuration uses."""

from __future__ import annotations

import pytest

from cxr_triage.config import IngestParams
from cxr_triage.errors import UnsupportedModalityError
from cxr_triage.io.dicom import read_dicom
from cxr_triage.io.records import ImageLimits


def test_image_limits_read_lower_case_modalities_as_dicom_code_strings(make_dicom):
    limits = ImageLimits.from_params(IngestParams(allowed_modalities=["cr", "dx"]))
    assert limits.allowed_modalities == ("CR", "DX")
    assert read_dicom(make_dicom(modality="DX"), limits).meta.modality == "DX"
    with pytest.raises(UnsupportedModalityError):
        read_dicom(make_dicom(modality="CT"), limits)


def test_image_limits_round_trip_through_a_package_record():
    limits = ImageLimits(max_pixels=1234, allowed_modalities=("dx",))
    assert ImageLimits.from_dict(limits.to_dict()) == limits
    assert ImageLimits.from_dict({"max_pixels": 5}).allowed_modalities == ("CR", "DX")
    with pytest.raises(ValueError, match="unknown image limit"):
        ImageLimits.from_dict({"max_pixel": 5})
