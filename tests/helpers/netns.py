"""A private network namespace for tests that start servers listening on every interface.

Orthanc 1.10 binds its DICOM and HTTP ports to 0.0.0.0 whatever its configuration says
(STACK-wave2.md §1). Inside a namespace made with ``unshare -n`` the only interface is a
loopback of its own, so nothing started there can be reached from outside the test. A sleeping
process holds the namespace; every command of the test enters it with ``nsenter``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


class NetNamespace:
    """Run commands inside a fresh network namespace with only loopback up."""

    def __init__(self) -> None:
        self._holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 86400"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self._holder.stdout.readline().strip() if self._holder.stdout else ""
        if line != "up":
            error = self._holder.stderr.read() if self._holder.stderr else ""
            self._holder.kill()
            raise OSError(f"cannot create a network namespace: {error.strip() or line}")
        self.prefix = ["nsenter", f"--net=/proc/{self._holder.pid}/ns/net", "--"]

    @staticmethod
    def unavailable() -> str | None:
        """Why no namespace can be made here (None when it can)."""
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        probe = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            return (
                "cannot create a network namespace (needs root or unprivileged user namespaces): "
                f"{probe.stderr.strip()}"
            )
        return None

    def run(
        self, cmd: Sequence[str | os.PathLike[str]], *, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the namespace; stdout and stderr captured as text."""
        return subprocess.run(
            [*self.prefix, *map(str, cmd)],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def popen(
        self, cmd: Sequence[str | os.PathLike[str]], *, log: IO[Any] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start inside the namespace; output to ``log`` (else discarded)."""
        return subprocess.Popen(
            [*self.prefix, *map(str, cmd)],
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            **kwargs,
        )

    def wait_for(self, cmd: Sequence[str], *, timeout: float = 180, what: str = "") -> float:
        """Retry ``cmd`` until it exits 0; the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.run(cmd, timeout=30).returncode == 0:
                return time.monotonic() - start
            time.sleep(0.25)
        raise TimeoutError(f"{what or ' '.join(cmd)} not ready after {timeout} s")

    def close(self) -> None:
        self._holder.kill()
        self._holder.wait()


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` s; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def orthanc_config(root: Path, *, http_port: int = 18042, dicom_port: int = 14242) -> Path:
    """An Orthanc configuration with storage under ``root`` and the DICOMweb plugin."""
    import json

    config = {
        "Name": "cxr-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"findscu": {"AET": "FINDSCU", "Host": "127.0.0.1", "Port": 11999}},
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Root": "/dicom-web/", "Host": f"127.0.0.1:{http_port}"},
    }
    path = root / "orthanc.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path
