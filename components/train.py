"""tokenizer, autoencoder, stage1-3: the Knowledge steps, and the synergy-ablation branch.

stage1-3 train in the step's own process (`pipeline_train_executor: local`, as kfp.local and
`dvc repro` do) or create a KubeRay RayJob on GPU nodes and return its checkpoint on S3 (`rayjob`).
"""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from ._base import GPU_IMAGE, step


@step()
def tokenizer(data: Input[Dataset], model: Output[Model], metrics: Output[Metrics], tokenizer_vocab_size: int,
              train_profile: str, params_override: str = "", run_id: str = ""):
    """Byte-level BPE on the training split's text."""
    from unimedvl.pipeline.steps import train_step

    train_step("tokenizer", data, None, model, metrics,
               dict(tokenizer_vocab_size=tokenizer_vocab_size, train_profile=train_profile), params_override, run_id)


@step(image=GPU_IMAGE)
def autoencoder(data: Input[Dataset], previous: Input[Model], model: Output[Model], metrics: Output[Metrics],
                autoencoder_steps: int, autoencoder_lr: float, train_profile: str, params_override: str = "",
                run_id: str = ""):
    """Fit the generation autoencoder (frozen afterwards) and build the full model around it."""
    from unimedvl.pipeline.steps import train_step

    train_step("autoencoder", data, previous, model, metrics,
               dict(autoencoder_steps=autoencoder_steps, autoencoder_lr=autoencoder_lr, train_profile=train_profile),
               params_override, run_id)


@step(image=GPU_IMAGE)
def stage1(data: Input[Dataset], heldout: Input[Dataset], previous: Input[Model], model: Output[Model],
           metrics: Output[Metrics],
           stage1_steps: int, stage1_lr: float, train_profile: str, pipeline_train_executor: str,
           pipeline_gpus_stage1: int, pipeline_gpu_image: str, pipeline_image_tag: str, params_override: str = "",
           run_id: str = ""):
    """Curriculum stage 1: foundation training (Ray Train)."""
    from unimedvl.pipeline.steps import train_step

    train_step("stage1", data, previous, model, metrics,
               dict(stage1_steps=stage1_steps, stage1_lr=stage1_lr, train_profile=train_profile,
                    pipeline_gpus_stage1=pipeline_gpus_stage1),
               params_override, run_id, heldout=heldout, executor=pipeline_train_executor, image=f"{pipeline_gpu_image}:{pipeline_image_tag}")


@step(image=GPU_IMAGE)
def stage2(data: Input[Dataset], heldout: Input[Dataset], previous: Input[Model], model: Output[Model],
           metrics: Output[Metrics],
           stage2_steps: int, stage2_lr: float, train_profile: str, pipeline_train_executor: str,
           pipeline_gpus_stage2: int, pipeline_gpu_image: str, pipeline_image_tag: str, params_override: str = "",
           run_id: str = ""):
    """Curriculum stage 2: instruction tuning (Ray Train)."""
    from unimedvl.pipeline.steps import train_step

    train_step("stage2", data, previous, model, metrics,
               dict(stage2_steps=stage2_steps, stage2_lr=stage2_lr, train_profile=train_profile,
                    pipeline_gpus_stage2=pipeline_gpus_stage2),
               params_override, run_id, heldout=heldout, executor=pipeline_train_executor, image=f"{pipeline_gpu_image}:{pipeline_image_tag}")


@step(image=GPU_IMAGE)
def stage3(data: Input[Dataset], heldout: Input[Dataset], previous: Input[Model], model: Output[Model],
           metrics: Output[Metrics],
           stage3_steps: int, stage3_lr: float, train_profile: str, pipeline_train_executor: str,
           pipeline_gpus_stage3: int, pipeline_gpu_image: str, pipeline_image_tag: str, params_override: str = "",
           run_id: str = ""):
    """Curriculum stage 3: unified multimodal training (Ray Train)."""
    from unimedvl.pipeline.steps import train_step

    train_step("stage3", data, previous, model, metrics,
               dict(stage3_steps=stage3_steps, stage3_lr=stage3_lr, train_profile=train_profile,
                    pipeline_gpus_stage3=pipeline_gpus_stage3),
               params_override, run_id, heldout=heldout, executor=pipeline_train_executor, image=f"{pipeline_gpu_image}:{pipeline_image_tag}")


@step(image=GPU_IMAGE)
def ablation(data: Input[Dataset], benchmark: Input[Dataset], judge: Input[Model], autoencoder: Input[Model],
             table: Output[Markdown], metrics: Output[Metrics], train_profile: str, params_override: str = "",
             run_id: str = ""):
    """Synergy ablation (KFP only): unified vs generation-only vs understanding-only training from the
    autoencoder, same budget, each evaluated (`unimedvl evaluate --ablation`); the deltas as a table."""
    from unimedvl.pipeline.steps_eval import ablation_step

    ablation_step(data, benchmark, judge, autoencoder, table, metrics, dict(train_profile=train_profile),
                  params_override, run_id)
