"""The one manifest validator: valid samples of every kind pass, a broken copy of each is rejected
with the kind, the name and the JSON path of the fault, and the CRD conversion rules hold."""

from __future__ import annotations

import copy

import pytest

from unimedvl import manifests

CONTAINER = {"name": "main", "image": "ghcr.io/example/unimedvl:0.1.0", "command": ["unimedvl", "--help"]}
POD_TEMPLATE = {"spec": {"containers": [dict(CONTAINER)]}}

SAMPLES = {
    "Deployment": {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mlflow"},
        "spec": {
            "selector": {"matchLabels": {"app": "mlflow"}},
            "template": {"metadata": {"labels": {"app": "mlflow"}}, **POD_TEMPLATE},
        },
    },
    "InferenceService": {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "unimedvl", "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
        "spec": {
            "predictor": {
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "ghcr.io/example/unimedvl:0.1.0",
                        "env": [{"name": "STORAGE_URI", "value": "s3://models/unimedvl/1/"}],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}},
                    }
                ]
            }
        },
    },
    "ServingRuntime": {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "unimedvl-runtime"},
        "spec": {"supportedModelFormats": [{"name": "unimedvl", "version": "1"}], "containers": [dict(CONTAINER)]},
    },
    "RayCluster": {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "dev"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": copy.deepcopy(POD_TEMPLATE)},
            "workerGroupSpecs": [
                {"groupName": "gpu", "minReplicas": 0, "maxReplicas": 2, "template": copy.deepcopy(POD_TEMPLATE)}
            ],
        },
    },
    "RayJob": {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "stage1"},
        "spec": {
            "entrypoint": "unimedvl train --stage stage1",
            "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": copy.deepcopy(POD_TEMPLATE)}},
        },
    },
    "Workflow": {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "unimedvl-"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main", "container": dict(CONTAINER)}]},
    },
    "WorkflowTemplate": {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "unimedvl"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main", "container": dict(CONTAINER)}]},
    },
    "CronWorkflow": {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "CronWorkflow",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedules": ["0 2 * * *"],
            "workflowSpec": {"entrypoint": "main", "templates": [{"name": "main", "container": dict(CONTAINER)}]},
        },
    },
    "Application": {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "unimedvl-staging", "namespace": "argocd"},
        "spec": {
            "project": "default",
            "source": {"repoURL": "https://git.example.org/unimedvl.git", "path": "infra/overlays/staging"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "unimedvl-staging"},
        },
    },
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_valid_sample_passes(kind):
    assert manifests.validate(SAMPLES[kind]) == []


def _first_container(doc: dict) -> tuple[dict, str]:
    """The first container of any sample and the JSON path to it."""
    spec = doc["spec"]
    if "predictor" in spec:
        return spec["predictor"]["containers"][0], "$.spec.predictor.containers[0]"
    if "template" in spec:
        return spec["template"]["spec"]["containers"][0], "$.spec.template.spec.containers[0]"
    if "headGroupSpec" in spec:
        return spec["headGroupSpec"]["template"]["spec"]["containers"][0], "$.spec.headGroupSpec.template.spec.containers[0]"
    if "rayClusterSpec" in spec:
        c = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        return c, "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]"
    if "workflowSpec" in spec:
        return spec["workflowSpec"]["templates"][0]["container"], "$.spec.workflowSpec.templates[0].container"
    if "templates" in spec:
        return spec["templates"][0]["container"], "$.spec.templates[0].container"
    if "containers" in spec:
        return spec["containers"][0], "$.spec.containers[0]"
    raise AssertionError("sample without a container")


@pytest.mark.parametrize("kind", sorted(set(SAMPLES) - {"Application"}))
def test_broken_copy_is_rejected_with_kind_name_and_path(kind):
    broken = copy.deepcopy(SAMPLES[kind])
    container, path = _first_container(broken)
    container["imagePullPolicy"] = 3  # wrong type
    container["imag"] = "typo"  # unknown field
    errors = manifests.validate(broken)
    label = f"{kind}/{broken['metadata'].get('name', '<no name>')}"
    assert any(e.startswith(f"{label}: {path}.imagePullPolicy: 3 is not of type 'string'") for e in errors), errors
    assert any(f"{path}: Additional properties are not allowed ('imag' was unexpected)" in e for e in errors), errors
    # the original stays valid: the copy, not the validator's state, was broken
    assert manifests.validate(SAMPLES[kind]) == []


def test_broken_application_is_rejected():
    broken = copy.deepcopy(SAMPLES["Application"])
    del broken["spec"]["destination"]
    broken["spec"]["syncPolicy"] = {"automated": {"prune": "yes"}}
    errors = manifests.validate(broken)
    assert "Application/unimedvl-staging: $.spec: 'destination' is a required property" in errors
    assert "Application/unimedvl-staging: $.spec.syncPolicy.automated.prune: 'yes' is not of type 'boolean'" in errors


def test_custom_resource_metadata_is_an_object_meta():
    broken = copy.deepcopy(SAMPLES["InferenceService"])
    broken["metadata"]["annotation"] = {"x": "y"}
    broken["metadata"]["labels"] = {"app": 3}
    errors = manifests.validate(broken)
    assert any("$.metadata: Additional properties are not allowed ('annotation'" in e for e in errors), errors
    assert any("$.metadata.labels.app: 3 is not of type" in e for e in errors), errors


def test_unknown_kind_and_version_are_errors_not_passes():
    assert "no schema for Widget" in manifests.validate({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}})[0]
    wrong = dict(SAMPLES["RayJob"], apiVersion="ray.io/v2")
    assert "not a served version of RayJob" in manifests.validate(wrong)[0]
    assert "apiVersion and kind are required" in manifests.validate({"metadata": {"name": "x"}})[0]


def test_check_raises_with_every_error():
    bad = copy.deepcopy(SAMPLES["Deployment"])
    bad["spec"]["replicas"] = "two"
    with pytest.raises(manifests.ManifestError) as info:
        manifests.check([SAMPLES["RayJob"], bad])
    assert info.value.errors == ["Deployment/mlflow: $.spec.replicas: 'two' is not of type 'integer', 'null'"]
    assert "Deployment/mlflow: $.spec.replicas" in str(info.value)
    manifests.check(SAMPLES["RayJob"])  # a valid single document passes


def test_check_file_reads_multi_document_yaml(tmp_path):
    import yaml

    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump_all([SAMPLES["Workflow"], None, SAMPLES["Deployment"]]))
    assert [d["kind"] for d in manifests.check_file(path)] == ["Workflow", "Deployment"]


# --- the CRD -> JSON Schema conversion rules (crds/SOURCES.md) ---------------------------------


def _validator(crd_schema: dict):
    import jsonschema

    return jsonschema.Draft202012Validator(manifests._to_json_schema(crd_schema))


def test_nullable_admits_null():
    v = _validator({"type": "object", "properties": {"a": {"type": "string", "nullable": True}, "b": {"type": "string"}}})
    assert v.is_valid({"a": None})
    assert not v.is_valid({"b": None})


def test_int_or_string():
    v = _validator({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True}}})
    assert v.is_valid({"port": 8080}) and v.is_valid({"port": "http"})
    assert not v.is_valid({"port": 1.5}) and not v.is_valid({"port": [1]})


def test_preserve_unknown_fields_and_strict_objects():
    v = _validator(
        {
            "type": "object",
            "properties": {
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "closed": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    )
    assert v.is_valid({"free": {"anything": [1, {"deep": True}]}, "closed": {"x": 1}, "map": {"k": "v"}})
    assert not v.is_valid({"closed": {"y": 1}})
    assert not v.is_valid({"map": {"k": 1}})
    assert not v.is_valid({"other": 1})


def test_required_field_with_default_may_be_omitted():
    v = _validator(
        {
            "type": "object",
            "required": ["mode", "name"],
            "properties": {"mode": {"type": "string", "default": "auto"}, "name": {"type": "string"}},
        }
    )
    assert v.is_valid({"name": "x"})
    assert not v.is_valid({"mode": "auto"})


def test_kubectl_older_than_1_27_is_not_used(tmp_path):
    def fake(name: str, minor: str):
        exe = tmp_path / name
        exe.write_text(f"#!/bin/sh\necho '{{\"clientVersion\": {{\"major\": \"1\", \"minor\": \"{minor}\"}}}}'\n")
        exe.chmod(0o755)
        return exe

    old, new, broken = fake("old", "20"), fake("new", "32+"), tmp_path / "missing"
    assert manifests._kubectl_version(str(new)) == (1, 32)
    assert manifests.pick_kubectl([old, broken, None]) is None
    assert manifests.pick_kubectl([old, new]) == str(new)


def test_infra_validate_command(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from unimedvl.cli import app

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump_all([SAMPLES["RayJob"], SAMPLES["Deployment"]]))
    broken = copy.deepcopy(SAMPLES["RayJob"])
    broken["spec"]["entrypoint"] = ["not", "a", "string"]
    bad.write_text(yaml.safe_dump(broken))
    runner = CliRunner()
    result = runner.invoke(app, ["infra", "validate", str(good)])
    assert result.exit_code == 0 and "2 document(s) valid" in result.output, result.output
    result = runner.invoke(app, ["infra", "validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert "RayJob/stage1: $.spec.entrypoint: ['not', 'a', 'string'] is not of type 'string'" in result.output
