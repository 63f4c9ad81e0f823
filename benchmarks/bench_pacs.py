"""The DICOM listener end to end: instances per second from the first byte sent to the last SR
delivered, against ``cxr-triage predict`` on the same files in the same run.

Target (issue 13): >= 0.7x ``predict``'s rate, for a batch of 20 studies x 2 images, 2048x2048
16-bit DX, sent over loopback. The listener (``cxr-triage listen``, its own process, bound to
127.0.0.1) receives the batch from dcmtk's ``storescu`` (one association, study after study,
as a PACS forwards), spools durably (fsync), triages, closes each study after the quiet period
and sends its SR by C-STORE to a destination SCP in this process; the clock stops at the last
SR's arrival. For scale, the same send is also received by dcmtk's ``storescp`` (C++, no fsync,
no triage): the network floor of this machine.

``predict``'s rate is counted two ways: what the command does once its model is loaded
(``score_files`` and ``write_results`` in this process: the listener's clock also starts once
it is up), held to the target; and the whole command as an operator runs it (start-up
included, which on a loaded 2-core machine is most of it), for information. Run::

    python benchmarks/bench_pacs.py --package models/package [--quiet 0.5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.7
STUDIES, IMAGES_PER_STUDY, SIZE = 20, 2, 2048
SALT = "benchmark-salt-0123456789abcdef"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # dcmtk's storescu, not pynetdicom's in the venv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_batch(out: Path) -> list[list[Path]]:
    """20 studies of 2 DX images (PA, AP), 2048x2048, 16 bits stored; files per study.

    Each image is ``bench_serve``'s synthetic DX (12 bits stored) brought to 16 bits and put in
    its study.
    """
    import pydicom
    from pydicom.uid import generate_uid

    from bench_serve import make_dicom

    out.mkdir(parents=True, exist_ok=True)
    studies = []
    for s in range(STUDIES):
        study, files = generate_uid(), []
        for n, view in enumerate(("PA", "AP")[:IMAGES_PER_STUDY]):
            path = make_dicom(out / f"s{s:02d}_{n}.dcm", size=SIZE, seed=s * IMAGES_PER_STUDY + n)
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
            ds.PatientID, ds.PatientName = f"BENCH{s:03d}", f"Bench^Patient{s}"
            ds.ViewPosition = view
            ds.BitsStored, ds.HighBit = 16, 15
            ds.PixelData = (ds.pixel_array.astype(np.uint16) << 4).tobytes()
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        studies.append(files)
    return studies


class Destination:
    """A C-STORE SCP that notes when each SR arrives."""

    def __init__(self, port: int) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.arrivals: list[float] = []
        self.done = threading.Event()
        ae = AE(ae_title="DEST")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:  # noqa: ANN001 - pynetdicom's event
        self.arrivals.append(time.perf_counter())
        if len(self.arrivals) >= STUDIES:
            self.done.set()
        return 0x0000


def time_predict_command(package: Path, files: list[Path], work: Path) -> float:
    """Wall time of ``cxr-triage predict`` as an operator runs it (start-up included)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "predict", *map(str, files),
         "--package", str(package), "--out", str(work / "predict.csv")],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"cxr-triage predict failed:\n{proc.stderr}")
    return time.perf_counter() - start


def time_predict_work(package: Path, files: list[Path], work: Path) -> float:
    """What ``cxr-triage predict`` does once its model is loaded (score_files, write_results),
    in this process: the same start line as the listener's clock, which starts once it is up."""
    from cxr_triage.inference.batch import score_files, write_results
    from cxr_triage.inference.predictor import Predictor

    predictor = Predictor(package)
    start = time.perf_counter()
    write_results(score_files(predictor, files, progress=False), work / "predict.csv")
    return time.perf_counter() - start


def send(studies: list[list[Path]], port: int, called: str) -> None:
    """The whole batch with dcmtk's storescu in one association, study after study (as a PACS
    forwards a worklist's studies)."""
    storescu = shutil.which("storescu", path=SYSTEM_PATH) or "storescu"
    files = [str(f) for study in studies for f in study]
    sent = subprocess.run(
        [storescu, "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *files],
        capture_output=True, text=True,
    )  # fmt: skip
    if sent.returncode != 0 or "Store Failed" in sent.stdout + sent.stderr:
        raise SystemExit(f"storescu failed: {sent.stdout}{sent.stderr}")


def time_storescp(studies: list[list[Path]], work: Path) -> float:
    """The network floor: the same send received by dcmtk's storescp (C++, no fsync)."""
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    storescp = shutil.which("storescp", path=SYSTEM_PATH) or "storescp"
    server = subprocess.Popen([storescp, "-aet", "FLOOR", "-od", str(out), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)
        start = time.perf_counter()
        send(studies, port, "FLOOR")
        return time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(out, ignore_errors=True)


def time_listener(package: Path, studies: list[list[Path]], work: Path, quiet: float) -> dict:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port, dest_port = free_port(), free_port()
    destination = Destination(dest_port)
    env = {
        **os.environ,
        "CXR_TRIAGE_SALT": SALT,
        "CXR_TRIAGE_STATE_DIR": str(work / "state"),
        "CXR_TRIAGE_LOG_LEVEL": "WARNING",
        "CXR_TRIAGE_PACS_CALLING_AES": "BENCH=bench",
        "CXR_TRIAGE_PACS_PORT": str(port),
        "CXR_TRIAGE_PACS_QUIET_SECONDS": str(quiet),
        "CXR_TRIAGE_PACS_DESTINATIONS": f"DEST@127.0.0.1:{dest_port}",
    }
    log = open(work / "listen.log", "w")
    listener = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage.cli", "listen", "--package", str(package)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(Verification)
        while True:
            if listener.poll() is not None:
                raise SystemExit(f"the listener exited:\n{(work / 'listen.log').read_text()}")
            assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
            if assoc.is_established:
                assoc.release()
                break
            time.sleep(0.2)
        start = time.perf_counter()
        send(studies, port, "CXRTRIAGE")
        sent_at = time.perf_counter()
        if not destination.done.wait(600):
            raise SystemExit(f"only {len(destination.arrivals)} SRs arrived")
        return {
            "send_s": sent_at - start,
            "total_s": destination.arrivals[-1] - start,
            "first_sr_s": destination.arrivals[0] - start,
        }
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(60)
        destination.server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / "models" / "package")
    parser.add_argument("--quiet", type=float, default=0.5, help="study quiet period, seconds")
    parser.add_argument("--keep", type=Path, help="keep the generated DICOMs in this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.package / "package.json").is_file():
        raise SystemExit(f"{args.package} is not a model package: run `dvc repro` or --package")
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    try:
        data = args.keep or work / "dicom"
        studies = make_batch(data)
        files = [f for study in studies for f in study]
        n = len(files)
        command = time_predict_command(args.package, files, work)
        floor = time_storescp(studies, work)
        predict_work = time_predict_work(args.package, files, work)
        pacs = time_listener(args.package, studies, work, args.quiet)
        predict_rate, command_rate = n / predict_work, n / command
        pacs_rate = n / pacs["total_s"]
        print(f"batch: {STUDIES} studies x {IMAGES_PER_STUDY} images, {SIZE}x{SIZE} 16-bit DX, "
              f"{sum(f.stat().st_size for f in files) / 2**20:.0f} MiB; quiet period "
              f"{args.quiet:g} s")  # fmt: skip
        print(f"cxr-triage predict: {predict_work:.2f} s for {n} once loaded "
              f"({predict_rate:.2f} img/s); the whole command {command:.2f} s "
              f"({command_rate:.2f} img/s)")  # fmt: skip
        print(f"network floor: dcmtk storescp receives the batch in {floor:.2f} s "
              f"({n / floor:.2f} img/s, no fsync, no triage)")  # fmt: skip
        print(f"listener: sent in {pacs['send_s']:.2f} s, first SR at {pacs['first_sr_s']:.2f} s, "
              f"last SR at {pacs['total_s']:.2f} s -> {pacs_rate:.2f} img/s "
              f"({pacs_rate * floor / n:.2f}x the network floor)")  # fmt: skip
        ratio, whole = pacs_rate / predict_rate, pacs_rate / command_rate
        print(f"ratio received-to-SR-sent / predict: {ratio:.2f} (target >= {TARGET}); "
              f"{whole:.2f} against the whole predict command")  # fmt: skip
        print("MEETS TARGET" if ratio >= TARGET else "BELOW TARGET")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
