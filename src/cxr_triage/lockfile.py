"""The project's lock file, ``requirements.lock``: exact versions of the whole environment.

Written by ``make lock`` (``uv pip compile --generate-hashes``), installed by ``make setup``.
The Bento's requirement pins (:mod:`cxr_triage.serving.bento`) and ``cxr-triage doctor``'s
environment check read it here, so one file decides which versions run. ``make audit``
(``python -m cxr_triage.lockfile audit``) checks it for known vulnerabilities with pip-audit.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from cxr_triage.errors import ConfigError

__all__ = [
    "AUDIT_SERVICES",
    "LOCKFILE",
    "NOT_AUDITED",
    "Mismatch",
    "audit_lock",
    "installed_mismatches",
    "read_lock",
    "reachable_audit_service",
]

LOCKFILE = Path("requirements.lock")
# `make audit`'s exit code when no vulnerability database answered: never a pass (0), and not
# pip-audit's 1 (vulnerabilities found, or the audit failed).
NOT_AUDITED = 3
# pip-audit's services, with the URL each queries (pip_audit/_service/{pypi,osv}.py).
AUDIT_SERVICES = {
    "pypi": "https://pypi.org/pypi/{name}/{version}/json",
    "osv": "https://api.osv.dev/v1/query",
}


@dataclass(frozen=True)
class Mismatch:
    """A locked package whose installed version differs (``installed`` None: not installed)."""

    name: str
    locked: str
    installed: str | None

    def __str__(self) -> str:
        found = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.name}: {found}, the lock says {self.locked}"


def read_lock(path: str | os.PathLike[str] = LOCKFILE) -> dict[NormalizedName, str]:
    """The exact version of every package in a hashed requirements lock.

    Args:
        path: a ``pip``/``uv pip compile`` requirements file where every requirement is
            ``name==version`` (hash and comment lines are skipped).

    Returns:
        Canonical package name (PEP 503: ``scikit-learn``, ``sqlalchemy``) -> version as
        written (local labels kept: ``2.13.0+cpu``).

    Raises:
        ConfigError: the file is missing, or a requirement in it is not an exact pin.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"no lock file {path}; run from the repository root (it holds {LOCKFILE.name}) "
            "or create it with `make lock`"
        )
    pins: dict[NormalizedName, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].rstrip().removesuffix("\\").strip()
        if not line or raw[:1].isspace() or line.startswith("-"):
            continue  # blank, comment, hash continuation, or an option (--find-links ...)
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(
                f"{path}:{number}: {line!r}: {reason}; regenerate it with `make lock`"
            ) from None
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise ConfigError(
                f"{path}:{number}: {line!r} is not an exact pin (name==version); "
                "regenerate it with `make lock`"
            )
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def installed_mismatches(lock: dict[NormalizedName, str]) -> list[Mismatch]:
    """Every locked package that is missing here or installed at another version.

    Versions compare as PEP 440 versions (``2.0.58`` equals ``2.0.58.0``; ``2.13.0+cpu`` does
    not equal ``2.13.0``).
    """
    mismatches = []
    for name, locked in sorted(lock.items()):
        try:
            installed: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(locked):
            mismatches.append(Mismatch(name, locked, installed))
    return mismatches


def reachable_audit_service(
    lock: dict[NormalizedName, str],
    services: dict[str, str] = AUDIT_SERVICES,
    timeout: float = 10.0,
) -> tuple[str | None, list[str]]:
    """The first of pip-audit's vulnerability services that answers a query for a locked package.

    A package index that serves packages is not enough: pip-audit's PyPI service reads
    ``/pypi/<name>/<version>/json``, which a registry proxy may refuse (404); pip-audit then
    reports every package "not found on PyPI" and, without ``--strict``, finds nothing.

    Returns:
        (service name or None, why each service before it could not be used).
    """
    public = sorted((n, v) for n, v in lock.items() if "+" not in v)
    name, version = ("pip", lock["pip"]) if "pip" in dict(public) else public[0]
    reasons = []
    for service, url in services.items():
        if "{name}" in url:
            request = urllib.request.Request(url.format(name=name, version=version))
        else:
            query = {"package": {"name": name, "ecosystem": "PyPI"}, "version": version}
            request = urllib.request.Request(
                url, data=json.dumps(query).encode(), headers={"Content-Type": "application/json"}
            )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                json.load(response)
            return service, reasons
        except urllib.error.HTTPError as exc:
            reasons.append(f"{service}: {request.full_url} answered HTTP {exc.code}")
        except (OSError, ValueError) as exc:
            reasons.append(f"{service}: {request.full_url} unreachable ({exc})")
    return None, reasons


def audit_lock(
    lockfile: str | os.PathLike[str] = LOCKFILE,
    services: dict[str, str] = AUDIT_SERVICES,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """``pip-audit --strict`` on every locked version, where a vulnerability database answers.

    Local version labels are dropped for the query (``torch 2.13.0+cpu`` is audited as
    torch 2.13.0: the same release, built for the CPU).

    Returns:
        (exit code, message): pip-audit's own (0 none known, 1 vulnerabilities found or the
        audit failed; its report is printed as it runs), or :data:`NOT_AUDITED` with
        ``not audited: <why>`` when no service answered.
    """
    lock = read_lock(lockfile)
    service, reasons = reachable_audit_service(lock, services, timeout)
    if service is None:
        return NOT_AUDITED, (
            f"not audited: no vulnerability database answered ({'; '.join(reasons)}); "
            f"run `make audit` where one of them can be reached"
        )
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            "".join(f"{n}=={Version(v).public}\n" for n, v in sorted(lock.items()))
        )
        command = [sys.executable, "-m", "pip_audit", "--strict", "--no-deps", "--disable-pip"]
        command += ["--progress-spinner", "off", "-s", service, "-r", str(requirements)]
        if service == "osv":
            command += ["--osv-url", services["osv"]]
        code = subprocess.run(command, check=False).returncode
    verdict = "no known vulnerability" if code == 0 else "vulnerabilities found or audit failed"
    return code, f"audited {len(lock)} packages of {lockfile} with {service}: {verdict}"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cxr_triage.lockfile audit [LOCKFILE]``: exit as :func:`audit_lock` says."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "audit":
        raise SystemExit("usage: python -m cxr_triage.lockfile audit [LOCKFILE]")
    code, message = audit_lock(args[1] if len(args) > 1 else LOCKFILE)
    print(message)  # the command's output
    raise SystemExit(code)


if __name__ == "__main__":
    main()
