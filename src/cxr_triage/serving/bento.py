"""Build the service's Bento from ``bentofile.yaml``, offline.

The Bento is built with the build context ``src/`` (the package lives there), pins the model it
was built for (``CXR_TRIAGE_MODEL_TAG`` in the Bento's envs, so serving the Bento serves that
model whatever is promoted later), and lists exact requirement pins. Offline builds need ``uv``
installed and no lock step (``python.lock_packages: false``); see STACK.md §3. ``bentofile.yaml``
lists package names; each gets its exact version from the project's lock file
(``requirements.lock``, what ``make setup`` installs), so the Bento runs what was tested.

Run ``python -m cxr_triage.serving.bento [MODEL_TAG]`` (default: the tag the service would load),
or let the ``package`` stage do it (``package.build_bento``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name

from cxr_triage.errors import ConfigError
from cxr_triage.inference.registry import MODEL_TAG_ENV
from cxr_triage.lockfile import LOCKFILE, read_lock

__all__ = ["BENTOFILE", "BUILD_CONTEXT", "build_bento", "main", "pins_from_lock"]

log = logging.getLogger(__name__)

BENTOFILE = Path("bentofile.yaml")
BUILD_CONTEXT = Path("src")


def pins_from_lock(names: Sequence[str], lockfile: str | os.PathLike[str] = LOCKFILE) -> list[str]:
    """Pin every package name to its version in the lock file: ``numpy`` -> ``numpy==2.4.6``.

    Args:
        names: ``bentofile.yaml``'s ``python.packages``: plain names, no versions.
        lockfile: the project's lock file.

    Returns:
        ``name==version`` for each name, in order (``torch==2.13.0+cpu``: the local label names
        the CPU build, which the Bento's extra index serves).

    Raises:
        ConfigError: naming every entry that carries a version or is not in the lock file.
    """
    lock = read_lock(lockfile)
    pinned, problems = [], []
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            problems.append(f"{name!r} is not a plain package name (the lock sets versions)")
        elif canonicalize_name(name) not in lock:
            problems.append(f"{name!r} is not in {lockfile}")
        else:
            pinned.append(f"{name}=={lock[canonicalize_name(name)]}")
    if problems:
        raise ConfigError(
            "bentofile.yaml python.packages must name packages of the lock file: "
            + "; ".join(problems)
            + "; fix the list, or add the package to pyproject.toml and run `make lock`"
        )
    return pinned


@contextlib.contextmanager
def _model_tag_env(tag: str) -> Iterator[None]:
    previous = os.environ.get(MODEL_TAG_ENV)
    os.environ[MODEL_TAG_ENV] = tag
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MODEL_TAG_ENV, None)
        else:
            os.environ[MODEL_TAG_ENV] = previous


def build_bento(
    model_tag: str,
    *,
    bentofile: str | os.PathLike[str] = BENTOFILE,
    build_ctx: str | os.PathLike[str] = BUILD_CONTEXT,
    lockfile: str | os.PathLike[str] = LOCKFILE,
) -> str:
    """Build the Bento serving ``model_tag`` (which must be in the model store); return its tag.

    Raises:
        ConfigError: bentofile.yaml or the lock file is missing, or a package bentofile.yaml
            lists is not in the lock file.
    """
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    bentofile, build_ctx = Path(bentofile), Path(build_ctx)
    if not bentofile.is_file():
        raise ConfigError(
            f"no {bentofile}; run from the repository root (it holds bentofile.yaml)"
        )
    options: dict[str, Any] = yaml.safe_load(bentofile.read_text()) or {}
    python = dict(options.get("python") or {})
    python["packages"] = pins_from_lock(python.get("packages", []), lockfile)
    envs = [e for e in options.get("envs", []) if e.get("name") != MODEL_TAG_ENV]
    envs.append({"name": MODEL_TAG_ENV, "value": model_tag})
    labels = {**options.get("labels", {}), "model_version": model_tag.partition(":")[2]}
    module = options["service"].partition(":")[0]
    loaded = sys.modules.get(module)
    # The service declares its model when its module is imported (from CXR_TRIAGE_MODEL_TAG):
    # imported earlier for another model, or for none, the Bento would reference the wrong one.
    if loaded is not None and getattr(loaded, "DECLARED_MODEL_TAG", None) != model_tag:
        raise ConfigError(
            f"{module} is already imported in this process without declaring {model_tag}; "
            f"build the Bento in a fresh process (python -m cxr_triage.serving.bento {model_tag})"
        )
    with _model_tag_env(model_tag):
        bento = bentoml.build(
            options["service"],
            name=options.get("name"),
            labels=labels,
            description=options.get("description"),
            include=options.get("include"),
            exclude=options.get("exclude"),
            envs=[BentoEnvSchema(**e) for e in envs],  # bentoml.build wants objects here
            python=python,
            build_ctx=str(build_ctx),
        )
    log.info("built Bento %s for %s", bento.tag, model_tag)
    return str(bento.tag)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cxr_triage.serving.bento [MODEL_TAG]``: build and print the Bento tag."""
    from cxr_triage.inference.registry import resolve_model_tag
    from cxr_triage.logs import configure_logging

    configure_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    print(
        build_bento(args[0] if args else resolve_model_tag())
    )  # the command's output: the Bento tag


if __name__ == "__main__":
    main()
