"""The ExitHandler's task (KFP only): close the pipeline's MLflow parent run, whatever happened."""

from kfp import dsl

from ._base import step


@step()
def close_run(status: dsl.PipelineTaskFinalStatus, run_id: str = ""):
    """End the MLflow parent run of this pipeline run (key: the KFP run id) as FINISHED or FAILED."""
    from unimedvl.pipeline.steps import close_run as close

    close(run_id, failed=status.state not in ("SUCCEEDED", "COMPLETE", "SKIPPED"))
