"""`unimedvl promote`: gates -> copy to S3 -> staging overlay -> aliases, with an audit trail.

Aliases: `staging-candidate` (passed the gates, overlay written, waiting for the InferenceService to be
Ready), `staging` (moved by `--confirm staging`, run by the Argo CD PostSync Job), `champion` (only
by an explicit `--to production`). Local mode (no S3 endpoint in the environment, as in `dvc repro`)
renders the overlay into `promote.local_overlay`, records `uploaded: false` and sets `staging`
directly so that rollback has something to restore; the committed overlay is never touched.

Every decision goes to `promote.decision` (the latest), the audit log (JSON lines, appended; a
persisted DVC output) and the version's tags. A rejected candidate changes nothing else.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import Params
from . import card, gitops
from .gates import check_gate, licence_gate
from .lineage import eval_inputs, inputs_key, licence_set, training_licences
from .registry import client, version_artifacts

CANDIDATE, STAGING, CHAMPION = "staging-candidate", "staging", "champion"
EXIT_REJECTED_STRICT = 3


class PromoteError(RuntimeError):
    pass


def s3_configured(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL"))


def _alias(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def audit(params: Params, entry: dict[str, Any]) -> dict[str, Any]:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    line = json.dumps(entry, sort_keys=True)
    path = Path(params.promote.audit_log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(line + "\n")
    except OSError as e:
        # The PostSync Job runs on a read-only root filesystem: the entry still reaches the Job's log
        # and the version's tags, and promotion does not fail over its bookkeeping.
        print(f"unimedvl promote: audit log {path} not writable ({e.strerror}); entry: {line}", file=sys.stderr)
    return entry


def read_audit(params: Params) -> list[dict[str, Any]]:
    path = Path(params.promote.audit_log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tag_decision(c, name: str, version: str, entry: dict[str, Any]) -> None:
    c.set_model_version_tag(name, version, f"unimedvl.decision.{entry['time']}",
                            json.dumps({k: entry[k] for k in ("action", "passed", "environment") if k in entry}))
    c.set_model_version_tag(name, version, "unimedvl.last_decision", entry["action"] + (
        "" if entry.get("passed") is None else (":passed" if entry["passed"] else ":rejected")))


# -- the incumbent's comparable metrics ---------------------------------------------------------------


def incumbent_metrics(c, params: Params, incumbent, inputs: dict[str, Any]):
    """(metrics, note): the incumbent's metrics on the candidate's evaluation inputs, or None and why.

    Same inputs: the metrics.json `register` logged to its run. Otherwise it is re-evaluated once per
    (version, inputs) and the result cached as an artefact of its run (`eval/reeval-<inputs key>.json`)."""
    from ..evaluate.schema import EvalMetrics

    key = inputs_key(inputs)
    where = version_artifacts(incumbent.name, incumbent.version)
    with tempfile.TemporaryDirectory() as tmp:
        if incumbent.tags.get("unimedvl.eval.inputs_key") == key:
            names = [f"{where}/metrics.json"]
        else:
            names = [f"{where}/reeval-{key}.json"]
        for name in names:
            try:
                path = c.download_artifacts(incumbent.run_id, name, tmp)
                return EvalMetrics.model_validate_json(Path(path).read_text()), None
            except Exception:  # noqa: BLE001 - absent: fall through to re-evaluation
                pass
        from ..evaluate.run import evaluate

        pc = params.promote
        needed = {"data": Path(params.register.data_dir), "benchmark": Path(pc.benchmark_dir), "judge": Path(pc.judge_dir)}
        absent = [f"{k} ({v})" for k, v in needed.items() if not v.exists()]
        if absent:
            return None, (f"incumbent version {incumbent.version} was evaluated on other inputs and cannot be "
                          f"re-evaluated here: missing {', '.join(absent)}")
        folder = Path(c.download_artifacts(incumbent.run_id, "model", tmp))
        metrics = evaluate(folder, needed["data"], needed["benchmark"], needed["judge"], Path(tmp) / "reeval", params,
                           log_to_mlflow=False)
        out = Path(tmp) / f"reeval-{key}.json"
        out.write_text(metrics.model_dump_json(indent=2))
        c.log_artifact(incumbent.run_id, str(out), where)
        return metrics, None


# -- promote ------------------------------------------------------------------------------------------


def promote(params: Params, params_path: str | Path = "params.yaml", *, commit_branch: str | None = None,
            repo: Path | None = None) -> dict[str, Any]:
    """The promote step: `_promote` inside its child run of the pipeline's MLflow run."""
    from ..tracking import step_run

    with step_run("promote", params={"promote": params.promote.model_dump()}, data=params.register.data_dir,
                  tracking=params.tracking, dataset_context=None):
        return _promote(params, params_path, commit_branch=commit_branch, repo=repo)


def promote_and_push(params: Params, params_path: str | Path = "params.yaml") -> dict[str, Any]:
    """`promote` on the cluster (S3 mode), its staging-overlay change pushed to the GitOps repository
    `pipeline.gitops.repo_url` as the review branch `pipeline.gitops.branch` (off `base_branch`), by the
    same commit as `--commit-branch` (`gitops.commit_on_branch`) in a fresh clone; Argo CD syncs it once
    merged. A failing candidate pushes nothing. Credentials: env UNIMEDVL_GIT_USERNAME / UNIMEDVL_GIT_TOKEN."""
    g = params.pipeline.gitops
    if not g.repo_url:
        raise PromoteError("no GitOps repository to push to: set pipeline.gitops.repo_url (the repository Argo CD syncs)")
    if not s3_configured():
        raise PromoteError(f"pushing to {g.repo_url} needs S3 mode (the overlay pins the model's S3 copy): set "
                           "AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL) and AWS_* credentials, or pipeline.gitops.repo_url: ''")
    version_file = Path(params.register.output)
    if not version_file.exists():
        raise PromoteError(f"{version_file} is missing: run `unimedvl register` first")
    reg = json.loads(version_file.read_text())
    branch = g.branch.format(name=reg["name"], version=reg["version"])
    with tempfile.TemporaryDirectory(prefix="unimedvl-gitops-") as tmp:
        repo = gitops.clone(g.repo_url, Path(tmp) / "repo", g.base_branch)
        overlay = repo / params.promote.overlay
        if not (overlay / gitops.PATCH).exists():
            raise PromoteError(f"{g.repo_url} (branch {g.base_branch}) has no {params.promote.overlay}/{gitops.PATCH}: "
                               "point promote.overlay at the staging overlay inside that repository")
        p = params.model_copy(update={"promote": params.promote.model_copy(update={"overlay": str(overlay)})})
        decision = promote(p, params_path, commit_branch=branch, repo=repo)
        if decision.get("commit"):
            gitops.push_branch(repo, branch)
            decision.update(overlay=params.promote.overlay, pushed={"repo": g.repo_url, "branch": branch,
                                                                     "base": g.base_branch, "commit": decision["commit"]})
            _write_decision(params, decision)
    return decision


def _promote(params: Params, params_path: str | Path = "params.yaml", *, commit_branch: str | None = None,
             repo: Path | None = None) -> dict[str, Any]:
    from ..evaluate.schema import load_metrics

    pc, rc = params.promote, params.register
    if commit_branch and not s3_configured():
        raise PromoteError("--commit-branch commits the staging overlay, which only S3 mode rewrites; set "
                           "AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL) and AWS_* credentials, or drop --commit-branch")
    version_file = Path(rc.output)
    if not version_file.exists():
        raise PromoteError(f"{version_file} is missing: run `unimedvl register` first")
    reg = json.loads(version_file.read_text())
    name, version = reg["name"], str(reg["version"])
    c = client(params)
    mv = c.get_model_version(name, version)
    metrics = load_metrics(rc.eval_metrics)
    inputs = eval_inputs(metrics)
    staging = _alias(c, name, STAGING)
    incumbent = staging if staging is not None and str(staging.version) != version else None
    inc_metrics, note = (None, None)
    if incumbent is not None:
        inc_metrics, note = incumbent_metrics(c, params, incumbent, inputs)
    results = [check_gate(g, metrics, inc_metrics, note) for g in pc.gates]
    licences = training_licences(Path(rc.data_dir))
    results.append(licence_gate(pc.commercial, licence_set(licences), mv.tags.get("unimedvl.non_commercial") == "true"))
    passed = all(r.passed for r in results)
    local = not s3_configured()
    decision: dict[str, Any] = {
        "candidate": {"name": name, "version": version, "run_id": mv.run_id},
        "incumbent": None if incumbent is None else {"version": str(incumbent.version)},
        "note": "DVC cannot see registry state: after registry changes run `dvc repro -f promote`",
        "environment": pc.environment, "commercial": pc.commercial, "mode": "local" if local else "s3",
        "passed": passed, "gates": [r.to_dict() for r in results], "uploaded": False, "storage_uri": None,
        "aliases": {}, "overlay": None,
    }
    if passed:
        decision.update(_publish(c, params, name, version, mv, metrics, licences, local, decision, commit_branch, repo))
    _write_decision(params, decision)
    entry = audit(params, {"action": "promote", "name": name, "version": version, "passed": passed,
                           "environment": pc.environment, "mode": decision["mode"],
                           "incumbent": decision["incumbent"] and decision["incumbent"]["version"],
                           "staging": decision["aliases"].get(STAGING), "previous": decision.get("previous_staging"),
                           "storage_uri": decision["storage_uri"],
                           "failed_gates": [{"gate": r.gate, "value": r.value, "reason": r.reason,
                                             "checks": r.checks} for r in results if not r.passed]})
    _tag_decision(c, name, version, entry)
    return decision


def _publish(c, params: Params, name: str, version: str, mv, metrics, licences, local: bool, decision: dict,
             commit_branch: str | None, repo: Path | None) -> dict[str, Any]:
    from ..storage import S3Settings, upload_folder

    pc = params.promote
    settings = S3Settings.from_config(params.storage)
    storage_uri = settings.model_uri(name, version)
    decision = {**decision, "storage_uri": storage_uri}
    text = card.render(name, version, params, metrics, licences, mv.tags, mv.run_id, decision)
    card.write(Path(pc.model_card), text)
    template = Path(pc.overlay)
    out: dict[str, Any] = {"storage_uri": storage_uri}
    if local:
        overlay = gitops.render_local_overlay(Path(pc.local_overlay), template, name, version, pc.image, storage_uri)
        previous = _alias(c, name, STAGING)
        c.set_registered_model_alias(name, STAGING, version)
        out.update(uploaded=False, overlay=str(overlay), aliases={STAGING: version},
                   previous_staging=None if previous is None else str(previous.version))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(c.download_artifacts(mv.run_id, "model", tmp))
            (folder / "MODEL_CARD.md").write_text(text)
            uploaded = upload_folder(folder, gitops.check_storage_uri(storage_uri, settings.model_uri(name, version)),
                                     settings, progress=False)
        patch = gitops.write_patch(template, template, name, version, pc.image, storage_uri)
        c.set_registered_model_alias(name, CANDIDATE, version)
        out.update(uploaded=True, files=len(uploaded), overlay=str(template), aliases={CANDIDATE: version})
        if commit_branch:
            out["commit"] = gitops.commit_on_branch(repo or Path.cwd(), commit_branch, [patch],
                                                    f"promote {name} {version} to {pc.environment}")
            out["branch"] = commit_branch
    c.set_model_version_tag(name, version, "unimedvl.storage_uri", storage_uri)
    return out


def _write_decision(params: Params, decision: dict[str, Any]) -> None:
    path = Path(params.promote.decision)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision, indent=2, sort_keys=True, default=str) + "\n")


# -- confirm, rollback, production --------------------------------------------------------------------


def confirm(params: Params, env: str, *, name: str | None = None, version: str | None = None,
            storage_uri: str | None = None) -> dict[str, Any]:
    """Move `staging` to the candidate once the InferenceService is Ready. The Argo CD PostSync Job
    passes what it synced (UNIMEDVL_MODEL_NAME / _VERSION / _STORAGE_URI): a mismatch with the
    candidate is refused, so staging never names a version other than the one serving."""
    if env != STAGING:
        raise PromoteError(f"--confirm takes 'staging' (got {env!r}); production moves with --to production")
    name = name or params.register.model_name
    c = client(params)
    cand = _alias(c, name, CANDIDATE)
    if cand is None:
        raise PromoteError(f"no {CANDIDATE} version of {name}: promote one first")
    if version is not None and str(version) != str(cand.version):
        raise PromoteError(f"the synced InferenceService serves {name} version {version}, but {CANDIDATE} is "
                           f"version {cand.version}: not confirming")
    if storage_uri is not None and storage_uri != cand.tags.get("unimedvl.storage_uri"):
        raise PromoteError(f"the synced storageUri {storage_uri} is not the promoted copy "
                           f"{cand.tags.get('unimedvl.storage_uri')} of version {cand.version}: not confirming")
    previous = _alias(c, name, STAGING)
    c.set_registered_model_alias(name, STAGING, cand.version)
    c.delete_registered_model_alias(name, CANDIDATE)
    entry = audit(params, {"action": "confirm", "name": name, "version": str(cand.version), "environment": STAGING,
                           "staging": str(cand.version), "previous": None if previous is None else str(previous.version),
                           "storage_uri": cand.tags.get("unimedvl.storage_uri")})
    _tag_decision(c, name, str(cand.version), entry)
    return entry


def rollback(params: Params, commit_branch: str | None = None, repo: Path | None = None) -> dict[str, Any]:
    """Restore the staging version before the current one (alias and overlay)."""
    name = params.register.model_name
    c = client(params)
    current = _alias(c, name, STAGING)
    if current is None:
        raise PromoteError(f"{name} has no {STAGING} version: nothing to roll back")
    moves = [e for e in read_audit(params) if e.get("name") == name and e.get("staging") == str(current.version)
             and e.get("action") in ("promote", "confirm") and e.get("previous")]
    if not moves:
        raise PromoteError(f"the audit log ({params.promote.audit_log}) holds no staging version before "
                           f"{current.version}: nothing to roll back to")
    previous = c.get_model_version(name, moves[-1]["previous"])
    uri = previous.tags.get("unimedvl.storage_uri")
    if not uri:
        raise PromoteError(f"version {previous.version} has no unimedvl.storage_uri tag: it was never promoted")
    from ..storage import S3Settings

    gitops.check_storage_uri(uri, S3Settings.from_config(params.storage).model_uri(name, previous.version))
    pc = params.promote
    local = not s3_configured()
    if local:
        overlay = gitops.render_local_overlay(Path(pc.local_overlay), Path(pc.overlay), name, str(previous.version),
                                              pc.image, uri)
    else:
        overlay = gitops.write_patch(Path(pc.overlay), Path(pc.overlay), name, str(previous.version), pc.image, uri)
    c.set_registered_model_alias(name, STAGING, previous.version)
    entry = {"action": "rollback", "name": name, "version": str(previous.version), "environment": STAGING,
             "staging": str(previous.version), "previous": str(current.version), "storage_uri": uri,
             "overlay": str(overlay), "mode": "local" if local else "s3"}
    if commit_branch and not local:
        entry["commit"] = gitops.commit_on_branch(repo or Path.cwd(), commit_branch, [overlay],
                                                  f"roll back {name} staging to {previous.version}")
    entry = audit(params, entry)
    _tag_decision(c, name, str(previous.version), entry)
    return entry


def to_production(params: Params) -> dict[str, Any]:
    """Set `champion` to the current staging version (an explicit operator action)."""
    name = params.register.model_name
    c = client(params)
    staging = _alias(c, name, STAGING)
    if staging is None:
        raise PromoteError(f"{name} has no {STAGING} version to promote to production")
    previous = _alias(c, name, CHAMPION)
    c.set_registered_model_alias(name, CHAMPION, staging.version)
    entry = audit(params, {"action": "production", "name": name, "version": str(staging.version),
                           "environment": "production", "previous": None if previous is None else str(previous.version)})
    _tag_decision(c, name, str(staging.version), entry)
    return entry
