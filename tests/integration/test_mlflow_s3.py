"""MLflow's artefact store on S3. Default run: a client that writes the bucket itself through boto3
(MLFLOW_S3_ENDPOINT_URL + AWS_*), the registry on SQLite, a registered model loaded back from the
bucket. Slow run: the cluster's layout, a real `mlflow server` on loopback whose artefacts live in
the bucket (--artifacts-destination, proxied, so clients hold no S3 key)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


class _Doubler:  # wrapped in a PythonModel below; kept trivial so the test is about storage
    @staticmethod
    def predict(values):
        return [2 * v for v in values]


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    """mlflow.set_tracking_uri is process-global: give later tests back whatever was set before."""
    from mlflow.tracking._tracking_service import utils

    before = utils._tracking_uri
    yield
    utils._tracking_uri = before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))} | s3_server.env()
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", "s3://unimedvl-mlflow/artifacts", "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.terminate()
        pytest.fail("mlflow server did not answer /health within 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def sqlite_tracking(tmp_path_factory):
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow-db') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the schema once for the module
    return uri


def _fresh_s3_client() -> None:
    """Forget the boto3 clients and credentials MLflow and boto3 cache per process (a user who
    fixes a secret starts a new process)."""
    import boto3
    from mlflow.store.artifact import s3_artifact_repo

    s3_artifact_repo._cached_get_s3_client.cache_clear()
    boto3.DEFAULT_SESSION = None


def _log_and_register(name: str, experiment: str, artifact_location: str | None = None):
    import mlflow
    import mlflow.pyfunc

    class Model(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return _Doubler.predict(list(model_input))

    client = mlflow.MlflowClient()
    exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_dict({"note": "artefact"}, "extra/info.json")
        # Explicit requirements: inferring them imports the model in a subprocess (slow, and not
        # what this test is about).
        info = mlflow.pyfunc.log_model(name="model", python_model=Model(), registered_model_name=name,
                                       pip_requirements=["mlflow"])
    version = info.registered_model_version
    client.set_registered_model_alias(name, "staging", version)
    return run, version


def _bucket_files(s3_server, prefix: str) -> list[str]:
    root = s3_server.root / "unimedvl-mlflow" / prefix
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow  # starting an mlflow server takes 20-70 s on a shared two-core machine
def test_server_proxies_artifacts_to_the_bucket(mlflow_server, s3_server, monkeypatch):
    import mlflow

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)  # the client holds no S3 key: the server does
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    run, version = _log_and_register("unimedvl-proxied", "proxied")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    files = _bucket_files(s3_server, "artifacts")
    assert any(f.endswith("extra/info.json") for f in files), files
    assert any(f.endswith("MLmodel") for f in files), files
    loaded = mlflow.pyfunc.load_model("models:/unimedvl-proxied@staging")
    assert loaded.predict([1, 2, 3]) == [2, 4, 6]
    assert loaded.metadata.run_id == run.info.run_id and version == "1"


def test_client_writes_the_bucket_directly_with_boto3(sqlite_tracking, s3_env, monkeypatch):
    import mlflow

    _fresh_s3_client()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_tracking)
    mlflow.set_tracking_uri(sqlite_tracking)
    run, _ = _log_and_register("unimedvl-direct", "direct", artifact_location="s3://unimedvl-mlflow/direct")
    assert run.info.artifact_uri.startswith("s3://unimedvl-mlflow/direct/")
    files = _bucket_files(s3_env, "direct")
    assert any(f.endswith("MLmodel") for f in files) and any(f.endswith("extra/info.json") for f in files), files
    loaded = mlflow.pyfunc.load_model("models:/unimedvl-direct@staging")
    assert loaded.predict([5]) == [10]


def test_wrong_secret_on_the_direct_path_is_a_clear_error(sqlite_tracking, s3_env, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_tracking)
    mlflow.set_tracking_uri(sqlite_tracking)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _fresh_s3_client()
    client = mlflow.MlflowClient()
    exp = client.create_experiment("denied", artifact_location="s3://unimedvl-mlflow/denied")
    (tmp_path / "a.txt").write_text("x")
    with mlflow.start_run(experiment_id=exp):
        with pytest.raises(Exception) as info:
            mlflow.log_artifact(str(tmp_path / "a.txt"))
    assert "SignatureDoesNotMatch" in str(info.value), str(info.value)
    _fresh_s3_client()  # do not leave the bad credentials to later tests
