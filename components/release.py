"""register and promote: the model to the registry, and through the gates to staging (caching off in
the pipeline: registry state is outside the artefacts)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from ._base import step


@step()
def register(model: Input[Model], results: Input[Artifact], data: Input[Dataset], version: Output[Artifact],
             register_model_name: str, train_profile: str, params_override: str = "", run_id: str = ""):
    """An MLflow model version (pyfunc over stage3's logged folder) with lineage tags."""
    from unimedvl.pipeline.steps_release import register_step

    register_step(model, results, data, version, dict(register_model_name=register_model_name, train_profile=train_profile),
                  params_override, run_id)


@step()
def promote(version: Input[Artifact], results: Input[Artifact], data: Input[Dataset], benchmark: Input[Dataset],
            judge: Input[Model], decision: Output[Artifact], card: Output[Markdown], metrics: Output[Metrics],
            promote_environment: str, promote_commercial: bool, pipeline_gitops_repo_url: str,
            pipeline_gitops_base_branch: str, pipeline_gitops_branch: str, train_profile: str, params_override: str = "",
            run_id: str = ""):
    """Gates on metrics.json (promote.gates, licences), then the alias, the overlay, the audit log, the model card;
    with a GitOps repository (S3 mode) the overlay change is pushed there as a review branch."""
    from unimedvl.pipeline.steps_release import promote_step

    promote_step(version, results, data, benchmark, judge, decision, card, metrics,
                 dict(promote_environment=promote_environment, promote_commercial=promote_commercial,
                      pipeline_gitops_repo_url=pipeline_gitops_repo_url, pipeline_gitops_base_branch=pipeline_gitops_base_branch,
                      pipeline_gitops_branch=pipeline_gitops_branch, train_profile=train_profile), params_override, run_id)
