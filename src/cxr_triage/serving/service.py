"""The BentoML service: HTTP around the :class:`~cxr_triage.inference.predictor.Predictor`.

Two BentoML services, composed with ``bentoml.depends``:

- :class:`CxrTriage` (public, on ``127.0.0.1:3000``): ``/predict`` (one image), ``/predict_batch``
  (several images, a result or an error for each) and ``/model_info``; ``POST /studies``
  (STOW-RS into the DICOM listener's spool, :mod:`~cxr_triage.serving.dicomweb`). It decodes and
  preprocesses uploads (:meth:`Predictor.prepare`), labels them (:meth:`Predictor.predictions`)
  and appends every prediction to the :class:`~cxr_triage.inference.predlog.PredictionLog`
  *before* answering.
- :class:`CxrScorer` (internal, reached over a Unix socket): one batchable API around
  :meth:`Predictor.score`. BentoML's adaptive batching merges the images of concurrent requests,
  from every worker of :class:`CxrTriage`, into one network call.

Around them: :class:`~cxr_triage.serving.guard.RequestGuard` (request ids, API key, rate limit,
upload checks and rewriting, uniform errors), :class:`~cxr_triage.serving.docs.ApiDocs` (the
product's OpenAPI document and a docs page without external assets), the refusals and their
statuses (:mod:`~cxr_triage.serving.refusals`), the settings
(:mod:`~cxr_triage.serving.settings`) and the domain metrics (:mod:`~cxr_triage.serving.metrics`).

Which model: ``CXR_TRIAGE_MODEL_TAG`` when set (a Bento sets it in its envs; the class then
declares it as a ``BentoModel``, so a Bento build references it), else
:func:`~cxr_triage.inference.registry.resolve_package`'s serving rule, resolved when each
service starts, never at import. BentoML takes the worker count and the batching parameters
when the classes are defined, so the settings are read (the environment only) at import.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import BaseModel, Field, StringConstraints

from cxr_triage.errors import InvalidImageError
from cxr_triage.inference.registry import ResolvedPackage, bentoml_home, resolve_package
from cxr_triage.serving.dicomweb import STOW_PATH, stow_app
from cxr_triage.serving.docs import ApiDocs
from cxr_triage.serving.guard import SITE_PATTERN, USAGE, RequestGuard, current_request_id
from cxr_triage.serving.metrics import record_model, record_prediction, record_refusal
from cxr_triage.serving.refusals import ErrorResponse, Refusal, error_body, image_status
from cxr_triage.serving.settings import ServiceSettings
from cxr_triage.serving.startup import check_log_integrity, check_log_location
from cxr_triage.serving.webui import WEBUI_PATH, webui_app
from cxr_triage.vocabulary import NOT_FOR_CLINICAL_USE

__all__ = [
    "DECLARED_MODEL_TAG",
    "BatchItem",
    "BatchResponse",
    "CxrScorer",
    "CxrTriage",
    "ErrorResponse",
    "PredictionResponse",
]

log = logging.getLogger(__name__)

# Read when the classes are defined: BentoML fixes workers and batching then.
_DEFINITION = ServiceSettings.from_env()
# The model the classes declare (None: resolved when each service starts).
DECLARED_MODEL_TAG = _DEFINITION.model_tag


# -- response schemas ---------------------------------------------------------------------------


class QcCheckResponse(BaseModel):
    """One check of the input quality gate."""

    name: str = Field(
        description="view, min_size, pediatric, burned_in_annotation, inverted, "
        "rotated or out_of_distribution"
    )
    passed: bool
    action: str = Field(description="what a failure does: refuse or warn (params qc.actions)")
    value: float | str | None = Field(description="what was measured (None: unknown)")
    limit: float | str | None = Field(description="what it was compared with")
    message: str


class QcResponse(BaseModel):
    """The input quality gate's verdict (an image it refuses gets 422 qc_failed instead)."""

    status: str = Field(description="pass, or warn: a check that only warns failed")
    failed: list[str] = Field(description="the checks that failed")
    checks: list[QcCheckResponse]


class PredictionResponse(BaseModel):
    """One image's prediction."""

    request_id: str = Field(description="id of this prediction, also in the prediction log")
    prob_abnormal: float = Field(ge=0, le=1, description="calibrated probability of abnormal")
    label: str = Field(description="'abnormal' when prob_abnormal >= threshold, else 'normal'")
    threshold: float = Field(description="the operating threshold of this model")
    model_tag: str = Field(description="the model that answered (BentoML model tag)")
    qc: QcResponse | None = Field(default=None, description="the input quality gate's verdict")
    disclaimer: str = Field(description="not for clinical use")


class ExplainResponse(BaseModel):
    """An image's probability and the map of what drove it."""

    request_id: str
    prob_abnormal: float = Field(ge=0, le=1, description="the probability /predict gives")
    label: str
    threshold: float
    model_tag: str
    qc: QcResponse | None = None
    method: str = Field(description="gradcam or occlusion (the package's rule)")
    reason: str = Field(description="why this method for this model")
    scale: float | None = Field(
        description="occlusion: the largest probability drop when a patch is hidden (what 1 on "
        "the map means); Grad-CAM: null (maps are normalised to [0, 1])"
    )
    rows: int = Field(description="the input image's height in pixels")
    cols: int = Field(description="the input image's width in pixels")
    saliency: list[list[float]] = Field(
        description="the map on the model's square input (image_size x image_size, [0, 1]); "
        "to the image: resize to a square of side max(rows, cols), crop the centred padding"
    )
    heatmap_png: str = Field(
        description="the map at the image's size (longest side at most 1024) as an RGBA PNG "
        "data URL, transparent where it is 0 (to lay over the image)"
    )
    overlay_png: str = Field(description="the map over the image as a PNG data URL")
    image_png: str = Field(description="the image alone, the same size, as a PNG data URL")
    disclaimer: str


class SimilarCaseResponse(BaseModel):
    """A labelled reference case (the package's train/val images; pseudonymous id only)."""

    rank: int
    image_id: str = Field(description="the keyed digest ingest gave the image (no identifier)")
    split: str
    label: str
    findings: list[str]
    similarity: float = Field(description="cosine of standardised embeddings")
    distance: float = Field(description="1 - similarity")
    thumbnail: str | None = Field(
        description="a small PNG data URL; null when thumbnails are off or the image is "
        "flagged with burned-in annotation"
    )


class SimilarResponse(BaseModel):
    """An image's nearest labelled reference cases in the model's embedding space."""

    request_id: str
    prob_abnormal: float = Field(ge=0, le=1)
    label: str
    model_tag: str
    qc: QcResponse | None = None
    metric: str
    n_reference: int
    cases: list[SimilarCaseResponse]
    disclaimer: str


class BatchItem(BaseModel):
    """One image of a batch: a prediction or the error it alone would have got."""

    index: int = Field(description="position of the file in the request")
    status: int = Field(description="200, or the 4xx this image would get from /predict")
    prediction: PredictionResponse | None = None
    error: ErrorResponse | None = None


class FeedbackResponse(BaseModel):
    """What /feedback stored, and how many reads match a logged prediction."""

    request_id: str
    n_received: int = Field(description="reads in the request")
    n_stored: int = Field(description="reads stored (new, or replacing an earlier read)")
    n_matched: int = Field(description="reads whose prediction is in the log")
    unmatched: list[str] = Field(description="the first reads that match no prediction (yet)")


class BatchResponse(BaseModel):
    """Per-image results of /predict_batch, in request order."""

    request_id: str
    n_ok: int
    n_failed: int
    results: list[BatchItem]
    disclaimer: str


# The pattern sits on the str member: on the union pydantic raises TypeError for None (a 500).
Site = Annotated[
    Annotated[str, StringConstraints(pattern=SITE_PATTERN)] | None,
    Field(
        description="the site (hospital) the image comes from, optional: 1-64 letters, "
        "digits, '.', '_' or '-', starting with a letter or digit"
    ),
]


class _Unavailable(Exception):
    """The request cannot be answered now (a 503 refusal)."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message


def _error_response(
    status: int, message: str, reason: str, request_id: str, checks: Any = None
) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        error_body(status, message, reason, request_id, checks), status_code=status
    )


def _image_error_body(error: InvalidImageError, request_id: str) -> dict[str, Any]:
    """The body of an image refusal; a quality-gate refusal names its checks."""
    return error_body(
        image_status(error), str(error), error.reason, request_id, getattr(error, "checks", None)
    )


def _served_package(service: Any) -> ResolvedPackage:
    """The declared model (a Bento, or CXR_TRIAGE_MODEL_TAG), else the serving rule's."""
    model = getattr(service, "model", None)
    if model is not None:
        if not hasattr(model, "path"):  # read from the class: the reference, not the model
            model = model.resolve()
        return ResolvedPackage(Path(model.path), str(model.tag), "environment")
    return resolve_package()


def _check_state(package_path: Path) -> Path:
    """The prediction log's path, checked: outside every artifact, and sound if it exists.

    Raises:
        ConfigError: inside the BentoML store, the Bento being served or the model package;
            or corrupt.
    """
    from cxr_triage.state import state_layout

    log_path = state_layout().prediction_log
    bento = getattr(CxrTriage, "bento", None)
    check_log_location(
        log_path,
        {
            "the BentoML store": bentoml_home(),
            "the Bento being served": Path(bento.path) if bento is not None else None,
            "the model package": package_path,
        },
    )
    check_log_integrity(log_path)
    return log_path


def model_fingerprint(tag: str) -> float:
    """A number naming a model tag (52 bits of its SHA-256: exact in a float64)."""
    return float(int(hashlib.sha256(tag.encode()).hexdigest()[:13], 16))


# -- services -----------------------------------------------------------------------------------


@bentoml.service(
    name="cxr-scorer",
    workers=1,  # one process, so concurrent requests from every front worker meet in one batch
    threads=1,
    resources={"cpu": "2"},
    traffic={"timeout": _DEFINITION.request_timeout_s, "max_concurrency": 256},
    # BentoML 1.4.31+ recycles the callers' connection session after 100 requests (or 300 s) by
    # closing it under requests still in flight: "Server disconnected", a 500 (bentoml/BentoML
    # #5540). Over a local Unix socket there is nothing to rebalance, so never recycle.
    runner_connection={"max_requests": 2**62, "max_age": 10.0**12},
)
class CxrScorer:
    """The network step, batched across requests (internal; not exposed on the public port)."""

    if DECLARED_MODEL_TAG:
        model = bentoml.models.BentoModel(DECLARED_MODEL_TAG)

    def __init__(self) -> None:
        from cxr_triage.inference.predictor import Predictor

        package = _served_package(self)
        self.predictor = Predictor(
            package.path,
            num_threads=ServiceSettings.from_env().score_threads,
            model_tag=package.tag,
        )
        self.fingerprint = model_fingerprint(package.tag)
        log.info("scorer serving %s (chosen by %s)", package.tag, package.chosen_by)

    @bentoml.api(
        batchable=True,
        max_batch_size=_DEFINITION.max_batch_size,
        max_latency_ms=_DEFINITION.max_latency_ms,
    )
    def score(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image ``[prob_abnormal, raw, *summary, model fingerprint]`` for prepared uint8
        images ``(S, S)``; the fingerprint lets the caller check it labels the same model."""
        scores = self.predictor.score(np.stack(images))
        tag = np.full(len(images), self.fingerprint)
        return list(np.column_stack([scores.prob_abnormal, scores.raw, scores.summary, tag]))


@bentoml.service(
    name="cxr-triage",
    workers=_DEFINITION.workers,
    resources={"cpu": "2"},
    # No max_concurrency: BentoML would answer an untyped 429 outside the request guard; the
    # guard sheds load itself (CXR_TRIAGE_MAX_IN_FLIGHT, a typed 503).
    traffic={"timeout": _DEFINITION.request_timeout_s},
    http={"host": "127.0.0.1"},
    labels={"task": "cxr-normal-vs-abnormal", "intended_use": "research, not for clinical use"},
)
class CxrTriage:
    """Chest X-ray Normal/Abnormal triage (research use only, not for clinical use)."""

    if DECLARED_MODEL_TAG:
        model = bentoml.models.BentoModel(DECLARED_MODEL_TAG)
    scorer = bentoml.depends(CxrScorer)

    def __init__(self) -> None:
        from cxr_triage.inference.predictor import Predictor

        self.settings = ServiceSettings.from_env()
        package = _served_package(self)
        # The network runs in CxrScorer; this copy only decodes, labels and describes.
        self.predictor = Predictor(package.path, num_threads=1, model_tag=package.tag)
        self.fingerprint = model_fingerprint(package.tag)
        self.log_path = _check_state(package.path)
        self._pseudonymiser = _study_pseudonymiser()
        self._log: Any = None
        self._limiter: Any = None
        self._explain: Any = None
        try:
            self._open_log()  # created empty on the first start
        except Exception as exc:  # noqa: BLE001 - whatever the cause: 503s, not a crash
            log.error("prediction log %s not writable (requests get 503): %s", self.log_path, exc)
        record_model(package.tag)
        log.info(
            "serving %s (chosen by %s); prediction log %s",
            package.tag,
            package.chosen_by,
            self.log_path,
        )

    @bentoml.on_deployment
    def _check_state_before_workers() -> None:
        """In `bentoml serve`'s own process, before any worker starts: a prediction log inside
        the store or the Bento, or a corrupt one, stops the server with the reason (a worker
        failing the same check would only be restarted, again and again)."""
        _check_state(_served_package(CxrTriage.inner).path)

    # -- helpers ---------------------------------------------------------------------------

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (decode, SQLite) in this worker's small thread pool."""
        import anyio

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.threads)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    async def _prepare(self, path: Path, site: str | None) -> Any:
        """The prepared image, or the typed refusal of this one file (never an exception)."""
        try:
            return await self._run(
                functools.partial(
                    self.predictor.prepare,
                    path,
                    {"site": site},
                    pseudonymiser=self._pseudonymiser,
                    enforce_qc=True,
                )
            )
        except InvalidImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one file's failure is that file's refusal
            log.exception(
                "unforeseen failure reading an upload (request %s)", current_request_id()
            )
            return InvalidImageError(
                f"the file could not be read ({type(exc).__name__}); if it opens elsewhere, "
                f"report request {current_request_id()}",
                reason="invalid_image",
            )

    async def _score(self, prepared: Sequence[Any]) -> Any:
        """Scores from the scorer, or :class:`_Unavailable` (overload, restart, other model)."""
        import anyio

        from cxr_triage.inference.predictor import Scores

        size = _DEFINITION.max_batch_size
        vectors: list[np.ndarray] = []
        try:
            with anyio.fail_after(self.settings.score_timeout_s):
                for start in range(0, len(prepared), size):
                    chunk = [p.pixels for p in prepared[start : start + size]]
                    vectors.extend(await self.scorer.to_async.score(chunk))
        except TimeoutError as exc:
            raise _Unavailable(
                Refusal.OVERLOADED,
                f"the scorer did not answer within {self.settings.score_timeout_s:g} s: the "
                f"service is overloaded; retry after {self.settings.retry_after_s} s",
            ) from exc
        except Exception as exc:  # noqa: BLE001 - whatever the scorer's failure, a typed 503
            code = getattr(getattr(exc, "error_code", None), "value", None)
            if code in (429, 503):
                raise _Unavailable(
                    Refusal.OVERLOADED,
                    "the scorer is at capacity (its batcher refused the request); retry after "
                    f"{self.settings.retry_after_s} s",
                ) from exc
            log.warning("scorer call failed: %s: %s", type(exc).__name__, exc)
            raise _Unavailable(
                Refusal.SCORER_UNAVAILABLE,
                "the scoring process is restarting or unreachable; retry after "
                f"{self.settings.retry_after_s} s",
            ) from exc
        out = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
        if not np.all(out[:, -1] == self.fingerprint):
            log.error(
                "the scorer serves another model than %s (restarted after a promotion?): "
                "restart the service",
                self.predictor.model_tag,
            )
            raise _Unavailable(
                Refusal.MODEL_MISMATCH,
                "the scoring process serves another model than this worker; operators must "
                "restart the service",
            )
        out = out[:, :-1]
        return Scores(prob_abnormal=out[:, 0], raw=out[:, 1], summary=out[:, 2:])

    def _open_log(self) -> Any:
        from cxr_triage.inference.predlog import PredictionLog

        if self._log is None:
            self._log = PredictionLog(self.log_path)
        return self._log

    def _append(self, rows: list[dict[str, Any]]) -> None:
        self._open_log().append(rows)

    async def _record(
        self, predictions: Sequence[Any], ids: Sequence[str], study_keys: Sequence[str | None]
    ) -> None:
        """Append predictions to the log, or raise :class:`_Unavailable` (nothing unlogged)."""
        rows = [
            {
                **p.features,
                "request_id": rid,
                "model_tag": p.model_tag,
                "threshold": p.threshold,
                # The study's keyed digest (never the UID), to match reads fed back by study.
                **({"study_key": key} if key else {}),
            }
            for p, rid, key in zip(predictions, ids, study_keys, strict=True)
        ]
        try:
            await self._run(self._append, rows)
        except Exception as exc:  # noqa: BLE001 - sqlite3, OSError, CxrError: all a 503
            self._log = None  # reopen on the next request (the disk may come back)
            log.error("prediction log %s not writable: %s", self.log_path, exc)
            raise _Unavailable(
                Refusal.PREDICTION_LOG_UNAVAILABLE,
                f"the prediction could not be recorded in the prediction log ({exc}); "
                "no unlogged prediction is returned: retry later, and operators should check "
                f"that {self.log_path} is writable (the state folder, CXR_TRIAGE_STATE_DIR)",
            ) from exc
        for prediction in predictions:
            record_prediction(prediction.model_tag, prediction.label, prediction.prob_abnormal)

    async def _predict(self, prepared: Sequence[Any], ids: Sequence[str]) -> list[Any]:
        """Score, label and log prepared images; :class:`_Unavailable` on a 503."""
        scores = await self._score(prepared)
        predictions = await self._run(self.predictor.predictions, list(prepared), scores)
        await self._record(predictions, ids, [p.metadata.get("study_key") for p in prepared])
        return predictions

    def _response(self, prediction: Any, request_id: str) -> PredictionResponse:
        return PredictionResponse(request_id=request_id, **prediction.to_dict())

    # -- APIs ------------------------------------------------------------------------------

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, site: Site = None) -> PredictionResponse:
        """Classify one chest radiograph (DICOM CR/DX, PNG or JPEG) as normal or abnormal.

        Send multipart/form-data: the file in field ``image``, optionally ``site``.
        """
        request_id = current_request_id()
        prepared = await self._prepare(image, site)
        if isinstance(prepared, InvalidImageError):
            return _error_response(
                image_status(prepared),
                str(prepared),
                prepared.reason,
                request_id,
                getattr(prepared, "checks", None),
            )
        try:
            (prediction,) = await self._predict([prepared], [request_id])
        except _Unavailable as exc:
            return _error_response(exc.refusal.status, exc.message, exc.refusal.reason, request_id)
        return self._response(prediction, request_id)

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, images: list[Path], site: Site = None) -> BatchResponse:
        """Classify several radiographs; each gets a prediction or its own error.

        Send multipart/form-data with one field ``images`` per file, optionally ``site``.
        """
        request_id = current_request_id()
        if not images:
            return _error_response(
                400, f"no images in the request; {USAGE}", Refusal.BAD_REQUEST.reason, request_id
            )
        items: list[BatchItem | None] = [None] * len(images)
        good: list[tuple[int, Any]] = []
        for index, path in enumerate(images):
            prepared = await self._prepare(path, site)
            if isinstance(prepared, InvalidImageError):
                status = image_status(prepared)
                record_refusal(prepared.reason, status)
                error = ErrorResponse(**_image_error_body(prepared, f"{request_id}-{index}"))
                items[index] = BatchItem(index=index, status=status, error=error)
            else:
                good.append((index, prepared))
        if good:
            ids = [f"{request_id}-{index}" for index, _ in good]
            try:
                predictions = await self._predict([p for _, p in good], ids)
            except _Unavailable as exc:
                return _error_response(
                    exc.refusal.status, exc.message, exc.refusal.reason, request_id
                )
            for (index, _), prediction, rid in zip(good, predictions, ids, strict=True):
                items[index] = BatchItem(
                    index=index, status=200, prediction=self._response(prediction, rid)
                )
        results = [item for item in items if item is not None]
        return BatchResponse(
            request_id=request_id,
            n_ok=len(good),
            n_failed=len(results) - len(good),
            results=results,
            disclaimer=NOT_FOR_CLINICAL_USE,
        )

    def _explainer(self) -> Any:
        from cxr_triage.inference.explain import Explainer

        if self._explain is None:
            self._explain = Explainer(self.predictor)
        return self._explain

    def _explain_file(self, path: Path, site: str | None) -> ExplainResponse:
        import base64

        from cxr_triage.inference.explain import explain_source

        result = explain_source(self._explainer(), path, {"site": site})
        p, e = result.prediction, result.explanation

        def url(png: bytes) -> str:
            return "data:image/png;base64," + base64.b64encode(png).decode()

        return ExplainResponse(
            request_id=current_request_id(),
            prob_abnormal=p.prob_abnormal,
            label=p.label,
            threshold=p.threshold,
            model_tag=p.model_tag,
            qc=p.qc.to_dict() if p.qc is not None else None,
            method=e.method,
            reason=self._explainer().reason,
            scale=e.scale,
            rows=e.rows,
            cols=e.cols,
            saliency=np.round(e.saliency.astype(np.float64), 4).tolist(),
            heatmap_png=url(result.heatmap_png(max_side=1024)),
            overlay_png=url(result.overlay_png(max_side=1024)),
            image_png=url(result.image_png(max_side=1024)),
            disclaimer=NOT_FOR_CLINICAL_USE,
        )

    async def _image_call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func`` in the worker's threads; an image refusal is its typed error response."""
        request_id = current_request_id()
        try:
            return await self._run(func, *args)
        except InvalidImageError as exc:
            from starlette.responses import JSONResponse

            return JSONResponse(_image_error_body(exc, request_id), status_code=image_status(exc))

    @bentoml.api(route="/explain")
    async def explain(self, image: Path, site: Site = None) -> ExplainResponse:
        """Explain one radiograph's probability: where in the image the model looked.

        Grad-CAM for a fine-tuned network or a linear head on frozen features, else occlusion
        sensitivity through the whole package (its ``explain`` settings). The probability is
        /predict's; this call is not logged as a prediction (/predict is the prediction of
        record). Send multipart/form-data: the file in ``image``, optionally ``site``.
        """
        return await self._image_call(self._explain_file, image, site)

    def _similar_file(self, path: Path, site: str | None, k: int | None) -> SimilarResponse:
        from cxr_triage.inference.similar import similar_to_source

        result = similar_to_source(self.predictor, path, {"site": site}, k=k)
        return SimilarResponse(request_id=current_request_id(), **result.to_dict())

    @bentoml.api(route="/similar")
    async def similar(
        self,
        image: Path,
        site: Site = None,
        k: Annotated[int | None, Field(ge=1, le=100, description="how many (default 5)")] = None,
    ) -> SimilarResponse:
        """The ``k`` labelled reference cases (the model's train and val images, pseudonymous
        ids, label, findings, distance, thumbnail) nearest to one radiograph in the model's
        embedding space (cosine of standardised embeddings). Not logged as a prediction.
        """
        return await self._image_call(self._similar_file, image, site, k)

    @bentoml.api(route="/model_info")
    async def model_info(self) -> dict[str, Any]:
        """The model: tag, candidate, threshold and operating point, metrics, versions."""
        return self.predictor.info_summary()

    @bentoml.api(route="/feedback")
    async def feedback(self, reads: list[dict[str, Any]]) -> FeedbackResponse:
        """Store radiologists' final reads of earlier predictions (ground truth for monitoring).

        Send JSON ``{"reads": [{"request_id": ..., "label": "abnormal", "findings":
        "Effusion|Mass", "read_at": "2026-11-30T10:00:00Z"}, ...]}``; a read names its prediction
        by ``request_id`` (as this service answered it) or by ``study_uid`` (a DICOM study; the
        UID is kept only as a keyed digest). A later read of the same prediction replaces the
        earlier one. ``cxr-triage monitor`` then reports realised sensitivity and specificity.
        """
        from cxr_triage.errors import CxrError
        from cxr_triage.inference.feedback import parse_reads, record_feedback

        request_id = current_request_id()
        try:
            parsed = parse_reads(reads, where="read", first=0)
        except CxrError as exc:  # DataError, or ConfigError: study UIDs but no salt here
            return _error_response(400, str(exc), Refusal.BAD_REQUEST.reason, request_id)
        try:
            receipt = await self._run(
                functools.partial(record_feedback, parsed, log_path=self.log_path)
            )
        except Exception as exc:  # noqa: BLE001 - a log that cannot be written: a typed 503
            log.error("feedback not stored in %s: %s", self.log_path, exc)
            refusal = Refusal.PREDICTION_LOG_UNAVAILABLE
            return _error_response(
                refusal.status,
                f"the reads could not be stored beside the prediction log ({exc}); retry later",
                refusal.reason,
                request_id,
            )
        return FeedbackResponse(request_id=request_id, **dataclasses.asdict(receipt))


def _study_pseudonymiser() -> Any:
    """The keyed hash for study UIDs (``CXR_TRIAGE_SALT``), or None: then reads can be fed back
    by request id only."""
    from cxr_triage.data.deid import Pseudonymiser, salt_from_env
    from cxr_triage.errors import ConfigError

    try:
        return Pseudonymiser(salt_from_env(synthetic=False))
    except ConfigError:
        log.info("CXR_TRIAGE_SALT is not set: reads can be fed back by request id only")
        return None


def _describe() -> tuple[dict[str, Any], str | None]:
    """BentoML's OpenAPI document of :class:`CxrTriage`, and the model this worker serves."""
    instance = bentoml.get_current_service()
    predictor = getattr(instance, "predictor", None)
    return CxrTriage.openapi_spec.asdict(), getattr(predictor, "model_tag", DECLARED_MODEL_TAG)


# STOW-RS into the DICOM listener's spool (PS3.18 answers; 503 without CXR_TRIAGE_SALT).
CxrTriage.mount_asgi_app(stow_app(), path=STOW_PATH)
CxrTriage.mount_asgi_app(webui_app(), path=WEBUI_PATH)
# The guard first: it wraps the docs too (the API key guards them).
CxrTriage.add_asgi_middleware(RequestGuard, on_refusal=record_refusal)
CxrTriage.add_asgi_middleware(ApiDocs, describe=_describe)
