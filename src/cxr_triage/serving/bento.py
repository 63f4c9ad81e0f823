"""Build the service's Bento from ``bentofile.yaml``, offline.

The Bento is built with the build context ``src/`` (the package lives there), pins the model it
was built for (``CXR_TRIAGE_MODEL_TAG`` in the Bento's envs, so serving the Bento serves that
model whatever is promoted later), and lists exact requirement pins. Offline builds need ``uv``
installed and no lock step (``python.lock_packages: false``); see STACK.md §3. Before building,
every requirement is pinned to the version installed here, so the Bento runs what was tested.

Run ``python -m cxr_triage.serving.bento [MODEL_TAG]`` (default: the tag the service would load),
or let the ``package`` stage do it (``package.build_bento``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from cxr_triage.errors import ConfigError
from cxr_triage.inference.registry import MODEL_TAG_ENV

__all__ = ["BENTOFILE", "BUILD_CONTEXT", "build_bento", "pin_installed", "main"]

log = logging.getLogger(__name__)

BENTOFILE = Path("bentofile.yaml")
BUILD_CONTEXT = Path("src")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def pin_installed(requirements: Sequence[str]) -> list[str]:
    """Pin every requirement to the version installed here, so the Bento runs what was tested.

    ``bentofile.yaml`` lists names (``numpy``) or exact pins (``torch==2.13.0``); a name gets
    the installed version, a pin must equal it.

    Raises:
        ConfigError: naming every requirement that is not installed, not a plain name or exact
            pin, or pinned to another version than the installed one.
    """
    pinned_list, problems = [], []
    for requirement in requirements:
        name, sep, pinned = (part.strip() for part in requirement.partition("=="))
        if any(c in name + pinned for c in "<>=!~,;[ "):
            problems.append(f"{requirement!r} is neither a name nor an exact pin (name==version)")
            continue
        try:
            installed = importlib.metadata.version(_canonical(name))
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement!r}: {name} is not installed here")
            continue
        # Local build tags (torch 2.13.0+cpu) come from the index, not the version.
        installed = installed.split("+")[0]
        if sep and installed != pinned:
            problems.append(f"{requirement!r}: {installed} is installed")
            continue
        pinned_list.append(f"{name}=={installed}")
    if problems:
        raise ConfigError(
            "bentofile.yaml python.packages must name installed packages: "
            + "; ".join(problems)
            + "; fix the list (or the environment) and build again"
        )
    return pinned_list


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
) -> str:
    """Build the Bento serving ``model_tag`` (which must be in the model store); return its tag.

    Raises:
        ConfigError: bentofile.yaml is missing or its pins differ from the installed versions.
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
    python["packages"] = pin_installed(python.get("packages", []))
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
