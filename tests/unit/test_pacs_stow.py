"""STOW-RS into the spool: what dicomweb-client sends is parsed, stored and answered per PS3.18."""

from __future__ import annotations

import json

import pydicom
import pytest
import requests
from requests.adapters import BaseAdapter

from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.pacs.settings import PacsSettings
from cxr_triage.pacs.spool import Spool
from cxr_triage.pacs.stow import parse_multipart_related, store_instances
from helpers.pacs import SALT

BASE = "http://stow.test/dicom-web"


class _Server(BaseAdapter):
    """A requests transport that answers with :func:`store_instances`: dicomweb-client's real
    request, no network."""

    def __init__(self, spool: Spool) -> None:
        super().__init__()
        self.spool = spool

    def send(self, request, **kwargs):  # noqa: ANN001, ANN201 - requests' adapter interface
        answer = store_instances(
            request.headers["Content-Type"], request.body, self.spool, PacsSettings(), site="web"
        )
        response = requests.Response()
        response.status_code = answer.status
        response._content = json.dumps(answer.body).encode()  # noqa: SLF001
        response.headers["Content-Type"] = "application/dicom+json"
        response.request, response.url = request, request.url
        return response

    def close(self) -> None:
        pass


def _client(spool: Spool):
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.mount("http://stow.test", _Server(spool))
    return DICOMwebClient(BASE, session=session)


def test_dicomweb_client_stores_into_the_spool(pacs_spool, make_dicom) -> None:
    datasets = [pydicom.dcmread(make_dicom(name=f"{n}.dcm")) for n in range(2)]
    response = _client(pacs_spool).store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 2
    assert "FailedSOPSequence" not in response
    rows = pacs_spool.instances()
    assert {r.key for r in rows} == {Pseudonymiser(SALT).image(d.SOPInstanceUID) for d in datasets}
    assert {(r.source, r.site, r.state) for r in rows} == {("stow", "web", "received")}


def test_partial_and_total_failures(pacs_spool, make_dicom, shared_data) -> None:
    good = pydicom.dcmread(make_dicom())
    ct = pydicom.dcmread(shared_data / "dicom" / "CT_small.dcm")
    response = _client(pacs_spool).store_instances([good, ct])  # 202: stored in part
    (failure,) = response.FailedSOPSequence
    assert (failure.ReferencedSOPInstanceUID, failure.FailureReason) == (ct.SOPInstanceUID, 0x0122)
    assert len(response.ReferencedSOPSequence) == 1

    with pytest.raises(requests.HTTPError) as none:
        _client(pacs_spool).store_instances([ct])
    assert none.value.response.status_code == 409


def _multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[str, bytes]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    return (
        f'multipart/related; type="application/dicom"; boundary={boundary}',
        body + b"--" + boundary.encode() + b"--\r\n",
    )


def test_request_level_errors_and_instance_reasons(pacs_spool, make_dicom) -> None:
    settings = PacsSettings()
    data = make_dicom().read_bytes()
    assert store_instances("application/json", b"{}", pacs_spool, settings).status == 415
    content_type, body = _multipart([data])
    assert store_instances(content_type, body[:-8], pacs_spool, settings).status == 400  # cut off
    answer = store_instances(content_type, body, pacs_spool, settings, study_instance_uid="1.2.3")
    assert answer.status == 409  # another study than the URL's
    assert answer.body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    content_type, body = _multipart([b"not dicom at all" * 20, data])
    answer = store_instances(content_type, body, pacs_spool, settings)
    assert (answer.status, answer.stored, answer.failed) == (202, 1, 1)
    assert answer.body["00081198"]["Value"][0] == {"00081197": {"vr": "US", "Value": [0xC000]}}
    assert (
        store_instances(content_type, body, pacs_spool, settings).stored == 1
    )  # duplicate: stored
    assert len(pacs_spool.instances()) == 1


def test_a_spool_that_cannot_take_it_answers_out_of_resources(pacs_spool, make_dicom) -> None:
    pacs_spool.incoming.rename(pacs_spool.root / "moved")
    pacs_spool.incoming.write_text("not a folder")
    content_type, body = _multipart([make_dicom().read_bytes()])
    answer = store_instances(content_type, body, pacs_spool, PacsSettings())
    assert answer.status == 409
    assert answer.body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]


def test_parts_keep_their_bytes() -> None:
    payload = b"\r\n--not-the-boundary\r\n" + bytes(range(256))
    content_type, body = _multipart([payload, b"x"])
    assert parse_multipart_related(content_type, body) == [payload, b"x"]
