"""The one S3 settings object against a real S3 server on loopback: uploads are verified, missing
objects and buckets are told apart, and a wrong secret is a clear StorageError, not a traceback."""

from __future__ import annotations

import hashlib

import pytest

from unimedvl import storage


@pytest.fixture
def settings(s3_env):
    return storage.load_settings(None)


def _model_folder(root):
    (root / "sub").mkdir(parents=True)
    (root / "ema.safetensors").write_bytes(bytes(range(256)) * 64)
    (root / "llm_config.json").write_text('{"hidden_size": 64}')
    (root / "sub" / "notes.txt").write_text("x")
    return root


def test_settings_follow_env_and_params(settings, s3_server):
    assert settings.endpoint == s3_server.endpoint and settings.host == f"127.0.0.1:{s3_server.port}"
    assert not settings.secure
    assert settings.model_uri("unimedvl", 3) == "s3://unimedvl-models/unimedvl/3/"
    assert settings.dvc_remote_url == "s3://unimedvl-dvc/dvc"
    assert settings.pipeline_root == "s3://unimedvl-pipelines"
    assert settings.env()["MLFLOW_S3_ENDPOINT_URL"] == s3_server.endpoint
    assert s3_server.secret_key not in repr(settings)  # never printed by accident


def test_upload_folder_verifies_and_lands_in_models_bucket(settings, tmp_path, s3_server):
    folder = _model_folder(tmp_path / "model")
    uri = settings.model_uri("unimedvl", "1")
    objects = storage.upload_folder(folder, uri, settings, progress=False)
    assert sorted(o.uri for o in objects) == [
        "s3://unimedvl-models/unimedvl/1/ema.safetensors",
        "s3://unimedvl-models/unimedvl/1/llm_config.json",
        "s3://unimedvl-models/unimedvl/1/sub/notes.txt",
    ]
    ema = next(o for o in objects if o.uri.endswith("ema.safetensors"))
    assert ema.size == 256 * 64 and ema.sha256 == hashlib.sha256(bytes(range(256)) * 64).hexdigest()
    # the bytes are really on the server (rclone keeps buckets as folders of its root)
    assert (s3_server.root / "unimedvl-models/unimedvl/1/ema.safetensors").read_bytes() == (folder / "ema.safetensors").read_bytes()
    assert storage.object_exists(uri, settings)
    assert storage.object_exists(uri + "llm_config.json", settings)
    assert not storage.object_exists(uri + "missing.bin", settings)
    assert not storage.object_exists(settings.model_uri("unimedvl", "999"), settings)
    back = storage.download_folder(uri, tmp_path / "back", settings)
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in back) == ["ema.safetensors", "llm_config.json", "sub/notes.txt"]


def test_wrong_secret_is_a_clear_error(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    settings = storage.load_settings(None)
    with pytest.raises(storage.StorageError, match="rejected the credentials .*AWS_SECRET_ACCESS_KEY"):
        storage.ensure_buckets(settings, create=False)
    with pytest.raises(storage.StorageError, match="rejected the credentials"):
        storage.upload_folder(_model_folder(tmp_path / "m"), settings.model_uri("x", 1), settings, progress=False)
    with pytest.raises(storage.StorageError, match="rejected the credentials"):
        storage.object_exists(settings.model_uri("x", 1) + "a", settings)


def test_missing_credentials_and_bucket_and_endpoint(s3_env, monkeypatch, tmp_path):
    settings = storage.load_settings(None)
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.upload_folder(_model_folder(tmp_path / "m"), "s3://no-such-bucket/x/", settings, progress=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(storage.StorageError, match="no S3 credentials .*AWS_ACCESS_KEY_ID"):
        storage.minio_client(storage.load_settings(None))


def test_unreachable_endpoint(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    settings = storage.load_settings(None, env=env)
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint"):
        storage.ensure_buckets(settings, storage.minio_client(settings, retries=0), create=False)


def test_ensure_buckets_creates_missing(settings, s3_server):
    from unimedvl.config import StorageConfig

    cfg = StorageConfig(buckets={"dvc": "fresh-dvc", "mlflow": "unimedvl-mlflow", "pipelines": "unimedvl-pipelines",
                                 "models": "unimedvl-models"})
    fresh = storage.S3Settings.from_config(cfg, s3_server.env())
    assert storage.ensure_buckets(fresh) == {"fresh-dvc": False, "unimedvl-mlflow": True,
                                              "unimedvl-pipelines": True, "unimedvl-models": True}
    assert (s3_server.root / "fresh-dvc").is_dir()


def test_bad_uri():
    with pytest.raises(storage.StorageError, match="not an s3:// URI"):
        storage.parse_s3_uri("/local/path")


def test_storage_cli_check_upload_and_wrong_secret(s3_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from unimedvl.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["storage", "check", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    assert "unimedvl-models" in result.output and "ok" in result.output
    folder = _model_folder(tmp_path / "m")
    result = runner.invoke(app, ["storage", "upload", str(folder), "s3://unimedvl-models/cli/1/", "--no-progress"])
    assert result.exit_code == 0 and "uploaded 3 files" in result.output and "sha256 verified" in result.output
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    result = runner.invoke(app, ["storage", "check"])
    assert result.exit_code == 1 and "rejected the credentials" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # an error, not a traceback
