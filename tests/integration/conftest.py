"""Fixtures of the integration tests (tests/integration): real processes, servers, repos."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxr_triage.config import Params, PromoteParams, parse_section
from cxr_triage.data.deid import Pseudonymiser
from cxr_triage.data.synth import SynthConfig, generate_dataset
from cxr_triage.evaluation.plots import operating_point_table
from cxr_triage.inference.layout import REFERENCE_FILE
from cxr_triage.inference.predictor import Predictor
from cxr_triage.inference.registry import register_package
from cxr_triage.models.networks import Backbone, build_backbone
from cxr_triage.monitoring import load_reference
from cxr_triage.numerics import pinned_environment
from cxr_triage.pacs.scp import DicomReceiver
from cxr_triage.pacs.settings import Destination, PacsSettings
from cxr_triage.pacs.spool import Spool
from helpers.acceptance import SYSTEM_PATH, TOOLS, WEBHOOK, WEBHOOK_PORT, Listener, Orthanc
from helpers.bento import API_KEY, AUTH, MAX_BODY_MB, SERVICE_SALT, Server, serve
from helpers.commands import init_dvc_repo, init_pipeline_repo, run_command
from helpers.monitor_env import MonitorEnv, get_json, synth_images
from helpers.netns import NetNamespace, stop
from helpers.pacs import CALLING_AE, SALT, SITE
from helpers.pipeline import REPO
from helpers.pipeline import tiny_params_data as _tiny_params_data
from helpers.ports import free_port
from helpers.tiny_training import clean_env, train_in_subprocess
from helpers.webhook import EVIDENTLY_UI, PREFECT_UI, Receiver

SYNTH_SITES = {"hospital_a": 14, "hospital_b": 10}


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A small synthetic source in the synth stage's layout: <dir>/<site>/{labels.csv,images/}."""
    root = tmp_path_factory.mktemp("synth")
    for site, n in SYNTH_SITES.items():
        generate_dataset(root / site, n=n, site=site, seed=7)
    return root


@pytest.fixture(scope="session")
def tiny_params_data():
    """A function giving params.yaml scaled down to seconds (see ``helpers.pipeline``)."""
    return _tiny_params_data


def _touch(name: str) -> str:
    return f"python -c \"open('{name}', 'w').write('x')\""


@pytest.fixture(scope="module")
def shuffled_repo(tmp_path_factory) -> Path:
    """dvc.yaml listing stages out of dependency order: c needs b needs a; d is independent."""
    stages = {
        "c": {"cmd": _touch("c.txt"), "deps": ["b.txt"], "outs": ["c.txt"]},
        "d": {"cmd": _touch("d.txt"), "outs": ["d.txt"]},
        "b": {"cmd": _touch("b.txt"), "deps": ["a.txt"], "outs": ["b.txt"]},
        "a": {"cmd": _touch("a.txt"), "outs": ["a.txt"]},
        "killed": {"cmd": 'python -c "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"'},
        "bad_data": {"cmd": "python -c \"import sys; print('no label column'); sys.exit(3)\""},
    }
    root = init_dvc_repo(tmp_path_factory.mktemp("dvc_order"))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


# --- used by test_weights_densenet.py ------------------------------------------------------------


@pytest.fixture(scope="module")
def densenet_reference() -> tuple[Backbone, torch.Tensor, torch.Tensor]:
    """A DenseNet-121 with non-trivial BatchNorm statistics, an input and its outputs."""
    torch.manual_seed(1)
    backbone = build_backbone("densenet121").eval()
    # Non-trivial BatchNorm statistics so a wrongly mapped running mean would show.
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = backbone(x)
    return backbone, x, expected


# --- used by test_predict_cli.py -----------------------------------------------------------------


@pytest.fixture(scope="module")
def predict_folder(tiny_pipeline, tmp_path_factory, shared_data) -> Path:
    """Six synthetic DICOMs, one real CR, one CT, one unreadable file and a text note."""
    root = tmp_path_factory.mktemp("to_score")
    images = sorted(
        (Path(tiny_pipeline.params.paths.synth_dir) / "hospital_c" / "images").iterdir()
    )
    nested = root / "nested"
    nested.mkdir()
    for path in images[:6]:
        shutil.copy(path, nested / path.name)
    shutil.copy(shared_data / "dicom" / "RG1_UNCR.dcm", root / "real_cr.dcm")
    shutil.copy(shared_data / "dicom" / "CT_small.dcm", root / "ct.dcm")
    (root / "notes.txt").write_text("not an image")
    (root / "noise.dcm").write_bytes(bytes(range(256)) * 2)
    (root / ".hidden").write_text("ignored: hidden files are not inputs")
    return root


# --- used by test_comparison_stages.py -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline_read_only(tiny_pipeline) -> tuple[Path, Params]:
    """The session's tiny pipeline (synth .. package), which these tests only read or copy."""
    return tiny_pipeline.root, tiny_pipeline.params


# --- used by test_dvc_pipeline.py ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, tiny_params_data) -> Path:
    """This repo's dvc.yaml, params.yaml and sources with tiny params, in a temporary Git + DVC
    repo (one per module: test_dvc_pipeline.py and test_flows.py)."""
    return init_pipeline_repo(tmp_path_factory.mktemp("repo"), tiny_params_data())


# --- used by test_flows.py -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port, with its own PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((home / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PREFECT_API_URL", url)
            env.setenv("PREFECT_HOME", str(home))
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def alert_receiver(prefect_server):
    """The webhook receiver with the alert block and automations pointing at it.

    Links point to made-up UI addresses (the settings), and repeats within an hour are folded.
    """
    from flows.alerts import setup_alerts

    rec = Receiver()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CXR_TRIAGE_PREFECT_UI_URL", PREFECT_UI)
        env.setenv("CXR_TRIAGE_EVIDENTLY_UI_URL", EVIDENTLY_UI)
        env.setenv("CXR_TRIAGE_ALERT_COOLDOWN_MINUTES", "60")
        setup_alerts(rec.url)
        setup_alerts(rec.url)  # idempotent: replaces, never duplicates
        time.sleep(2)  # the triggers service picks up new automations
        yield rec
    rec.server.shutdown()


@pytest.fixture(scope="module")
def worse_pipeline(tmp_path_factory):
    """A tiny pipeline trained on inverted labels: a deliberately worse model."""
    from helpers.pipeline import build_tiny_pipeline

    def invert_labels(params: Params) -> None:
        for table_path in Path(params.paths.synth_dir).glob("*/labels.csv"):
            table = pd.read_csv(table_path)
            normal = table["Finding Labels"] == "No Finding"
            # Inverted labels: it learns that a visible lesion means "normal".
            table["Finding Labels"] = np.where(normal, "Effusion", "No Finding")
            table.to_csv(table_path, index=False)

    return build_tiny_pipeline(tmp_path_factory.mktemp("worse_pipeline"), invert_labels)


@pytest.fixture(scope="module")
def frozen_set(tmp_path_factory, tiny_pipeline):
    from cxr_triage.orchestration.gate import make_synthetic_frozen_set

    out = tmp_path_factory.mktemp("frozen") / "frozen_test"
    params = dataclasses.replace(
        tiny_pipeline.params, promote=PromoteParams(frozen_test_per_site=60)
    )
    # Clearly visible findings: the tiny models (32 px, 2 epochs) are near chance on subtle ones.
    easy = SynthConfig(
        lesion_contrast=(1.5, 2.0), lesion_size=(1.2, 1.5), subtle_fraction=0.0, label_noise=0.0
    )
    return make_synthetic_frozen_set(params, out, config=easy)


@pytest.fixture(scope="module")
def monitored_package(tiny_pipeline, tmp_path_factory) -> Path:
    """The tiny package plus 120 scored hospital_a reference rows (its own ~22 are too few)."""
    from cxr_triage.inference.layout import REFERENCE_FILE
    from cxr_triage.inference.predictor import Predictor
    from cxr_triage.monitoring import load_reference

    root = tmp_path_factory.mktemp("monitored")
    package_dir = root / "package"
    shutil.copytree(tiny_pipeline.package_dir, package_dir)
    generate_dataset(root / "reference_a", n=120, site="hospital_a", seed=101)
    images = sorted((root / "reference_a" / "images").iterdir())
    predictions = Predictor(package_dir).predict(images, {"site": "hospital_a"})
    rows = pd.DataFrame([p.features for p in predictions])
    rows.insert(0, "split", "val")
    rows["y_true"] = (rows["label"] == "abnormal").astype(int)
    reference = pd.concat([load_reference(package_dir), rows], ignore_index=True)
    reference.to_parquet(package_dir / REFERENCE_FILE, index=False)
    return package_dir


# --- used by test_phi_audit.py -------------------------------------------------------------------


@pytest.fixture
def prefect_server_env(tmp_path) -> Iterator[dict[str, str]]:
    """A real `prefect server start` on a free port, its database in ``tmp_path/prefect``."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    prefect = Path(sys.executable).with_name("prefect")
    log = open(tmp_path / "prefect_server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "prefect did not start"
            time.sleep(0.5)
        yield {k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL")}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


# --- used by test_pacs.py ------------------------------------------------------------------------


@pytest.fixture
def pacs_settings(tmp_path: Path) -> PacsSettings:
    return PacsSettings(
        port=free_port(),
        calling_aes={CALLING_AE: SITE},
        spool_dir=tmp_path / "spool",
        quiet_seconds=0.0,
        retry_initial_seconds=0.1,
        retry_max_seconds=0.5,
        destinations=(Destination("DEST", "127.0.0.1", free_port()),),
    )


@pytest.fixture
def receiver_spool(pacs_settings: PacsSettings) -> Spool:
    receiver_spool = Spool(pacs_settings.spool, Pseudonymiser(SALT))
    yield receiver_spool
    receiver_spool.close()


@pytest.fixture
def dicom_receiver(pacs_settings: PacsSettings, receiver_spool: Spool):
    dicom_receiver = DicomReceiver(pacs_settings, receiver_spool)
    dicom_receiver.start()
    yield dicom_receiver
    dicom_receiver.stop(timeout=5)


@pytest.fixture(scope="module")
def tiny_predictor(tiny_pipeline) -> Predictor:
    return Predictor(tiny_pipeline.package_dir, num_threads=1)


# --- used by test_service.py ---------------------------------------------------------------------


BUGS = Path(__file__).resolve().parents[3] / "shared" / "bugs"


@pytest.fixture(scope="module")
def service_module(tiny_pipeline, tmp_path_factory) -> Iterator[ModuleType]:
    """``cxr_triage.serving.service`` imported for the tiny package, logging to a temp file."""
    tag = register_package(tiny_pipeline.package_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CXR_TRIAGE_MODEL_TAG", tag)
        env.setenv("CXR_TRIAGE_PREDICTION_LOG", str(tmp_path_factory.mktemp("log") / "p.sqlite"))
        yield importlib.import_module("cxr_triage.serving.service")


@pytest.fixture(scope="module")
def svc(service_module):
    return service_module.CxrTriage()  # the instance, dependencies resolved in-process


_ASGI_APPS: list = []


@pytest.fixture(scope="module")
def asgi_app(service_module):
    """The service's ASGI app, made once per process: BentoML registers its Prometheus metrics
    once per app (a second app in the same process fails). Each TestClient start makes a fresh
    service instance."""
    if not _ASGI_APPS:
        _ASGI_APPS.append(service_module.CxrTriage.to_asgi())
    return _ASGI_APPS[0]


@pytest.fixture
def asgi(asgi_app):
    """Starts a TestClient on the service's ASGI app: each start makes a fresh instance."""
    from starlette.testclient import TestClient

    @contextlib.contextmanager
    def start() -> Iterator[TestClient]:
        with TestClient(asgi_app) as client:
            yield client

    return start


@pytest.fixture(scope="module")
def shared_bugs() -> Path:
    if not BUGS.is_dir():
        pytest.skip(f"../shared/bugs is absent: expected the bug inputs at {BUGS}")
    return BUGS


# --- used by test_service_http.py ----------------------------------------------------------------


@pytest.fixture(scope="module")
def service_server(tiny_pipeline, tmp_path_factory) -> Iterator[Server]:
    """`bentoml serve` from source: 2 workers, an API key, a 10 MB body limit.

    No CXR_TRIAGE_MODEL_TAG: the service resolves the promoted model when it starts (the
    serving record of its own state folder), and its prediction log is the state folder's.
    """
    tag = register_package(tiny_pipeline.package_dir)
    env = {
        "CXR_TRIAGE_WORKERS": "2",
        "CXR_TRIAGE_API_KEY": API_KEY,
        "CXR_TRIAGE_MAX_BODY_MB": str(MAX_BODY_MB),
        # Study UIDs are logged as keyed digests (feedback by study).
        "CXR_TRIAGE_SALT": SERVICE_SALT,
    }
    with serve(tmp_path_factory.mktemp("serve"), tag=tag, promote_tag=True, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def service_client(service_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_server.url, headers=AUTH, timeout=60) as c:
        yield c


# --- used by test_pacs_acceptance.py -------------------------------------------------------------


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNamespace]:
    reason = NetNamespace.unavailable()
    if reason:
        pytest.skip(f"{reason}; Orthanc would listen on every interface outside one")
    missing = [t for t in TOOLS if shutil.which(t, path=SYSTEM_PATH) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run `make system-deps`")
    namespace = NetNamespace()
    yield namespace
    namespace.close()


@pytest.fixture(scope="module")
def orthanc(netns, tmp_path_factory) -> Iterator[Orthanc]:
    server = Orthanc(netns, tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worklist(netns, tmp_path_factory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("worklist") / "entries.jsonl"
    server = netns.popen([sys.executable, "-c", WEBHOOK, path, str(WEBHOOK_PORT)])
    netns.wait_for(["curl", "-s", "-o", "/dev/null", f"127.0.0.1:{WEBHOOK_PORT}"], what="webhook")
    yield path
    stop(server)


@pytest.fixture(scope="module")
def listener(netns, orthanc, worklist, tiny_pipeline, tmp_path_factory) -> Iterator[Listener]:
    webhook = f"http://127.0.0.1:{WEBHOOK_PORT}/w"
    root = tmp_path_factory.mktemp("listener")
    process = Listener(netns, root, tiny_pipeline.package_dir, 11112,
                       CXR_TRIAGE_PACS_WORKLIST_WEBHOOK=webhook)  # fmt: skip
    process.start()
    yield process
    assert process.stop() == 0, process.log.read_text()


# --- used by test_dvc_plots.py -------------------------------------------------------------------


PARAMS_YAML = """\
paths:
  compare_dir: reports/compare
  threshold_dir: reports/threshold
  evaluate_dir: reports/evaluate
"""


# The top-level `plots:` section of this repository's dvc.yaml, as it is.
PLOTS_YAML = yaml.safe_dump(
    {"plots": yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]}, sort_keys=False
)


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    """A Git + DVC repo with the plot definitions, the templates and small curves for 2 models."""
    repo = tmp_path_factory.mktemp("plots_repo")
    run_command(["git", "init", "-q"], repo, timeout=300, include_stderr=False)
    run_command(["dvc", "init", "-q"], repo, timeout=300, include_stderr=False)
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots", dirs_exist_ok=True)
    (repo / "params.yaml").write_text(PARAMS_YAML)
    (repo / "dvc.yaml").write_text(PLOTS_YAML)
    compare = repo / "reports" / "compare" / "plots"
    evaluate = repo / "reports" / "evaluate" / "plots"
    compare.mkdir(parents=True)
    evaluate.mkdir(parents=True)
    roc = pd.DataFrame(
        {
            "candidate": ["logreg"] * 4 + ["rbf_svm"] * 3,
            "fpr": [0.0, 0.0, 0.5, 1.0, 0.0, 0.2, 1.0],
            "tpr": [0.0, 0.5, 1.0, 1.0, 0.0, 0.7, 1.0],
        }
    )
    roc.to_csv(compare / "roc.csv", index=False)
    pd.DataFrame(
        {
            "candidate": ["logreg"] * 3 + ["rbf_svm"] * 3,
            "mean_predicted": [0.1, 0.5, 0.9, 0.15, 0.45, 0.85],
            "fraction_positive": [0.05, 0.55, 0.95, 0.2, 0.4, 0.9],
            "count": [10, 12, 8, 9, 11, 10],
        }
    ).to_csv(compare / "calibration.csv", index=False)
    roc[roc["candidate"] == "rbf_svm"].to_csv(evaluate / "roc.csv", index=False)
    threshold = repo / "reports" / "threshold" / "plots"
    threshold.mkdir(parents=True)
    operating_point_table("rbf_svm", 0.3, 0.7, 0.8, "train+val CV").to_csv(
        threshold / "operating_point.csv", index=False
    )
    operating_point_table("rbf_svm", 0.3, 0.65, 0.75, "test").to_csv(
        evaluate / "operating_point.csv", index=False
    )
    return repo


# --- used by test_reproducibility.py -------------------------------------------------------------


@pytest.fixture(scope="module")
def pinned_run() -> dict:
    return train_in_subprocess(1, pinned_environment(clean_env()))


# --- used by test_monitor.py ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitor_env(tiny_pipeline, tmp_path_factory) -> MonitorEnv:
    """A copy of the tiny package with 120 more hospital_a reference rows, and two batches."""
    root = tmp_path_factory.mktemp("monitor")
    package_dir = root / "package"
    shutil.copytree(tiny_pipeline.package_dir, package_dir)
    extra = synth_images(root, "reference_a", 120, "hospital_a", 101)
    predictions = Predictor(package_dir).predict(sorted(extra.iterdir()), {"site": "hospital_a"})
    rows = pd.DataFrame([p.features for p in predictions])
    rows.insert(0, "split", "val")
    rows["y_true"] = (rows["label"] == "abnormal").astype(int)  # unused by monitoring
    reference = pd.concat([load_reference(package_dir), rows], ignore_index=True)
    reference.to_parquet(package_dir / REFERENCE_FILE, index=False)

    data = _tiny_params_data(root)
    data["paths"]["package_dir"] = str(package_dir)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(data))
    return MonitorEnv(
        root=root,
        package_dir=package_dir,
        params=parse_section(Params, data, ""),
        params_file=params_file,
        same_site=synth_images(root, "batch_a", 40, "hospital_a", 102),
        new_site=synth_images(root, "batch_new", 40, "new_hospital", 103),
    )


@pytest.fixture
def evidently_ui():
    """Start ``evidently ui`` on a workspace: a function giving its base URL (stopped after)."""
    servers = []

    def start(workspace: str) -> str:
        port = free_port()
        evidently = Path(sys.executable).with_name("evidently")
        servers.append(
            subprocess.Popen(
                [str(evidently), "ui", "--workspace", workspace]
                + ["--host", "127.0.0.1", "--port", str(port)],
                env={**os.environ, "DO_NOT_TRACK": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/api/projects")
                return base
            except OSError:
                assert time.monotonic() < deadline, "evidently ui did not start within 60 s"
                time.sleep(0.5)

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser():
    """Headless Chromium (Debian's chromium + chromedriver) driven by Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1600,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()
