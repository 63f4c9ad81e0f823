"""STOW-RS on the service: ``POST /studies`` (and ``/studies/{study}``) into the DICOM spool.

A PACS that pushes over DICOMweb reaches the same path as one that pushes over DIMSE: the
instances go into the DICOM listener's spool (:func:`cxr_triage.pacs.stow.store_instances`,
durably, before the answer), and the listener's worker (``cxr-triage listen``, on the same
state folder) triages them and sends their SRs. Answers follow PS3.18 10.5: 200, 202 with a
FailedSOPSequence, 409 as ``application/dicom+json`` (the request guard passes them
unchanged); 400, 415 and 503 in the service's uniform error shape.

The spool needs the pseudonymisation key (``CXR_TRIAGE_SALT``) and the listener's settings
(``CXR_TRIAGE_PACS_*``: which SOP classes are accepted, where the spool is); without the key,
``/studies`` answers 503 ``spool_unavailable`` and the rest of the service works as before.

This module is the one place where ``serving`` uses the hospital integration package
(``pacs``), which the layers contract otherwise keeps independent (an ``ignore_imports`` entry
in ``pyproject.toml``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from cxr_triage.errors import CxrError
from cxr_triage.serving.guard import current_request_id
from cxr_triage.serving.refusals import Refusal, error_body

__all__ = ["STOW_PATH", "stow_app"]

log = logging.getLogger(__name__)

STOW_PATH = "/studies"
_REQUEST_REFUSALS = {400: Refusal.BAD_REQUEST, 415: Refusal.UNSUPPORTED_MEDIA_TYPE}


@functools.cache
def _spool_and_settings() -> tuple[Any, Any]:
    """The listener's settings and its spool, opened once per worker process.

    Raises:
        ConfigError: no pseudonymisation key, bad settings, or a spool that cannot be created.
    """
    from cxr_triage.pacs.listener import open_spool
    from cxr_triage.pacs.settings import PacsSettings

    settings = PacsSettings.from_env()
    return open_spool(settings), settings


def stow_app() -> Any:
    """The Starlette app to mount at :data:`STOW_PATH`."""
    import anyio
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from cxr_triage.pacs.stow import MEDIA_TYPE, store_instances

    async def store(request: Any) -> Any:
        request_id = current_request_id()
        try:
            spool, settings = _spool_and_settings()
        except CxrError as exc:
            _spool_and_settings.cache_clear()  # the operator may fix it without a restart
            refusal = Refusal.SPOOL_UNAVAILABLE
            message = f"STOW-RS is not available here: {exc}"
            return JSONResponse(
                error_body(refusal.status, message, refusal.reason, request_id),
                status_code=refusal.status,
            )
        answer = await anyio.to_thread.run_sync(
            functools.partial(
                store_instances,
                request.headers.get("content-type", ""),
                await request.body(),
                spool,
                settings,
                study_instance_uid=request.path_params.get("study"),
            )
        )
        if answer.error is not None:
            refusal = _REQUEST_REFUSALS[answer.status]
            return JSONResponse(
                error_body(answer.status, answer.error, refusal.reason, request_id),
                status_code=answer.status,
            )
        log.info(
            "STOW-RS request %s: %d stored, %d failed", request_id, answer.stored, answer.failed
        )
        return JSONResponse(answer.body, status_code=answer.status, media_type=MEDIA_TYPE)

    return Starlette(
        routes=[
            Route("/", store, methods=["POST"]),
            Route("/{study}", store, methods=["POST"]),
        ]
    )
