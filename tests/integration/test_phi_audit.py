"""PHI audit: fake values in every attribute of the DICOM basic confidentiality profile (PS3.15
Annex E, table E.1-1, as the dicom-anonymizer package transcribes the 2026c standard), private
tags and free-text comments, go through ingest, the pipeline and packaging, batch scoring, the
service, monitoring and the Prefect flows; then every file any of them wrote is scanned for
those values.

Not scanned: the inputs themselves (the DICOM folder, and the ingestion flow's copy of a batch
it archives under ``data/processed/``), which are the hospital's own files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pydicom
import pytest
import yaml
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxr_triage.cli import app
from cxr_triage.config import Params, parse_section
from cxr_triage.data.synth import generate_dataset
from helpers.bento import serve
from helpers.commands import runner
from helpers.pipeline import REPO, tiny_params_data
from helpers.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SALT = "phi-audit-salt-0123456789abcdef"
N_IMAGES = 36
N_PATIENTS = N_IMAGES  # one image each: both classes have enough patients per fold
PRIVATE_CREATOR = "PHI AUDIT PRIVATE"


def _annex_e_tags() -> list[int]:
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c

    tags = []
    for entry in dicomfields_2026c.ALL_TAGS:
        if len(entry) != 2:  # (group, element, masks...): repeating groups, not single tags
            continue
        group, element = entry
        tag = (group << 16) | element
        if group in (0x0000, 0x0002):  # command set and file meta: never in a stored data set
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:  # repeating groups (50xx, 60xx) are not single dictionary entries
            continue
        if vr and " " not in vr:  # "OB or OW": no single text form
            tags.append(tag)
    return sorted(set(tags))


class PhiValues:
    """Fake values by VR; every value long enough to be searched for is remembered."""

    def __init__(self) -> None:
        self.searched: set[str] = set()

    def _keep(self, value: str) -> str:
        if len(value) >= 8:
            self.searched.add(value)
        return value

    def value(self, tag: int, vr: str, image: int) -> object:
        n = f"{tag:08X}"
        texts = {
            "PN": f"PHIPN{n}^Given{image}",
            "LO": f"PHILO{n}",
            "SH": f"PHISH{n}",
            "CS": f"PHICS{n}",
            "AE": f"PHIAE{n}",
            "LT": f"PHI free text {n} comment",
            "ST": f"PHI free text {n} comment",
            "UT": f"PHI free text {n} comment",
            "UC": f"PHIUC{n}",
            "UR": f"http://phi-{n.lower()}.example.org/",
            "DA": f"18{(tag % 89) + 10:02d}0{tag % 9 + 1}1{tag % 9}",
            "DT": f"18{(tag % 89) + 10:02d}0{tag % 9 + 1}1{tag % 9}101010",
        }
        if vr in texts:
            text = texts[vr]
            if vr == "PN":
                self._keep(text.split("^")[0])
                self._keep(f"Given{image}")
            else:
                self._keep(text)
            return text
        if vr == "UI":  # unique per image: study/series/instance UIDs identify the image
            return self._keep(f"2.25.{tag}{image:04d}918273645")
        if vr == "TM":
            return "101010.123456"
        if vr == "AS":
            return "097Y"
        if vr in ("IS", "US", "SS", "UL", "SL"):
            return 9
        if vr in ("DS", "FL", "FD"):
            return 9.5
        if vr == "SQ":
            item = Dataset()
            item.CodeValue = self._keep(f"PHICV{n}")
            item.CodingSchemeDesignator = "99PHI"
            item.CodeMeaning = self._keep(f"PHI code meaning {n}")
            return Sequence([item])
        return None  # OB, OW, UN, AT...: binary, not searched


def _phi_dataset(root: Path) -> tuple[Path, set[str]]:
    """Synthetic DX radiographs carrying fake PHI in every Annex E attribute, plus labels."""
    synth = root / "synth"
    table = generate_dataset(synth, n=N_IMAGES, site="hospital_a", seed=11)
    folder = root / "phi"
    folder.mkdir()
    values = PhiValues()
    for image, path in enumerate(sorted((synth / "images").iterdir())):
        ds = pydicom.dcmread(path)
        for tag in _annex_e_tags():
            value = values.value(tag, dictionary_VR(tag), image)
            if value is not None:
                ds.add_new(tag, dictionary_VR(tag), value)
        patient = f"PHIPATIENT{image % N_PATIENTS:03d}"
        ds.PatientID = values._keep(patient)
        ds.PatientName = f"{values._keep('Doe' + patient)}^John"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", values._keep(f"PHIPRIVATE{image:04d}"))
        block.add_new(0x02, "LT", values._keep(f"private free text about patient {image}"))
        ds.save_as(folder / f"image{image:03d}.dcm", enforce_file_format=True)
    labels = pd.DataFrame(
        {
            "image": [f"image{i:03d}.dcm" for i in range(N_IMAGES)],
            "label": table["Finding Labels"]
            .ne("No Finding")
            .map({True: "abnormal", False: "normal"}),
        }
    )
    labels.to_csv(folder / "labels.csv", index=False)
    values.searched |= set(table["Patient ID"])  # the generator's own fake identities
    return folder, values.searched


def _scan(roots: list[Path], values: set[str], skip: list[Path]) -> list[str]:
    """``file: value`` for every searched value found in any file below the roots."""
    needles = [(v, v.encode()) for v in values]
    found = []
    for root in roots:
        for path in root.rglob("*") if root.is_dir() else [root]:
            if not path.is_file() or any(s == path or s in path.parents for s in skip):
                continue
            data = path.read_bytes()
            found += [f"{path}: {v}" for v, b in needles if b in data]
    return found


def test_no_phi_value_reaches_any_file_written(tmp_path, monkeypatch, prefect_server_env, caplog):
    from cxr_triage.state import state_layout

    monkeypatch.setenv("CXR_TRIAGE_SALT", SALT)
    monkeypatch.setenv("CXR_TRIAGE_LOG_LEVEL", "DEBUG")
    for name, value in prefect_server_env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level("DEBUG")
    phi, values = _phi_dataset(tmp_path)
    assert len(values) > 500  # hundreds of attributes, each with a value to look for
    out = tmp_path / "out"

    # 1. Ingest (CLI), then the pipeline on it up to a registered package and its Bento.
    ingested = runner.invoke(
        app,
        [
            "ingest",
            str(phi),
            "--out",
            str(out / "data/ingest"),
            "--source",
            "dicom",
            "--workers",
            "1",
            "--image-size",
            "32",  # the tiny pipeline's size (helpers.pipeline.tiny_params_data)
        ],
    )
    assert ingested.exit_code == 0, ingested.output
    assert "rejected 0" in ingested.output
    data = tiny_params_data(out)
    data["ingest"].update(source="dicom", source_dir=str(phi))
    data["package"].update(register=True, build_bento=True)
    # A full drift report (Evidently HTML, workspace) from the few reference rows a tiny
    # package has: the report is where header values would show.
    data["monitor"].update(min_reference_rows=5, min_current_rows=5)
    params = parse_section(Params, data, "")
    (out / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    from cxr_triage.stages import (
        backbone,
        compare,
        embed,
        evaluate,
        finetune,
        package,
        split,
        threshold,
        transfer,
    )

    monkeypatch.chdir(REPO)  # the Bento's build context (bentofile.yaml, src/)
    for stage in (split, backbone, embed, transfer, finetune, compare, threshold, evaluate):
        stage.run(params)
    record = package.run(params)
    tag = record["model_tag"]

    # 2. Batch scoring, monitoring of the folder.
    predicted = runner.invoke(
        app, ["predict", str(phi), "--model-tag", tag, "--out", str(out / "predict.csv")]
    )
    assert predicted.exit_code == 0, predicted.output
    monitored = runner.invoke(
        app,
        [
            "monitor",
            "--images",
            str(phi),
            "--model-tag",
            tag,
            "--site",
            "hospital_a",
            "--params",
            str(out / "params.yaml"),
            "--json",
        ],
    )
    assert monitored.exit_code in (0, 3), monitored.output
    assert json.loads(monitored.stdout)["status"] in ("drift", "no_drift"), monitored.output

    # 3. The service: single and batch uploads, logged with the study's keyed digest.
    files = sorted(phi.glob("*.dcm"))[:4]
    (tmp_path / "serve").mkdir()
    with serve(tmp_path / "serve", tag=tag, env={"CXR_TRIAGE_SALT": SALT}) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for path in files[:2]:
                assert client.post("/predict", files={"image": (path.name, path.read_bytes())})
            batch = client.post(
                "/predict_batch",
                files=[("images", (p.name, p.read_bytes())) for p in files[2:]],
            )
            assert batch.status_code == 200 and batch.json()["n_ok"] == 2
        server_output = server.output

    # 4. The DICOM listener: C-STORE into the spool, triage, the SR result sent back. Received
    # files, the headers kept for the study window and the results are outbound DICOM (they
    # may carry PHI: the SR goes back into the patient's record); everything else may not.
    spool_dir, sent = _listener_round_trip(tmp_path, params, phi_files=files)
    assert sent and str(sent[0].PatientName) in {
        str(pydicom.dcmread(f).PatientName) for f in files
    }

    # 5. The Prefect flows: monitoring of the folder, ingestion of a batch into data/raw.
    sys.path.insert(0, str(REPO))
    from flows.ingestion import ingestion_flow
    from flows.monitoring import monitoring_flow

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True)
    shutil.copytree(phi, repo / "data/incoming")
    ingested_flow = ingestion_flow(incoming_dir="data/incoming", repo_dir=str(repo))
    assert ingested_flow["accepted"] and not ingested_flow["rejected"]
    report = monitoring_flow(repo_dir=str(repo), folder=str(phi), site="hospital_a", model_tag=tag)
    assert report["status"] in ("drift", "no_drift"), report

    # 6. Scan everything written. Logs of this process (caplog, DEBUG) too.
    (tmp_path / "test_log.txt").write_text(caplog.text)
    roots = [
        out,
        state_layout().root,
        Path(os.environ["BENTOML_HOME"]),
        Path(prefect_server_env["PREFECT_HOME"]),
        repo / "data/raw",
        repo / "data/raw.dvc",
        tmp_path / "serve",
        server_output,
        tmp_path / "prefect_server.log",
        tmp_path / "test_log.txt",
        spool_dir,
        tmp_path / "listener_predictions.sqlite",
    ]
    outbound = [spool_dir / name for name in ("incoming", "headers", "outbox")]
    inputs = [phi, repo / "data/processed", repo / "data/incoming"]
    found = _scan(roots, values, skip=[*inputs, *outbound])
    assert not found, f"{len(found)} PHI values found, e.g. " + json.dumps(found[:10], indent=1)
    # The scan can fail: the inputs themselves are full of those values.
    assert len(_scan([phi], values, skip=[])) > len(values) / 2


def _listener_round_trip(
    tmp_path: Path, params: Params, phi_files: list[Path]
) -> tuple[Path, list[Dataset]]:
    """C-STORE ``phi_files`` to the listener (in-process, real pynetdicom peers), triage them
    with the package, send the results; the spool folder and the data sets received back."""
    from cxr_triage.data.deid import Pseudonymiser
    from cxr_triage.inference.predictor import Predictor
    from cxr_triage.inference.predlog import PredictionLog
    from cxr_triage.pacs.outbox import Outbox
    from cxr_triage.pacs.scp import DicomReceiver
    from cxr_triage.pacs.settings import Destination, PacsSettings
    from cxr_triage.pacs.spool import Spool
    from cxr_triage.pacs.triage import TriageWorker
    from helpers.pacs import CALLING_AE, StorageDestination, store_files

    settings = PacsSettings(
        port=free_port(),
        calling_aes={CALLING_AE: "hospital_a"},
        spool_dir=tmp_path / "spool",
        quiet_seconds=0.0,
        destinations=(Destination("DEST", "127.0.0.1", free_port()),),
    )
    spool = Spool(settings.spool, Pseudonymiser(SALT))
    receiver = DicomReceiver(settings, spool)
    destination = StorageDestination(settings.destinations[0].port).start()
    receiver.start()
    try:
        assert store_files(settings.port, phi_files) == [0] * len(phi_files)
        log = PredictionLog(tmp_path / "listener_predictions.sqlite")
        worker = TriageWorker(settings, spool, Predictor(Path(params.paths.package_dir)), log)
        summary = worker.run_once()
        assert summary.triaged == len(phi_files), summary
        assert Outbox(settings, spool).send_due()["sent"] == len(summary.results)
    finally:
        receiver.stop(timeout=5)
        destination.stop()
        spool.close()
    return settings.spool_dir, destination.received
