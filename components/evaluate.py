"""benchmark, judge, evaluate: the Analysis steps (DESIGN section 2)."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ._base import step


@step()
def benchmark(dataset: Output[Dataset], evaluate_benchmark_seed: int, train_profile: str, params_override: str = "",
              run_id: str = ""):
    """The phantom evaluation set with exact ground truth, from its own seed."""
    from unimedvl.pipeline.steps_eval import benchmark_step

    benchmark_step(dataset, dict(evaluate_benchmark_seed=evaluate_benchmark_seed, train_profile=train_profile),
                   params_override, run_id)


@step()
def judge(data: Input[Dataset], model: Output[Model], metrics: Output[Metrics], evaluate_judge_seed: int,
          evaluate_judge_epochs: int, train_profile: str, params_override: str = "", run_id: str = ""):
    """The generation judge (finding classifier) on phantoms of its own seed and QC'd real train images."""
    from unimedvl.pipeline.steps_eval import judge_step

    judge_step(data, model, metrics, dict(evaluate_judge_seed=evaluate_judge_seed, evaluate_judge_epochs=evaluate_judge_epochs,
                                          train_profile=train_profile), params_override, run_id)


@step()
def evaluate(model: Input[Model], data: Input[Dataset], benchmark: Input[Dataset], judge: Input[Model],
             results: Output[Artifact], metrics: Output[Metrics], report: Output[HTML],
             confusion: Output[ClassificationMetrics], evaluate_seed: int, evaluate_min_n: int, train_profile: str,
             params_override: str = "", run_id: str = ""):
    """Score stage3: VQA, reports, generation; metrics.json (the promote contract), HTML report, confusion matrix."""
    from unimedvl.pipeline.steps_eval import evaluate_step

    evaluate_step(model, data, benchmark, judge, results, metrics, report, confusion,
                  dict(evaluate_seed=evaluate_seed, evaluate_min_n=evaluate_min_n, train_profile=train_profile),
                  params_override, run_id)
