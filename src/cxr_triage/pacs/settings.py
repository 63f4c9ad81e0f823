"""Deployment settings of the DICOM listener: who may send, where results go, how long to wait.

These describe one hospital deployment, not an experiment, so they come from the environment
or a settings file (never ``params.yaml``). :meth:`PacsSettings.from_env` reads the file named
by ``CXR_TRIAGE_PACS_SETTINGS`` (YAML or JSON, keys = the field names below) when it is set,
then lets every ``CXR_TRIAGE_PACS_<FIELD>`` variable override it. Secrets (the DICOMweb
password) come from the environment only.

========================================  =============================  ======================
variable (file key)                       meaning                        default
========================================  =============================  ======================
``CXR_TRIAGE_PACS_AE_TITLE``              the listener's AE title        ``CXRTRIAGE``
``CXR_TRIAGE_PACS_HOST``                  address to bind                ``127.0.0.1``
``CXR_TRIAGE_PACS_PORT``                  TCP port                       ``11112``
``CXR_TRIAGE_PACS_CALLING_AES``           allowed calling AE titles and  required
                                          the site each stands for:
                                          ``CT1=hospital_a,PACS=hospital_a``
``CXR_TRIAGE_PACS_TLS_CERT`` / ``_KEY``   DICOM TLS: certificate and key off
``CXR_TRIAGE_PACS_TLS_CA``                with TLS, require client
                                          certificates signed by this CA
``CXR_TRIAGE_PACS_ACCEPT_SECONDARY_       also accept Secondary Capture  ``true``
CAPTURE``                                 (judged by its Modality)
``CXR_TRIAGE_PACS_QUIET_SECONDS``         a study closes when nothing    ``30``
                                          arrived for this long
``CXR_TRIAGE_PACS_STUDY_RULE``            study probability from its     ``max``
                                          frontal images: max or mean
``CXR_TRIAGE_PACS_DESTINATIONS``          C-STORE destinations:          none
                                          ``PACS@10.0.0.5:104,...``
``CXR_TRIAGE_PACS_STOW_URL``              DICOMweb base URL for STOW-RS  none
``CXR_TRIAGE_PACS_DICOMWEB_USER``         HTTP basic auth for DICOMweb   none
``CXR_TRIAGE_PACS_DICOMWEB_PASSWORD``     (environment only)             none
``CXR_TRIAGE_PACS_WORKLIST_WEBHOOK``      URL the worklist feed is       none
                                          POSTed to (JSON)
``CXR_TRIAGE_PACS_RETRY_INITIAL_SECONDS`` first retry delay; doubles     ``5``
``CXR_TRIAGE_PACS_RETRY_MAX_SECONDS``     longest retry delay            ``600``
``CXR_TRIAGE_PACS_RETENTION_HOURS``       keep received files after      ``0``
                                          triage and results after
                                          delivery this long
``CXR_TRIAGE_PACS_STUDY_WINDOW_HOURS``    a late instance supersedes a   ``24``
                                          study's result within this
``CXR_TRIAGE_PACS_SPOOL_DIR``             the spool (absolute path)      state folder's
                                                                         ``spool/``
``CXR_TRIAGE_PACS_BATCH_SIZE``            images per network call        ``32``
``CXR_TRIAGE_PACS_DECODE_THREADS``        decoding threads               ``2``
``CXR_TRIAGE_PACS_MAX_ASSOCIATIONS``      concurrent associations        ``10``
``CXR_TRIAGE_PACS_NETWORK_TIMEOUT``       seconds of DICOM network       ``30``
                                          silence before giving up
``CXR_TRIAGE_PACS_SECONDARY_CAPTURE``     also send a secondary capture  ``false``
                                          with the result burned in
========================================  =============================  ======================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cxr_triage.errors import ConfigError
from cxr_triage.state import state_layout

__all__ = [
    "ENV_PREFIX",
    "SETTINGS_ENV",
    "Destination",
    "PacsSettings",
    "parse_ae_title",
]

ENV_PREFIX = "CXR_TRIAGE_PACS_"
SETTINGS_ENV = f"{ENV_PREFIX}SETTINGS"
_SECRET_FIELDS = ("dicomweb_password",)
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE VR: no backslash, no controls
_DESTINATION = re.compile(r"(?P<ae>[^@]+)@(?P<host>[^:@]+):(?P<port>\d+)")
STUDY_RULES = ("max", "mean")


def parse_ae_title(value: str, where: str) -> str:
    """A valid AE title (1-16 printable ASCII characters, no backslash), stripped.

    Raises:
        ConfigError: naming ``where`` (the variable or file key).
    """
    title = str(value).strip()
    if not _AE_TITLE.fullmatch(title):
        raise ConfigError(
            f"{where}: {value!r} is not a DICOM AE title (1 to 16 printable ASCII characters, "
            "no backslash)"
        )
    return title


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination: the AE title it answers to, its host and port."""

    ae_title: str
    host: str
    port: int

    @property
    def name(self) -> str:
        """How the outbox and the logs name it: ``AE@host:port``."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, value: Any, where: str) -> Destination:
        """From ``AE@host:port`` or a mapping with ``ae_title``, ``host``, ``port``."""
        if isinstance(value, Mapping):
            try:
                ae, host, port = value["ae_title"], value["host"], value["port"]
            except KeyError as exc:
                raise ConfigError(
                    f"{where}: a destination needs ae_title, host and port; {exc} is missing"
                ) from exc
        else:
            match = _DESTINATION.fullmatch(str(value).strip())
            if match is None:
                raise ConfigError(
                    f"{where}: {value!r} is not a destination; write AE@host:port, "
                    "e.g. PACS@10.0.0.5:104"
                )
            ae, host, port = match["ae"], match["host"], match["port"]
        return cls(parse_ae_title(ae, where), str(host).strip(), _port(port, where))


def _port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not a port number") from exc
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is outside 1-65535")
    return port


@dataclass(frozen=True)
class PacsSettings:
    """One deployment of the listener (see the module docstring for each field's variable).

    Attributes:
        calling_aes: allowed calling AE title -> the site its images come from (recorded with
            each prediction, so drift monitoring can compare like with like); ``None`` for no
            site.
        destinations: C-STORE destinations for results.
        quiet_seconds: seconds without a new instance after which a study is closed.
        retention_hours: hours a received file stays in the spool after triage, and a result
            file after every destination has it (0: deleted at once).
        study_window_hours: hours after a study's last result during which a late instance
            supersedes it (the headers of its evaluated instances are kept that long).
    """

    ae_title: str = "CXRTRIAGE"
    host: str = "127.0.0.1"
    port: int = 11112
    calling_aes: Mapping[str, str | None] = field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    accept_secondary_capture: bool = True
    quiet_seconds: float = 30.0
    study_rule: str = "max"
    destinations: tuple[Destination, ...] = ()
    stow_url: str | None = None
    dicomweb_user: str | None = None
    dicomweb_password: str | None = field(default=None, repr=False)
    worklist_webhook: str | None = None
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    retention_hours: float = 0.0
    study_window_hours: float = 24.0
    spool_dir: Path | None = None
    batch_size: int = 32
    decode_threads: int = 2
    max_associations: int = 10
    network_timeout: float = 30.0
    secondary_capture: bool = False

    def __post_init__(self) -> None:
        where = {f.name: f"{ENV_PREFIX}{f.name.upper()}" for f in fields(self)}
        parse_ae_title(self.ae_title, where["ae_title"])
        _port(self.port, where["port"])
        for ae in self.calling_aes:
            parse_ae_title(ae, where["calling_aes"])
        if self.study_rule not in STUDY_RULES:
            raise ConfigError(
                f"{where['study_rule']}={self.study_rule!r}: use one of {', '.join(STUDY_RULES)}"
            )
        for name in ("quiet_seconds", "retention_hours", "study_window_hours"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where[name]} must be >= 0, got {getattr(self, name)}")
        for name in (
            "retry_initial_seconds",
            "retry_max_seconds",
            "batch_size",
            "decode_threads",
            "max_associations",
            "network_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where[name]} must be > 0, got {getattr(self, name)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                f"DICOM TLS needs both {where['tls_cert']} and {where['tls_key']} (the "
                "listener's certificate and private key, PEM files)"
            )
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError(
                f"{where['tls_ca']} (client certificate check) needs TLS on: set "
                f"{where['tls_cert']} and {where['tls_key']}"
            )
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{where[name]}={path}: no such file")
        if self.spool_dir is not None and not Path(self.spool_dir).is_absolute():
            raise ConfigError(
                f"{where['spool_dir']}={self.spool_dir}: give an absolute path (the spool must "
                "not depend on the directory the listener happens to start in)"
            )
        for name in ("stow_url", "worklist_webhook"):
            url = getattr(self, name)
            if url is not None and not re.match(r"https?://", url):
                raise ConfigError(f"{where[name]}={url!r}: give an http:// or https:// URL")

    # -- derived ---------------------------------------------------------------------------

    @property
    def spool(self) -> Path:
        """The spool folder: ``spool_dir``, else the state folder's ``spool/``."""
        return Path(self.spool_dir) if self.spool_dir else state_layout().spool_dir

    @property
    def destination_names(self) -> tuple[str, ...]:
        """Every destination of a result, as the outbox names them."""
        names = [d.name for d in self.destinations]
        if self.stow_url:
            names.append(f"stow:{self.stow_url}")
        if self.worklist_webhook:
            names.append(f"webhook:{self.worklist_webhook}")
        return tuple(names)

    def site_of(self, calling_ae: str) -> str | None:
        """The site a calling AE title stands for (None when it names none)."""
        return self.calling_aes.get(calling_ae.strip())

    def require_calling_aes(self) -> None:
        """Refuse to listen with no allowed calling AE (nobody could send anything).

        Raises:
            ConfigError: naming the variable to set.
        """
        if not self.calling_aes:
            raise ConfigError(
                f"no calling AE title is allowed to send: set {ENV_PREFIX}CALLING_AES, e.g. "
                f"{ENV_PREFIX}CALLING_AES='MODALITY1=hospital_a,PACS=hospital_a' (AE title = "
                "the site its images come from), or calling_aes in the settings file"
            )

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "settings") -> PacsSettings:
        """From a mapping of field names to values (a parsed settings file).

        Raises:
            ConfigError: an unknown key or a value of the wrong kind (naming the key).
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        secrets = [k for k in _SECRET_FIELDS if k in data]
        if secrets and where != "environment":
            raise ConfigError(
                f"{where}: {', '.join(secrets)} is a secret; set it in the environment "
                f"({', '.join(ENV_PREFIX + s.upper() for s in secrets)}), not in a file"
            )
        values = {name: _convert(name, value, f"{where}: {name}") for name, value in data.items()}
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PacsSettings:
        """From a YAML or JSON file whose keys are the field names.

        Raises:
            ConfigError: the file is missing, unreadable or holds a bad value.
        """
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read the listener settings file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must hold a mapping of setting names to values")
        return cls.from_mapping(data, where=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PacsSettings:
        """The file named by ``CXR_TRIAGE_PACS_SETTINGS`` (if set), then the variables.

        Raises:
            ConfigError: naming the variable (or file key) that is wrong.
        """
        environ = os.environ if environ is None else environ
        settings_file = environ.get(SETTINGS_ENV, "").strip()
        base = cls.from_file(settings_file) if settings_file else cls()
        overrides: dict[str, Any] = {}
        for f in fields(cls):
            variable = f"{ENV_PREFIX}{f.name.upper()}"
            raw = environ.get(variable)
            if raw is None or raw.strip() == "":
                continue
            overrides[f.name] = _convert(f.name, raw, variable)
        return replace(base, **overrides) if overrides else base


_INT_FIELDS = {"port", "batch_size", "decode_threads", "max_associations"}
_FLOAT_FIELDS = {
    "quiet_seconds",
    "retry_initial_seconds",
    "retry_max_seconds",
    "retention_hours",
    "study_window_hours",
    "network_timeout",
}
_BOOL_FIELDS = {"accept_secondary_capture", "secondary_capture"}
_PATH_FIELDS = {"tls_cert", "tls_key", "tls_ca", "spool_dir"}


def _convert(name: str, value: Any, where: str) -> Any:
    """A raw value (a string from the environment, or YAML's type) as the field's type."""
    if name in _INT_FIELDS:
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}={value!r} is not an integer") from exc
    if name in _FLOAT_FIELDS:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}={value!r} is not a number") from exc
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}={value!r}: use true or false")
    if name in _PATH_FIELDS:
        return Path(str(value)).expanduser()
    if name == "calling_aes":
        return _calling_aes(value, where)
    if name == "destinations":
        items = value.split(",") if isinstance(value, str) else list(value or [])
        return tuple(Destination.parse(v, where) for v in items if str(v).strip())
    if name in ("stow_url", "worklist_webhook"):
        return str(value).strip().rstrip("/") or None
    return str(value).strip()


def _calling_aes(value: Any, where: str) -> dict[str, str | None]:
    """``AE=site,AE2`` (a string) or a mapping (a file) -> {AE title: site or None}."""
    if isinstance(value, Mapping):
        pairs = [(str(k), None if v in (None, "") else str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for item in value.split(","):
            if not item.strip():
                continue
            ae, _, site = item.partition("=")
            pairs.append((ae, site.strip() or None))
    else:
        pairs = [(str(v), None) for v in value or []]
    out: dict[str, str | None] = {}
    for ae, site in pairs:
        title = parse_ae_title(ae, where)
        if title in out:
            raise ConfigError(f"{where}: calling AE title {title} is listed twice")
        out[title] = site
    return out
