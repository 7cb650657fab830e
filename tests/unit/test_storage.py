"""The `storage:` params section and how the environment overrides it (no server needed)."""

from __future__ import annotations

import pytest

from unimedvl import storage
from unimedvl.config import ParamsError, StorageConfig, load_params


def test_params_yaml_storage_section_is_the_default():
    assert load_params("params.yaml").storage == StorageConfig()


def test_env_precedence():
    cfg = StorageConfig()
    assert storage.S3Settings.from_config(cfg, {}).endpoint == "http://minio:9000"
    env = {"MLFLOW_S3_ENDPOINT_URL": "http://mlflow-s3:9000/"}
    assert storage.S3Settings.from_config(cfg, env).endpoint == "http://mlflow-s3:9000"
    env["AWS_ENDPOINT_URL"] = "https://s3.example.org"
    s = storage.S3Settings.from_config(cfg, env | {"AWS_DEFAULT_REGION": "eu-west-1"})
    assert (s.endpoint, s.host, s.secure, s.region) == ("https://s3.example.org", "s3.example.org", True, "eu-west-1")
    assert s.access_key is None and "AWS_ACCESS_KEY_ID" not in s.env()


def test_one_settings_object_names_all_four_places():
    s = storage.S3Settings.from_config(StorageConfig(), {})
    assert s.dvc_remote_options() == {"url": "s3://unimedvl-dvc/dvc", "endpointurl": "http://minio:9000", "region": "us-east-1"}
    assert s.mlflow_artifacts_uri == "s3://unimedvl-mlflow"
    assert s.pipeline_root == "s3://unimedvl-pipelines"
    assert s.model_uri("unimedvl", 2) == "s3://unimedvl-models/unimedvl/2/"
    assert storage.parse_s3_uri(s.model_uri("unimedvl", 2)) == ("unimedvl-models", "unimedvl/2/")


def test_missing_credentials_are_named():
    with pytest.raises(storage.StorageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.minio_client(storage.S3Settings.from_config(StorageConfig(), {}))


def test_bad_settings_fail_with_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("storage:\n  endpoint: minio:9000\n  buckets: {models: Models_Bucket}\n")
    with pytest.raises(ParamsError) as info:
        load_params(bad)
    assert "storage.endpoint" in str(info.value) and "needs a scheme" in str(info.value)
    assert "storage.buckets.models" in str(info.value)
