"""Real DICOM software for the listener's acceptance test: Orthanc, ``cxr-triage listen`` and a
worklist webhook, each a process in a private network namespace (``helpers.netns``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr_triage.pacs.spool import Spool
from helpers.netns import NetNamespace, orthanc_config, stop
from helpers.pacs import CALLING_AE, SALT, SITE

TOOLS = ("Orthanc", "storescu", "echoscu", "findscu", "dciodvfy", "curl")
# pynetdicom installs its own storescu/echoscu/findscu into the venv: use the system's dcmtk.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
STORESCU, ECHOSCU, FINDSCU = (shutil.which(t, path=SYSTEM_PATH) or t for t in TOOLS[1:4])
ORTHANC_HTTP, ORTHANC_DICOM = 18042, 14242
WEBHOOK_PORT = 18080


class Orthanc:
    """Orthanc as a process in the namespace, with its REST API through curl."""

    def __init__(self, ns: NetNamespace, root: Path) -> None:
        self.ns, self.root = ns, root
        self.config = orthanc_config(root, http_port=ORTHANC_HTTP, dicom_port=ORTHANC_DICOM)
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self.process = self.ns.popen(["Orthanc", self.config], log=open(self.root / "log", "a"))
        self.ns.wait_for(["curl", "-sf", f"127.0.0.1:{ORTHANC_HTTP}/system"], what="Orthanc")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def rest(self, path: str, body: Any = None) -> Any:
        cmd = ["curl", "-sf", f"127.0.0.1:{ORTHANC_HTTP}{path}"]
        if body is not None:
            cmd += ["-X", "POST", "-d", json.dumps(body)]
        out = self.ns.run(cmd)
        assert out.returncode == 0, f"Orthanc {path}: {out.stderr}"
        return json.loads(out.stdout)

    def file(self, instance_id: str, dest: Path) -> Path:
        out = self.ns.run(["curl", "-sf", "-o", dest, f"127.0.0.1:{ORTHANC_HTTP}/instances/"
                           f"{instance_id}/file"])  # fmt: skip
        assert out.returncode == 0, out.stderr
        return dest

    def find(self, **query: str) -> list[str]:
        return self.rest("/tools/find", {"Level": "Instance", "Query": query})


class Listener:
    """``cxr-triage listen`` in the namespace, its spool read from the test."""

    def __init__(self, ns: NetNamespace, root: Path, package: Path, port: int, **env: str):
        self.ns, self.root, self.package, self.port = ns, root, package, port
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "CXR_TRIAGE_SALT": SALT,
            "CXR_TRIAGE_STATE_DIR": str(root / "state"),
            "CXR_TRIAGE_LOG_LEVEL": "INFO",
            "CXR_TRIAGE_PACS_CALLING_AES": f"{CALLING_AE}={SITE}",
            "CXR_TRIAGE_PACS_PORT": str(port),
            "CXR_TRIAGE_PACS_QUIET_SECONDS": "1",
            "CXR_TRIAGE_PACS_DESTINATIONS": f"ORTHANC@127.0.0.1:{ORTHANC_DICOM}",
            "CXR_TRIAGE_PACS_RETRY_INITIAL_SECONDS": "0.5",
            "CXR_TRIAGE_PACS_RETRY_MAX_SECONDS": "2",
            "CXR_TRIAGE_PACS_NETWORK_TIMEOUT": "10",
            **env,
        }
        self.process: subprocess.Popen[Any] | None = None
        self.log = root / "listen.log"

    def start(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "cxr_triage.cli", "listen", "--package", self.package, *args]
        self.process = self.ns.popen(cmd, log=open(self.log, "a"), env=self.env)
        echo = [ECHOSCU, "-aet", CALLING_AE, "-aec", "CXRTRIAGE", "127.0.0.1", str(self.port)]
        deadline = time.monotonic() + 240
        while self.ns.run(echo, timeout=30).returncode != 0:
            assert self.process.poll() is None, f"listener exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, "listener not ready after 240 s"
            time.sleep(0.25)

    @property
    def spool(self) -> Spool:
        return Spool(self.root / "state" / "spool")

    def wait(self, condition: Callable[[Spool], bool], timeout: float = 180) -> Spool:
        spool = self.spool
        deadline = time.monotonic() + timeout
        while not condition(spool):
            assert self.process is None or self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{spool.counts()}\n{self.log.read_text()}"
            time.sleep(0.2)
        return spool

    def stop(self) -> int:
        return stop(self.process) if self.process is not None else 0


WEBHOOK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[1], "ab") as f:
            f.write(body + b"\\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
"""
