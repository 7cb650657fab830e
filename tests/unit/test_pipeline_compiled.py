"""The compiled pipeline: fresh, the dvc.yaml graph exactly, params.yaml defaults, cluster settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPILED = REPO / "pipelines" / "compiled"
# The only tasks the KFP pipeline has that dvc.yaml does not (DESIGN section 2).
KFP_ONLY = {"ablation": "the dsl.If(run_ablation) synergy-ablation branch", "close-run": "the ExitHandler's task"}


def load_ir() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((COMPILED / "unimedvl.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def dvc_graph() -> dict[str, set[str]]:
    """stage -> the stages whose outputs it depends on, read from dvc.yaml."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = {}
    for name, st in stages.items():
        for o in st.get("outs", []) + st.get("metrics", []) + st.get("plots", []):  # all three are outputs to DVC
            outs[next(iter(o)) if isinstance(o, dict) else o] = name
    graph = {}
    for name, st in stages.items():
        deps = set()
        for d in st.get("deps", []):
            for out, owner in outs.items():
                if owner != name and (d == out or d.startswith(out.rstrip("/") + "/")):
                    deps.add(owner)
        graph[name] = deps
    return graph


def walk(ir: dict) -> tuple[dict[str, set[str]], dict[str, str]]:
    """task -> its upstream tasks (groups resolved to the tasks feeding them), and task -> enclosing group."""
    comps = ir["components"]
    graph: dict[str, set[str]] = {}
    group_of: dict[str, str] = {}

    def visit(dag: dict, group: str) -> None:
        for name, task in dag["tasks"].items():
            ref = task["componentRef"]["name"]
            deps = set(task.get("dependentTasks", []))
            if "dag" in comps[ref]:
                visit(comps[ref]["dag"], name)
                for inner, g in list(group_of.items()):
                    if g == name:
                        graph[inner] |= deps
                continue
            graph[name] = deps
            group_of[name] = group

    visit(ir["root"]["dag"], "root")
    return graph, group_of


def test_compiled_yaml_is_fresh(tmp_path):
    from unimedvl.pipeline.compile import compile_all

    written = compile_all(tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in COMPILED.iterdir() if p.suffix == ".yaml"), "run `unimedvl pipeline compile`"
    for p in written:
        assert p.read_text() == (COMPILED / p.name).read_text(), f"{p.name} is stale: run `unimedvl pipeline compile`"


def test_task_graph_equals_dvc_graph_both_ways():
    ir, _ = load_ir()
    graph, group_of = walk(ir)
    conditional = {t for t, g in group_of.items() if g.startswith("condition")}
    exit_tasks = {t for t, g in group_of.items() if g == "root"}
    assert conditional == {"ablation"} and exit_tasks == {"close-run"}
    assert set(KFP_ONLY) == conditional | exit_tasks
    kfp = {t: deps & set(graph) - set(KFP_ONLY) for t, deps in graph.items() if t not in KFP_ONLY}
    want = dvc_graph()
    assert set(kfp) == set(want), f"steps only in KFP: {set(kfp) - set(want)}, only in dvc.yaml: {set(want) - set(kfp)}"
    for step in want:
        assert kfp[step] == want[step], f"{step}: KFP edges {sorted(kfp[step])} vs dvc.yaml {sorted(want[step])}"
    # The ablation's variants start from the autoencoder and are scored like evaluate; the exit handler
    # runs after everything.
    assert graph["ablation"] == {"autoencoder", "qc", "benchmark", "judge"}
    assert "exit-handler-1" in ir["root"]["dag"]["tasks"]["close-run"]["dependentTasks"]


def test_component_defaults_equal_params_yaml():
    """Every component (and pipeline) parameter named after a params.yaml key defaults to its value there,
    read here straight from the YAML file."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and k != "mixture":
                yield from flat(v, f"{prefix}{k}_")
            else:
                yield f"{prefix}{k}", v

    want = dict(flat({k: v for k, v in raw.items() if k != "profiles"}))
    ir, _ = load_ir()
    checked = 0
    specs = [c["inputDefinitions"] for c in ir["components"].values() if "inputDefinitions" in c]
    specs.append(ir["root"]["inputDefinitions"])
    for spec in specs:
        for name, p in spec.get("parameters", {}).items():
            if name in want:
                assert p.get("defaultValue") == want[name], (name, p.get("defaultValue"), want[name])
                checked += 1
    assert checked >= 40


def test_pipeline_interface_for_the_ui():
    ir, platform = load_ir()
    assert ir["pipelineInfo"]["displayName"] and ir["pipelineInfo"]["description"]
    assert ir["defaultPipelineRoot"].startswith("s3://")
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert 12 <= len(params) <= 20 and "params_override" in params and "data_version" in params
    assert all(p.get("description") for p in params.values()), [n for n, p in params.items() if not p.get("description")]
    text = (COMPILED / "unimedvl.yaml").read_text()
    assert "pip install" not in text and "install_kfp" not in text
    execs = ir["deploymentSpec"]["executors"]
    assert execs["exec-autoencoder"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-autoencoder"]["nodeSelector"]["labels"] and k8s["exec-autoencoder"]["tolerations"]
    assert k8s["exec-ingest"]["secretAsEnv"][1]["secretName"] == "unimedvl-deid-key"
    # promote's push to the GitOps repository: its URL and branch in the form, the token from a Secret.
    assert {"pipeline_gitops_repo_url", "pipeline_gitops_branch"} <= set(params)
    gitops = [s for s in k8s["exec-promote"]["secretAsEnv"] if s["secretName"] == "unimedvl-gitops"]
    assert gitops and {m["secretKey"] for m in gitops[0]["keyToEnv"]} == {"UNIMEDVL_GIT_USERNAME", "UNIMEDVL_GIT_TOKEN"}
    assert "UNIMEDVL_GIT_TOKEN" not in str(ir["deploymentSpec"]["executors"]["exec-promote"])  # only the Secret's reference
    tasks = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert all(t["retryPolicy"]["maxRetryCount"] >= 1 for t in tasks.values() if "componentRef" in t and "condition" not in t["componentRef"]["name"])
    assert ir["root"]["dag"]["tasks"]["close-run"]["cachingOptions"] == {}
    # Registry state lives outside the artefacts: register and promote always run; the rest may cache.
    assert {n for n, t in tasks.items() if t.get("cachingOptions") == {}} == {"register", "promote"}
    assert ir["components"]["comp-promote"]["outputDefinitions"]["artifacts"]["card"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert ir["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]["confusion"]["artifactType"]["schemaTitle"] \
        == "system.ClassificationMetrics"
    outs = ir["components"]["comp-qc"]["outputDefinitions"]["artifacts"]
    assert outs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert ir["components"]["comp-stage3"]["outputDefinitions"]["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"


def test_params_override_is_validated_by_the_typed_config():
    from unimedvl.config import ParamsError
    from unimedvl.pipeline.params import resolve

    from unimedvl.config import load_params

    demo_steps = load_params(REPO / "params.yaml").stage1.steps
    p = resolve({"train_profile": "smoke", "stage1_steps": demo_steps, "stage2_steps": 7}, "qc: {min_side: 48}")
    from unimedvl.pipeline.params import effective

    e = effective(p)
    # stage1_steps at its params.yaml value keeps the profile's; a changed one wins; the override last.
    assert (e.stage1.steps, e.stage2.steps, e.qc.min_side, e.train.profile) == (30, 7, 48, "smoke")
    for bad, msg in (("qc: {min_side: -3}", "qc.min_side"), ("nosuch: {}", "unknown sections"), ("[1, 2]", "mapping"),
                     ("a: [", "not valid YAML")):
        with pytest.raises(ParamsError, match=msg):
            resolve({}, bad)
    with pytest.raises(ParamsError, match="stage1.lr"):
        resolve({"stage1_lr": 0.0})
    with pytest.raises(ParamsError, match="unknown profile"):
        resolve({"train_profile": "nosuch"})


def test_argo_variant_validates_against_the_workflow_crds_and_mirrors_dvc():
    from unimedvl import manifests

    wt_docs = manifests.load_docs(COMPILED / "argo-workflowtemplate.yaml")
    cron_docs = manifests.load_docs(COMPILED / "argo-cronworkflow.yaml")
    assert manifests.validate_all(wt_docs + cron_docs) == []
    wt, cron = wt_docs[0], cron_docs[0]
    assert (wt["kind"], cron["kind"]) == ("WorkflowTemplate", "CronWorkflow")
    assert cron["spec"]["workflowSpec"]["workflowTemplateRef"]["name"] == wt["metadata"]["name"]
    assert cron["spec"]["schedules"] == [yaml.safe_load((REPO / "params.yaml").read_text())["pipeline"]["schedule"]]
    dag = next(t for t in wt["spec"]["templates"] if t["name"] == "pipeline")["dag"]["tasks"]
    graph = {t["name"]: set(t.get("depends", "").replace("&&", " ").split()) for t in dag}
    assert graph == dvc_graph()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    by_name = {t["name"]: t for t in wt["spec"]["templates"]}
    for name, st in stages.items():
        assert by_name[name]["container"]["args"] == [st["cmd"]], name
    gpu = by_name["stage1"]["container"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and by_name["stage1"]["tolerations"]
    # A wrong field is caught: the validation is live.
    wt["spec"]["templates"][0]["retryStrategy"]["limit"] = {"bad": 1}
    assert manifests.validate(wt)


def test_run_local_refuses_a_bad_override_before_running(tmp_path):
    from typer.testing import CliRunner

    from unimedvl.cli import app

    bad = tmp_path / "o.yaml"
    bad.write_text("stage1: {lr: -1}\n")
    res = CliRunner().invoke(app, ["pipeline", "run-local", "--params-override", str(bad), "--root", str(tmp_path / "r")])
    assert res.exit_code == 1 and "stage1.lr" in res.output and not (tmp_path / "r").exists()
    res = CliRunner().invoke(app, ["pipeline", "--help"])
    assert res.exit_code == 0 and all(v in res.output for v in ("compile", "run-local", "submit", "sync"))


def test_ablation_branch_is_wired_to_its_parameter_and_inputs():
    """The synergy ablation runs only when the form's run_ablation is true (off by default), on the QC'd
    data, the benchmark, the judge and the autoencoder the main line uses, in the GPU image; its table is
    a Markdown artefact on the node and its deltas a Metrics artefact."""
    ir, _ = load_ir()
    root = ir["root"]["inputDefinitions"]["parameters"]["run_ablation"]
    assert root["parameterType"] == "BOOLEAN" and root["defaultValue"] is False
    tasks = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    cond = next(t for t in tasks.values() if t.get("taskInfo", {}).get("name") == "synergy-ablation")
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--run_ablation'] == true"
    assert cond["inputs"]["parameters"]["pipelinechannel--run_ablation"]["componentInputParameter"] == "pipelinechannel--run_ablation"
    inner = ir["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["ablation"]
    feeds = {name: cond["inputs"]["artifacts"][a["componentInputArtifact"]]["taskOutputArtifact"]
             for name, a in inner["ablation"]["inputs"]["artifacts"].items()}
    assert {n: (f["producerTask"], f["outputArtifactKey"]) for n, f in feeds.items()} == {
        "data": ("qc", "dataset"), "benchmark": ("benchmark", "dataset"), "judge": ("judge", "model"),
        "autoencoder": ("autoencoder", "model")}
    params = inner["ablation"]["inputs"]["parameters"]
    assert params["train_profile"]["componentInputParameter"] == "pipelinechannel--train_profile"
    assert params["params_override"]["componentInputParameter"] == "pipelinechannel--params_override"
    assert params["base_image"]["runtimeValue"]["constant"].startswith("ghcr.io/unimedvl/unimedvl-gpu:")
    outs = ir["components"]["comp-ablation"]["outputDefinitions"]["artifacts"]
    assert (outs["table"]["artifactType"]["schemaTitle"], outs["metrics"]["artifactType"]["schemaTitle"]) == \
        ("system.Markdown", "system.Metrics")
