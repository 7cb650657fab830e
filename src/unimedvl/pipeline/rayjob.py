"""stage1-3 on the cluster: one KubeRay `RayJob` per stage, with its own Ray cluster.

The KFP task (a small CPU pod) renders the RayJob (`rayjob_manifest`: the GPU image from the
pipeline's image parameter, a GPU worker group sized by the step's GPU parameter on the GPU pool's
node selector and tolerations, `shutdownAfterJobFinishes: true`), creates it through the Kubernetes
API, streams the submitter pod's log into its own, waits for a terminal state and returns the
checkpoint's s3:// URI. The entrypoint on the Ray head copies the inputs from S3, runs
`unimedvl train --stage S --ray-address auto` (the same `run_stage` as everywhere) and copies the
model folder back (`unimedvl pipeline sync`, the MinIO client of `unimedvl.storage`).

The `kubernetes` Python client is the API access (it reads the pod's service account, or a kubeconfig).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import sys
import threading
import time
from typing import Any

import yaml

from ..config import Params

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
WORK = "/tmp/unimedvl"  # on the Ray head; an emptyDir
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayJobError(RuntimeError):
    pass


def job_name(stage: str, run_id: str) -> str:
    """A DNS-1123 name, unique per pipeline run and stage (KubeRay adds suffixes: keep it short)."""
    rid = re.sub(r"[^a-z0-9]", "", (run_id or "manual").lower())[:12] or "manual"
    return f"unimedvl-{stage}-{rid}"


def cluster_params(params: Params, stage: str) -> Params:
    """The stage's params for a GPU Ray cluster: one Ray Train worker per GPU of the step."""
    gpus = params.pipeline.gpus.get(stage, 1)
    train = params.train.model_copy(update={"backend": "ray", "workers": max(1, gpus), "use_gpu": gpus > 0})
    return params.model_copy(update={"train": train})


def entrypoint(stage: str, data_uri: str, previous_uri: str, out_uri: str, heldout_uri: str | None = None) -> str:
    q = shlex.quote
    steps = [
        f"mkdir -p {WORK}",
        f"printf %s \"$UNIMEDVL_PARAMS_B64\" | base64 -d > {WORK}/params.yaml",
        f"unimedvl pipeline sync {q(data_uri)} {WORK}/data",
        f"unimedvl pipeline sync {q(previous_uri)} {WORK}/previous",
        *([f"unimedvl pipeline sync {q(heldout_uri)} {WORK}/heldout"] if heldout_uri else []),
        f"unimedvl train --stage {stage} --ray-address auto --data {WORK}/data --from {WORK}/previous "
        + (f"--heldout {WORK}/heldout " if heldout_uri else "")
        + f"--output {WORK}/out --params {WORK}/params.yaml --no-progress",
        f"unimedvl pipeline sync {WORK}/out {q(out_uri)}",
        f"unimedvl pipeline sync {WORK}/out.metrics.json {q(out_uri.rstrip('/') + '.metrics.json')}",
    ]
    return "sh -ec " + q(" && ".join(steps))


def rayjob_manifest(stage: str, params: Params, *, image: str, data_uri: str, previous_uri: str, out_uri: str,
                    run_id: str, heldout_uri: str | None = None) -> dict[str, Any]:
    """The RayJob of one stage (validated against the RayJob CRD in the tests)."""
    p = params.pipeline
    ray = p.ray
    params = cluster_params(params, stage)
    gpus = params.train.workers if params.train.use_gpu else 0
    name = job_name(stage, run_id)
    env_from = [{"secretRef": {"name": p.s3_secret, "optional": True}}]
    security = {"runAsNonRoot": True, "allowPrivilegeEscalation": False}
    labels = {"app.kubernetes.io/part-of": "unimedvl", "unimedvl/stage": stage, "unimedvl/run-id": name.rsplit("-", 1)[-1]}
    blob = base64.b64encode(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False).encode()).decode()
    runtime_env = {"env_vars": {"UNIMEDVL_PARAMS_B64": blob, "UNIMEDVL_RUN_ID": run_id}}
    worker_res = {"cpu": ray.worker_cpu, "memory": ray.worker_memory}
    if gpus:
        worker_res[p.gpu.resource] = "1"
    worker_pod: dict[str, Any] = {
        "containers": [{"name": "ray-worker", "image": image, "imagePullPolicy": "IfNotPresent",
                        "resources": {"requests": dict(worker_res), "limits": dict(worker_res)},
                        "envFrom": env_from, "securityContext": security}],
    }
    if p.gpu.node_selector:
        worker_pod["nodeSelector"] = dict(p.gpu.node_selector)
    if p.gpu.tolerations:
        worker_pod["tolerations"] = [dict(t) for t in p.gpu.tolerations]
    head_res = {"cpu": ray.head_cpu, "memory": ray.head_memory}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": ray.namespace, "labels": labels},
        "spec": {
            "entrypoint": entrypoint(stage, data_uri, previous_uri, out_uri, heldout_uri),
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ray.ttl_s,
            "activeDeadlineSeconds": ray.timeout_s,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "rayVersion": ray.ray_version,
                "headGroupSpec": {
                    # The head schedules no training: the GPU workers do.
                    "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                        "name": "ray-head", "image": image, "imagePullPolicy": "IfNotPresent",
                        "resources": {"requests": dict(head_res), "limits": dict(head_res)},
                        "envFrom": env_from, "securityContext": security,
                        "ports": [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"}],
                    }]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu" if gpus else "cpu",
                    "replicas": params.train.workers, "minReplicas": params.train.workers, "maxReplicas": params.train.workers,
                    "rayStartParams": {},
                    "template": {"metadata": {"labels": labels}, "spec": worker_pod},
                }],
            },
        },
    }


def _apis(api_client=None):
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


def _stream_logs(core, namespace: str, name: str, out, stop: threading.Event, tail: list[str]) -> None:
    """Follow the submitter pod's log (KubeRay's Job named after the RayJob) once it exists."""
    from kubernetes.client.exceptions import ApiException

    while not stop.is_set():
        try:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        except ApiException:
            pods = []
        if pods:
            try:
                resp = core.read_namespaced_pod_log(pods[0].metadata.name, namespace, follow=True, _preload_content=False)
                for line in resp.stream():
                    for ln in line.decode(errors="replace").splitlines():
                        out.write(f"[{name}] {ln}\n")
                        tail.append(ln)
                        del tail[:-50]
                out.flush()
                return
            except ApiException:
                pass
        stop.wait(1.0)


def submit_and_wait(manifest: dict[str, Any], *, api_client=None, poll_s: float = 10.0, timeout_s: float = 7 * 86400,
                    out=None) -> dict[str, Any]:
    """Create the RayJob, stream its log, wait for it; returns its final status or raises RayJobError."""
    from kubernetes.client.exceptions import ApiException

    custom, core = _apis(api_client)
    out = out or sys.stdout
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    except ApiException as e:
        if e.status != 409:  # 409: a retried task finds its own RayJob and waits for it
            raise RayJobError(f"cannot create RayJob {ns}/{name}: {e.status} {e.reason}: {e.body}") from None
    out.write(f"created RayJob {ns}/{name}\n")
    stop, tail = threading.Event(), []
    logs = threading.Thread(target=_stream_logs, args=(core, ns, name, out, stop, tail), daemon=True)
    logs.start()
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    try:
        while True:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}
            job, deploy = status.get("jobStatus", ""), status.get("jobDeploymentStatus", "")
            if job in TERMINAL or deploy in ("Complete", "Failed"):
                break
            if time.monotonic() > deadline:
                raise RayJobError(f"RayJob {ns}/{name} did not finish within {timeout_s:.0f} s (status {job or deploy})")
            time.sleep(poll_s)
    finally:
        logs.join(timeout=max(5.0, 2 * poll_s))
        stop.set()
    if status.get("jobStatus") != "SUCCEEDED":
        raise RayJobError(f"RayJob {ns}/{name} ended {status.get('jobStatus') or status.get('jobDeploymentStatus')}: "
                          f"{status.get('message', '')}\nlast log lines:\n" + "\n".join(tail[-20:]))
    return status


def read_summary(uri: str) -> dict[str, Any]:
    """The stage summary JSON the entrypoint uploaded beside the checkpoint (`<model uri>.metrics.json`)."""
    from ..storage import minio_client, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    resp = minio_client().get_object(bucket, key)
    try:
        return json.loads(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def run_stage_on_ray(stage: str, data_uri: str, previous_uri: str, out_uri: str, params: Params, *, image: str,
                     run_id: str, heldout_uri: str | None = None, api_client=None) -> dict[str, Any]:
    """Train `stage` in a RayJob; returns the stage summary (the checkpoint is at `out_uri`)."""
    if not out_uri.startswith("s3://"):
        raise RayJobError(f"the rayjob executor needs an s3:// pipeline root (got {out_uri}); use train_executor=local")
    manifest = rayjob_manifest(stage, params, image=image, data_uri=data_uri, previous_uri=previous_uri,
                               out_uri=out_uri, run_id=run_id, heldout_uri=heldout_uri)
    ray = params.pipeline.ray
    status = submit_and_wait(manifest, api_client=api_client, poll_s=ray.poll_s, timeout_s=ray.timeout_s)
    return {**read_summary(out_uri.rstrip("/") + ".metrics.json"), "rayjob": manifest["metadata"]["name"],
            "ray_status": status.get("jobStatus")}
