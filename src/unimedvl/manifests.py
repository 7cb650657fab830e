"""Offline validation of the Kubernetes documents the platform renders.

One validator for every producer (kustomize overlays, the KFP/Argo YAML, the RayJobs, the
InferenceService that promotion writes), so a field the API server would reject fails here first:

- core kinds (Deployment, Service, Job, ...) go to ``kubernetes-validate`` in strict mode (unknown
  fields are errors), against the schemas of Kubernetes ``K8S_VERSION``;
- custom resources go to the ``openAPIV3Schema`` of their published CRD (``infra/crds/``, see
  SOURCES.md there) through ``jsonschema``, after converting the OpenAPI/Kubernetes extensions the
  way the API server applies them: ``nullable`` admits null, ``x-kubernetes-int-or-string`` admits
  an integer or a string, ``x-kubernetes-preserve-unknown-fields`` keeps unknown keys while every
  other object rejects them (the server prunes them, or refuses them under strict field validation),
  a required field that has a ``default`` may be left out (the server fills it), and ``metadata``
  is checked as a real ObjectMeta. CEL rules (``x-kubernetes-validations``) and list-map key
  uniqueness cannot be expressed in JSON Schema and are not checked.

Why libraries and not a hand-written checker: ``kubernetes-validate`` ships the API server's own
OpenAPI schemas per release and ``jsonschema`` is the reference implementation; nothing here
re-states a schema.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

# The Kubernetes release the core schemas come from (kubectl here is 1.32; clusters >= 1.27 are
# supported by the manifests, and 1.32 is the oldest API we still promise nothing newer than).
K8S_VERSION = "1.32"

# (API group, kind) -> CRD file in infra/crds/. Kinds outside this table and outside the core API
# have no schema here and are reported as such, never passed silently.
CRD_FILES: dict[tuple[str, str], str] = {
    ("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io", "ServingRuntime"): "serving.kserve.io_servingruntimes.yaml",
    ("serving.kserve.io", "ClusterServingRuntime"): "serving.kserve.io_clusterservingruntimes.yaml",
    ("ray.io", "RayCluster"): "ray.io_rayclusters.yaml",
    ("ray.io", "RayJob"): "ray.io_rayjobs.yaml",
    ("argoproj.io", "Workflow"): "argoproj.io_workflows.yaml",
    ("argoproj.io", "WorkflowTemplate"): "argoproj.io_workflowtemplates.yaml",
    ("argoproj.io", "CronWorkflow"): "argoproj.io_cronworkflows.yaml",
    ("argoproj.io", "Application"): "application-crd.yaml",
}

_OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ValueError):
    """One or more documents would be rejected by the API server; ``errors`` lists each."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__(f"{len(errors)} manifest error(s):\n  " + "\n  ".join(errors))


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def crd_dir() -> Path:
    """``infra/crds`` of this checkout; env ``UNIMEDVL_CRD_DIR`` points elsewhere (installed wheel)."""
    return Path(os.environ.get("UNIMEDVL_CRD_DIR") or repo_root() / "infra" / "crds")


def _doc_label(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "<not a mapping>"
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    return f"{doc.get('kind', '<no kind>')}/{name or '<no name>'}"


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# --- core kinds --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _k8s_definitions() -> Resource:
    from kubernetes_validate import utils

    schema_dir = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
    return Resource.from_contents(utils.schema_contents(f"{schema_dir}/_definitions.json", K8S_VERSION))


@functools.lru_cache(maxsize=None)
def _core_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    from kubernetes_validate import utils

    # kubernetes-validate's own file naming: rbac.authorization.k8s.io/v1 -> rbac-v1
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    name = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict/{kind.lower()}-{api}.json"
    try:
        schema = utils.schema_contents(name, K8S_VERSION)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(schema) @ (_k8s_definitions() @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


# --- custom resources --------------------------------------------------------------------------


def _to_json_schema(node: Any) -> Any:
    """Convert one CRD structural-schema node (recursively) to plain JSON Schema."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {k: _to_json_schema(v) for k, v in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = _to_json_schema(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_to_json_schema(n) for n in out[key]]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {"$ref": _OBJECT_META}
    if (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if isinstance(out.get("required"), list) and "properties" in out:
        # The API server applies defaults before validating, so a defaulted field is never missing.
        out["required"] = [r for r in out["required"] if "default" not in out["properties"].get(r, {})]
        if not out["required"]:
            del out["required"]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def _crd(filename: str) -> dict:
    path = crd_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"CRD schema {path} is missing: the repository's infra/crds/ holds it "
            "(set UNIMEDVL_CRD_DIR when running from an installed package)"
        )
    with path.open() as f:
        return yaml.load(f, Loader=_YAML_LOADER)


@functools.lru_cache(maxsize=None)
def _crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator | str:
    crd = _crd(CRD_FILES[(group, kind)])
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        return f"{group}/{version} is not a served version of {kind} (known: {', '.join(sorted(versions))})"
    schema = _to_json_schema(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"$ref": _OBJECT_META}
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema.setdefault("required", [])
    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata"})
    return jsonschema.Draft202012Validator(schema, registry=_k8s_definitions() @ Registry())


# --- public API --------------------------------------------------------------------------------


def validate(doc: dict) -> list[str]:
    """Error messages for one document (``Kind/name: $.json.path: what``); empty means valid."""
    label = _doc_label(doc)
    if not isinstance(doc, dict):
        return [f"{label}: a Kubernetes document is a mapping, got {type(doc).__name__}"]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"{label}: apiVersion and kind are required strings"]
    group, _, version = api_version.rpartition("/")
    if (group, kind) in CRD_FILES:
        validator = _crd_validator(group, kind, version)
        if isinstance(validator, str):
            return [f"{label}: {validator}"]
    else:
        validator = _core_validator(api_version, kind)
        if validator is None:
            return [
                f"{label}: no schema for {kind} {api_version}: not a Kubernetes {K8S_VERSION} core kind "
                f"and not one of the CRDs in infra/crds/ ({', '.join(k for _, k in CRD_FILES)})"
            ]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{label}: {_json_path(e.absolute_path)}: {e.message}" for e in errors]


def validate_all(docs: Iterable[dict]) -> list[str]:
    """Errors of every document (``None`` entries, empty YAML documents, are skipped)."""
    return [err for doc in docs if doc is not None for err in validate(doc)]


def check(docs: Iterable[dict] | dict) -> None:
    """Raise ``ManifestError`` listing every error (kind, name, JSON path) unless all docs are valid."""
    errors = validate_all([docs] if isinstance(docs, dict) else docs)
    if errors:
        raise ManifestError(errors)


def load_docs(source: str | Path) -> list[dict]:
    """The non-empty YAML documents of a file (Path) or of a YAML string."""
    text = source.read_text() if isinstance(source, Path) else source
    return [d for d in yaml.load_all(text, Loader=_YAML_LOADER) if d is not None]


def check_file(path: str | Path) -> list[dict]:
    """Load and check every document of a YAML file; returns the documents."""
    docs = load_docs(Path(path))
    check(docs)
    return docs


# --- kustomize ---------------------------------------------------------------------------------

MIN_KUBECTL = (1, 27)  # kustomize v5 (`patches:`, `labels:`) ships with kubectl >= 1.27


def _kubectl_version(exe: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([exe, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
        info = json.loads(out.stdout)["clientVersion"]
        return int(info["major"]), int(re.match(r"\d+", info["minor"]).group())
    except (OSError, ValueError, KeyError, subprocess.SubprocessError, AttributeError):
        return None


def pick_kubectl(candidates: Iterable[str | Path | None]) -> str | None:
    """The first candidate that is a kubectl >= MIN_KUBECTL."""
    for exe in candidates:
        if exe and Path(exe).is_file():
            version = _kubectl_version(str(exe))
            if version and version >= MIN_KUBECTL:
                return str(exe)
    return None


@functools.lru_cache(maxsize=1)
def find_kubectl() -> str | None:
    """A kubectl >= 1.27: the project's .venv one (``make setup``) first, then PATH."""
    return pick_kubectl([repo_root() / ".venv" / "bin" / "kubectl", shutil.which("kubectl")])


def kustomize_build(directory: str | Path) -> list[dict]:
    """Render a kustomization with ``kubectl kustomize`` (offline) and return its documents."""
    exe = find_kubectl()
    if exe is None:
        raise RuntimeError(
            f"no kubectl >= {'.'.join(map(str, MIN_KUBECTL))} found on PATH or in .venv/bin: run `make setup`"
        )
    proc = subprocess.run([exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ManifestError([f"kubectl kustomize {directory} failed: {proc.stderr.strip()}"])
    return load_docs(proc.stdout)
