"""ingest and qc: the Observation steps."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from ._base import step


@step()
def ingest(dataset: Output[Dataset], metrics: Output[Metrics], ingest_phantom_count: int, ingest_phantom_seed: int,
           ingest_max_side: int, pipeline_data_repo: str, data_version: str = "", params_override: str = "",
           run_id: str = ""):
    """Raw sources -> de-identified Parquet shards + manifest (or `data/ingest` at git rev `data_version`)."""
    from unimedvl.pipeline.steps import ingest_step

    ingest_step(dataset, metrics, dict(ingest_phantom_count=ingest_phantom_count, ingest_phantom_seed=ingest_phantom_seed,
                                       ingest_max_side=ingest_max_side),
                params_override, data_version, pipeline_data_repo, run_id)


@step()
def qc(ingested: Input[Dataset], dataset: Output[Dataset], report: Output[HTML], metrics: Output[Metrics],
       qc_min_side: int, qc_near_dup_hamming: int, qc_text_leak_jaccard: float, pipeline_data_repo: str,
       data_version: str = "", params_override: str = "", run_id: str = ""):
    """Quality control: accepted shards, quarantine with reasons, the HTML report (or all at `data_version`)."""
    from unimedvl.pipeline.steps import qc_step

    qc_step(ingested.path, dataset, report, metrics,
            dict(qc_min_side=qc_min_side, qc_near_dup_hamming=qc_near_dup_hamming, qc_text_leak_jaccard=qc_text_leak_jaccard),
            params_override, data_version, pipeline_data_repo, run_id)


@step()
def heldout(data: Input[Dataset], dataset: Output[Dataset], metrics: Output[Metrics], heldout_per_family: int,
            heldout_seed: int, train_profile: str, params_override: str = "", run_id: str = ""):
    """The fixed held-out set of this data version: every training stage measures its start and end on it."""
    from unimedvl.pipeline.steps import heldout_step

    heldout_step(data, dataset, metrics, dict(heldout_per_family=heldout_per_family, heldout_seed=heldout_seed,
                                              train_profile=train_profile), params_override, run_id)
