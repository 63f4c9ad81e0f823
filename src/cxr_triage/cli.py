"""The ``cxr-triage`` command line: thin wrappers over the library, one subcommand each."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from cxr_triage.errors import CxrError
from cxr_triage.logs import configure_logging

app = typer.Typer(
    help="Chest X-ray Normal/Abnormal triage: data, pipeline stages, inspection. "
    "Not for clinical use.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("cxr_triage.cli")
F = TypeVar("F", bound=Callable[..., object])


def _user_errors(fn: F) -> F:
    """Print a CxrError as one line on stderr and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        # A command prints its one result line itself; the library's INFO logs would repeat
        # it (CXR_TRIAGE_LOG_LEVEL=INFO brings them back).
        configure_logging(os.environ.get("CXR_TRIAGE_LOG_LEVEL", "WARNING"))
        try:
            return fn(*args, **kwargs)
        except CxrError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (replaced atomically).")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 200,
    site: Annotated[
        str,
        typer.Option(
            help="Site preset (hospital_a/b/c, new_hospital) or any "
            "name (a profile is derived from it)."
        ),
    ] = "hospital_a",
    seed: Annotated[
        int, typer.Option(help="Random seed; same arguments give identical files.")
    ] = 0,
    workers: Annotated[int, typer.Option(help="Processes; 0 = all cores.")] = 0,
) -> None:
    """Generate synthetic chest radiographs (DICOM) and a ChestX-ray14-style labels.csv."""
    from cxr_triage.data.synth import generate_dataset

    table = generate_dataset(
        out, n=n, site=site, seed=seed, workers=workers or os.cpu_count() or 1
    )
    typer.echo(
        f"wrote {len(table)} images of site {site} to {out} "
        f"({int((table['Finding Labels'] != 'No Finding').sum())} abnormal)"
    )


@app.command()
@_user_errors
def ingest(
    source_dir: Annotated[Path, typer.Argument(help="Folder to ingest.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (replaced atomically).")],
    source: Annotated[
        str, typer.Option(help="synthetic | chestxray14 | folder | dicom")
    ] = "folder",
    labels: Annotated[
        str | None,
        typer.Option(help="Labels CSV relative to SOURCE_DIR (optional for folder/dicom)."),
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site name for images that carry none.")] = None,
    image_size: Annotated[int, typer.Option(help="Side of the square training image.")] = 128,
    workers: Annotated[int, typer.Option(help="Processes; 0 = all cores.")] = 0,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images.")] = 40_000_000,
) -> None:
    """Ingest any folder into a manifest + pixels + rejects table, without editing params.yaml.

    Real patient identifiers are pseudonymised with the secret in $CXR_TRIAGE_SALT.
    """
    from cxr_triage.data.ingest import ingest_source
    from cxr_triage.io.records import ImageLimits

    summary = ingest_source(
        source,
        source_dir,
        out,
        labels_csv=labels,
        site=site,
        image_size=image_size,
        limits=ImageLimits(max_pixels=max_pixels),
        workers=workers,
    )
    reasons = summary.counts["rejected_by_reason"]
    typer.echo(
        f"ingested {summary.n_ingested} of {summary.n_candidates} files into {out}; "
        f"rejected {summary.n_rejected}"
        + (f" ({reasons}); see {out}/rejects.csv" if reasons else "")
    )


@app.command()
@_user_errors
def inspect(
    files: Annotated[list[Path], typer.Argument(help="Image files (DICOM, PNG, JPEG).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Say, per file, whether it is usable and why not, with key metadata (never PHI).

    Exits 2 when any file is unusable.
    """
    from cxr_triage.io.images import inspect_image

    reports = [inspect_image(f) for f in files]
    for r in reports:
        if as_json:
            typer.echo(json.dumps(r))
            continue
        status = "usable" if r["usable"] else f"REFUSED ({r['reason']}): {r['message']}"
        typer.echo(f"{r['file']}: {status}")
        if "format" in r:
            typer.echo(
                f"  format={r['format']} modality={r['modality'] or '-'} "
                f"view={r['view_position'] or '-'} "
                f"photometric={r['photometric'] or '-'} bits={r['bits_stored']} "
                f"size={r['cols']}x{r['rows']} frames={r['frames']} "
                f"transfer_syntax={r['transfer_syntax'] or '-'}"
            )
    if not all(r["usable"] for r in reports):
        raise typer.Exit(2)


def _load_predictor(package: Path | None, model_tag: str | None):  # noqa: ANN202
    """The Predictor for ``--package`` or ``--model-tag``; default: the serving package."""
    from cxr_triage.inference.predictor import Predictor
    from cxr_triage.inference.registry import resolve_package

    resolved = resolve_package(package, model_tag)
    return Predictor(resolved.path, model_tag=resolved.tag)


@app.command()
@_user_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (recursed).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write results to a .csv or .parquet file.")
    ] = None,
    package: Annotated[
        Path | None,
        typer.Option(
            help="A model package folder (e.g. models/package). Default: the serving "
            "model in the BentoML store."
        ),
    ] = None,
    model_tag: Annotated[
        str | None, typer.Option(help="A model tag in the BentoML store, e.g. cxr-triage:abc123.")
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site the images come from.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per network call.")] = 32,
    workers: Annotated[int, typer.Option(help="Decoding threads; 0 = all cores.")] = 0,
    features: Annotated[
        bool, typer.Option("--features", help="Add the monitoring features to the results.")
    ] = False,
) -> None:
    """Score files with the packaged model: probability of abnormal and label at its threshold.

    Unreadable files, and files the input quality gate refuses (lateral, inverted, rotated, a
    child, too small: status ``refused``, reason ``qc_failed``), are result rows with their
    reason (the run goes on); exits 2 if any. Not for clinical use.
    """
    from cxr_triage.inference.batch import collect_files, score_files, write_results

    predictor = _load_predictor(package, model_tag)
    files, non_images = collect_files(paths)
    if not files:
        raise CxrError(
            f"no image files found in {', '.join(map(str, paths))}"
            + (f" ({len(non_images)} non-image files)" if non_images else "")
        )
    results = score_files(
        predictor,
        files,
        site=site,
        batch_size=batch_size,
        workers=workers or None,
        features=features,
        enforce_qc=True,
    )
    bad = results[results["status"] != "ok"]
    unreadable = bad[bad["status"] == "unreadable"]
    refused = bad[bad["status"] == "refused"]
    if out is not None:
        write_results(results, out)
    else:
        typer.echo(
            results[["path", "status", "prob_abnormal", "label", "qc", "reason"]].to_csv(
                index=False
            ),
            nl=False,
        )
    reasons = unreadable["reason"].value_counts().to_dict()
    checks = refused["qc_failed"].value_counts().to_dict() if len(refused) else {}
    typer.echo(
        f"scored {len(results) - len(bad)} of {len(results)} files with {predictor.model_tag} "
        f"(threshold {predictor.threshold:.4f})"
        + (f"; unreadable {len(unreadable)}: {reasons}" if len(unreadable) else "")
        + (f"; refused by the quality gate {len(refused)}: {checks}" if len(refused) else "")
        + (
            f"; {len(non_images)} non-image files set aside ("
            + ", ".join(p.name for p in non_images[:3])
            + (", ..." if len(non_images) > 3 else "")
            + ")"
            if non_images
            else ""
        )
        + (f"; results in {out}" if out is not None else ""),
        err=True,
    )
    if len(bad):
        raise typer.Exit(2)


_PACKAGE_OPTION = typer.Option(
    help="A model package folder (e.g. models/package). Default: the serving model in the "
    "BentoML store."
)
_TAG_OPTION = typer.Option(help="A model tag in the BentoML store, e.g. cxr-triage:abc123.")


@app.command()
@_user_errors
def explain(
    file: Annotated[Path, typer.Argument(help="One image: DICOM CR/DX, PNG or JPEG.")],
    out: Annotated[
        Path, typer.Option("--out", help="Write the colour overlay here (.png).")
    ] = Path("overlay.png"),
    saliency: Annotated[
        Path | None,
        typer.Option(help="Also write the map (float32, the image's size) as a .npy file."),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="auto, gradcam or occlusion (default: the package's).")
    ] = None,
    opacity: Annotated[float, typer.Option(help="Overlay opacity where the map is 1.")] = 0.5,
    package: Annotated[Path | None, _PACKAGE_OPTION] = None,
    model_tag: Annotated[str | None, _TAG_OPTION] = None,
) -> None:
    """Where the model looked: the probability of abnormal, and its explanation map drawn over
    the image (Grad-CAM or occlusion, by the package's rule). Not for clinical use."""
    import numpy as np

    from cxr_triage.atomic import atomic_path
    from cxr_triage.inference.explain import Explainer, explain_source

    if out.suffix.lower() != ".png":
        raise CxrError(f"--out {out}: the overlay is a PNG; use a .png file name")
    explainer = Explainer(_load_predictor(package, model_tag), method=method)
    result = explain_source(explainer, file)
    with atomic_path(out) as tmp:
        tmp.write_bytes(result.overlay_png(opacity=opacity))
    if saliency is not None:
        with atomic_path(saliency) as tmp, open(tmp, "wb") as f:
            np.save(f, result.saliency())
    p = result.prediction
    typer.echo(
        f"{file}: prob_abnormal {p.prob_abnormal:.4f}, {p.label} at threshold "
        f"{p.threshold:.4f}, quality gate {p.qc.status if p.qc else 'n/a'}; "
        f"{explainer.method}: {explainer.reason}; overlay in {out}"
        + (f", map in {saliency}" if saliency is not None else "")
        + f" ({p.model_tag}; not for clinical use)"
    )


@app.command()
@_user_errors
def similar(
    file: Annotated[Path, typer.Argument(help="One image: DICOM CR/DX, PNG or JPEG.")],
    k: Annotated[int | None, typer.Option(help="How many (default: the package's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with thumbnails).")] = False,
    package: Annotated[Path | None, _PACKAGE_OPTION] = None,
    model_tag: Annotated[str | None, _TAG_OPTION] = None,
) -> None:
    """The labelled reference cases (the package's train and val images, pseudonymous ids)
    nearest to an image in the model's embedding space. Not for clinical use."""
    from cxr_triage.inference.similar import similar_to_source

    predictor = _load_predictor(package, model_tag)
    result = similar_to_source(predictor, file, k=k)
    if as_json:
        typer.echo(json.dumps(result.to_dict(thumbnails=True), indent=1))
        return
    typer.echo("rank,image_id,label,findings,distance")
    for case in result.cases:
        typer.echo(
            f"{case.rank},{case.image_id},{case.label},{'|'.join(case.findings)},"
            f"{case.distance:.4f}"
        )
    p = result.prediction
    typer.echo(
        f"{len(result.cases)} nearest of {result.n_reference} reference images "
        f"({result.metric}); {file}: prob_abnormal {p.prob_abnormal:.4f}, {p.label} "
        f"({p.model_tag}; not for clinical use)",
        err=True,
    )


@app.command()
@_user_errors
def register(
    package: Annotated[Path, typer.Argument(help="A model package folder (models/package).")],
) -> None:
    """Save a model package into the BentoML model store ($BENTOML_HOME) and print its tag."""
    from cxr_triage.inference.registry import register_package

    typer.echo(register_package(package))


@app.command()
@_user_errors
def promote(
    model_tag: Annotated[str, typer.Argument(help="The model tag to serve, e.g. cxr-triage:abc.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the promotion history).")],
) -> None:
    """Mark a stored model as serving by hand (the retraining flow's gate does it otherwise).

    The service loads the serving model when it starts: restart it to switch.
    """
    from cxr_triage.inference.registry import promote as promote_tag

    record = promote_tag(model_tag, reason=reason, evidence={"by": "cxr-triage promote"})
    before = record["history"][-1]["tag"] if record["history"] else "nothing"
    typer.echo(f"serving {record['tag']} (before: {before})")


EXIT_DRIFT = 3  # `cxr-triage monitor`: drift detected
EXIT_SENSITIVITY = 4  # `cxr-triage monitor`: realised sensitivity below the target
_MAX_LISTED = 20  # unreadable files listed on stderr (all of them are in summary.json)


@app.command()
@_user_errors
def monitor(
    log_path: Annotated[
        Path | None,
        typer.Option("--log", help="Prediction log (SQLite). Default: the state folder's."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Log window start, ISO 8601 (UTC if no offset).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Log window end (exclusive).")] = None,
    last: Annotated[
        int | None, typer.Option(help="Only the most recent N predictions of the window.")
    ] = None,
    hours: Annotated[
        float | None, typer.Option(help="The last H hours of the log (instead of --since).")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Score this image folder (recursed) instead of the log."),
    ] = None,
    package: Annotated[
        Path | None,
        typer.Option(
            help="A model package folder (e.g. models/package). Default: the serving "
            "model in the BentoML store (the monitoring flow's default too)."
        ),
    ] = None,
    model_tag: Annotated[
        str | None, typer.Option(help="A model tag in the BentoML store, e.g. cxr-triage:abc123.")
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(help="Site of the current data: only its rows, against its reference rows."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Monitoring folder. Default: <state folder>/monitor."),
    ] = None,
    params_file: Annotated[Path, typer.Option("--params", help="The params.yaml to read.")] = Path(
        "params.yaml"
    ),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead of one line.")
    ] = False,
) -> None:
    """Check current data for drift against the model package's reference (Evidently).

    Current data: a prediction log window (default: the whole log) or an image folder
    (--images). Unreadable images are counted and listed. A log that does not exist yet
    is an empty window ("insufficient data", exit 0).

    Writes report.html and summary.json under <monitor_dir>/runs/ and adds
    the run to the Evidently workspace <monitor_dir>/workspace, which
    `evidently ui --workspace <monitor_dir>/workspace` shows.

    With a log window, the predictions that have fed-back reads (cxr-triage
    feedback) are graded: realised sensitivity, specificity and calibration at the
    operating point, with 95% CIs.

    Exit codes: 0 no drift or insufficient data, 3 drift detected, 4 realised
    sensitivity below the target (CI lower bound; wins over 3), 1 error.
    """
    from cxr_triage.config import load_params
    from cxr_triage.monitoring import ImageFolder, LogWindow, check_drift

    window = {"since": since, "until": until, "last": last, "hours": hours}
    if images is not None and (
        log_path is not None or any(v is not None for v in window.values())
    ):
        raise CxrError("give --images or --log/--since/--until/--last/--hours, not both")
    source = (
        ImageFolder(images)
        if images is not None
        else LogWindow.from_options(log=log_path, **window)
    )
    summary = check_drift(
        load_params(params_file),
        source,
        package=package,
        model_tag=model_tag,
        site=site,
        out_dir=out,
    )
    unreadable = summary.source.get("unreadable", [])
    for entry in unreadable[:_MAX_LISTED]:
        typer.echo(f"unreadable: {entry['file']}: {entry['reason']}", err=True)
    if len(unreadable) > _MAX_LISTED:
        typer.echo(f"... and {len(unreadable) - _MAX_LISTED} more (see summary.json)", err=True)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        note = f" ({len(unreadable)} unreadable files)" if unreadable else ""
        typer.echo(summary.one_line() + note)
    if summary.performance_alert:
        raise typer.Exit(EXIT_SENSITIVITY)
    if summary.drift:
        raise typer.Exit(EXIT_DRIFT)


@app.command()
@_user_errors
def doctor(
    lock: Annotated[
        Path, typer.Option("--lock", help="The lock file the environment must match.")
    ] = Path("requirements.lock"),
) -> None:
    """Check that scheduled runs will happen, and say what to do when they will not.

    The installed packages match the lock file; a Prefect server answers at PREFECT_API_URL;
    every scheduled deployment has upcoming runs made by the server's scheduler and a live
    worker on its work pool (or its `--serve` process).

    Exit codes: 0 healthy, 1 a problem (each printed with its fix).
    """
    from cxr_triage.orchestration.doctor import run_doctor

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    report = run_doctor(lock)
    typer.echo(report.text())
    if not report.healthy:
        raise typer.Exit(1)


@app.command()
@_user_errors
def feedback(
    reads_csv: Annotated[
        Path,
        typer.Argument(
            help="CSV of final reads: request_id or study_uid, label (normal/abnormal), "
            "optional findings (ChestX-ray14 names, |-separated) and read_at."
        ),
    ],
    log_path: Annotated[
        Path | None,
        typer.Option("--log", help="Prediction log (SQLite). Default: the state folder's."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--label-images",
            help="Also write labels.csv into this folder of DICOM studies exported from the "
            "PACS (by study_uid), making it a batch for data/incoming/ (retraining).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON.")] = False,
) -> None:
    """Store radiologists' final reads beside the prediction log (ground truth).

    Study UIDs are stored as keyed digests ($CXR_TRIAGE_SALT), never as such. A later
    read of the same prediction replaces the earlier one. `cxr-triage monitor` then
    grades the window's predictions that have a read.
    """
    from dataclasses import asdict

    from cxr_triage.inference.feedback import (
        read_feedback_csv,
        record_feedback,
        write_ingestion_labels,
    )

    receipt = record_feedback(read_feedback_csv(reads_csv), log_path=log_path)
    typer.echo(json.dumps(asdict(receipt), indent=2) if as_json else receipt.one_line())
    if images is not None:
        labels, n_labelled, n_without = write_ingestion_labels(reads_csv, images)
        typer.echo(
            f"labelled {n_labelled} DICOM files in {labels} ({n_without} without a read)",
            err=True,
        )


@app.command()
@_user_errors
def backup(
    log_path: Annotated[
        Path | None,
        typer.Option("--log", help="Prediction log (SQLite). Default: the state folder's."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Backup file, or a folder for it. Default: <state folder>/backups/."
        ),
    ] = None,
) -> None:
    """Back up the prediction log and its fed-back reads (SQLite online backup).

    Safe while the service is writing: the copy is consistent, and appears whole or
    not at all.
    """
    from cxr_triage.inference.predlog import backup_log

    path, n_predictions, n_reads = backup_log(log_path, out)
    typer.echo(f"backed up {n_predictions} predictions and {n_reads} reads to {path}")


@app.command()
@_user_errors
def seeds(
    seed_list: Annotated[
        str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 42,1,2,3,4.")
    ] = "42,1,2,3,4",
    name: Annotated[
        str, typer.Option(help="Experiment prefix and report folder (reports/seeds/NAME).")
    ] = "default",
    set_params: Annotated[
        list[str] | None,
        typer.Option("-S", "--set-param", help="key=value for every run (dvc exp run -S)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the dvc commands only.")] = False,
) -> None:
    """Run the whole comparison once per seed (DVC experiments) and report mean ± sd.

    Resumable: seeds already in reports/seeds/NAME/runs.jsonl are skipped.
    """
    from cxr_triage.orchestration.seeds import run_seeds

    summary = run_seeds(
        Path.cwd(),
        [int(s) for s in seed_list.split(",") if s.strip()],
        name=name,
        set_params=set_params or [],
        dry_run=dry_run,
    )
    if not dry_run:
        typer.echo(json.dumps(summary, indent=2))


def _pacs_settings(settings_file: Path | None):  # noqa: ANN202
    """The listener's settings: the environment, with ``--settings`` as the file."""
    from cxr_triage.pacs.settings import SETTINGS_ENV, PacsSettings

    if settings_file is None:
        return PacsSettings.from_env()
    return PacsSettings.from_env({**os.environ, SETTINGS_ENV: str(settings_file)})


SettingsOption = Annotated[
    Path | None,
    typer.Option(
        "--settings",
        help="Listener settings file (YAML/JSON); default $CXR_TRIAGE_PACS_SETTINGS. "
        "CXR_TRIAGE_PACS_* variables override it.",
    ),
]
PackageOption = Annotated[
    Path | None, typer.Option(help="A model package folder. Default: the serving model.")
]
ModelTagOption = Annotated[str | None, typer.Option(help="A model tag in the BentoML store.")]


@app.command()
@_user_errors
def listen(
    settings_file: SettingsOption = None,
    package: PackageOption = None,
    model_tag: ModelTagOption = None,
    receive_only: Annotated[
        bool, typer.Option("--receive-only", help="Only receive into the spool (no triage).")
    ] = False,
    work_only: Annotated[
        bool, typer.Option("--work-only", help="Only triage and send what the spool holds.")
    ] = False,
    status: Annotated[
        bool, typer.Option("--status", help="Print the spool's counts as JSON and exit.")
    ] = False,
) -> None:
    """DICOM listener: receive studies (C-STORE), triage them, send results as DICOM SR.

    Runs until SIGTERM or Ctrl-C. Settings come from CXR_TRIAGE_PACS_* variables or a settings
    file (see the README, "Connect to your PACS"); CXR_TRIAGE_SALT is required. Exits 1 when
    a part of the listener failed. Not for clinical use.
    """
    import signal

    from cxr_triage.pacs.listener import (
        Listener,
        build_worker,
        open_spool,
        quiet_identifying_loggers,
    )
    from cxr_triage.pacs.spool import Spool

    settings = _pacs_settings(settings_file)
    if status:
        spool = Spool(settings.spool)
        counts = {**spool.counts(), "worker_pid": spool.worker_lock_holder()}
        typer.echo(json.dumps(counts, indent=2))
        return
    if receive_only and work_only:
        raise CxrError("--receive-only and --work-only exclude each other")
    quiet_identifying_loggers()
    spool = open_spool(settings)
    worker = (
        None
        if receive_only
        else build_worker(settings, spool, package=package, model_tag=model_tag)
    )
    listener = Listener(settings, spool, worker, receive=not work_only, work=not receive_only)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, listener.request_stop)
    listener.start()
    try:
        while not listener.wait(1.0):
            pass
    finally:
        listener.stop()
    if listener.error is not None:
        raise typer.Exit(1)


@app.command()
@_user_errors
def pull(
    study_uid: Annotated[str, typer.Argument(help="The Study Instance UID to fetch.")],
    url: Annotated[
        str, typer.Option("--from", help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web")
    ],
    site: Annotated[str | None, typer.Option(help="Site the study comes from.")] = None,
    settings_file: SettingsOption = None,
    package: PackageOption = None,
    model_tag: ModelTagOption = None,
) -> None:
    """Fetch a study over DICOMweb (QIDO-RS, WADO-RS), triage it, send its SR like `listen`.

    Prints a JSON summary. When a listener already works the spool, the study is left to it.
    Exits 2 when no image of the study could be scored. Not for clinical use.
    """
    from cxr_triage.pacs.listener import pull_and_triage, quiet_identifying_loggers

    quiet_identifying_loggers()
    out = pull_and_triage(
        _pacs_settings(settings_file), url, study_uid, site=site, package=package,
        model_tag=model_tag,
    )  # fmt: skip
    typer.echo(json.dumps(out, indent=2))
    if "queued_for" not in out and "result" not in out:
        raise typer.Exit(2)


if __name__ == "__main__":  # `python -m cxr_triage.cli`, used by tests and subprocesses
    app()
