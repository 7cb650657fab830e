"""The progressive curriculum (DESIGN section 6): what each stage trains on, what it freezes, how fast.

A stage is a `StageSpec`. Two named curricula exist: `paper` (UniMedVL Appendix Table 12: the
learning rates, step counts, frozen modules and mixtures of the released model) and `tiny` (the
same shape, scaled so the whole pipeline trains on one CPU in minutes). `params.yaml` names one
(`train.curriculum`) and its `stage1` / `stage2` / `stage3` sections override it field by field.

Task categories. A record's `sub_task_type` decides what the model does with it:

    text_only   text_only, report_structure                 text in, text out
    t2i         t2i                                          text in, image out (generation)
    i2t         vqa_closed, vqa_open, report, caption        image in, text out (understanding)
    interleaved edit, counterfactual, super_resolution,      image(s) + text in, image out
                cross_modal, reconstruction
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

CATEGORIES = ("text_only", "t2i", "i2t", "interleaved")

SUB_TASK_CATEGORY: dict[str, str] = {
    "text_only": "text_only",
    "report_structure": "text_only",
    "t2i": "t2i",
    "vqa_closed": "i2t",
    "vqa_open": "i2t",
    "report": "i2t",
    "caption": "i2t",
    "edit": "interleaved",
    "counterfactual": "interleaved",
    "super_resolution": "interleaved",
    "cross_modal": "interleaved",
    "reconstruction": "interleaved",
}

# Module groups a stage can freeze, as parameter-name prefixes of `UniMedVL`.
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "vit": ("vit_model.",),
    "connector": ("connector.",),
    "autoencoder": ("autoencoder.",),
    "backbone": ("language_model.",),
    "generation_io": ("vae2llm.", "llm2vae.", "time_embedder."),
}

TRAIN_STAGES = ("stage1", "stage2", "stage3")
ALL_STAGES = ("tokenizer", "autoencoder", *TRAIN_STAGES)
PREVIOUS = {"autoencoder": "tokenizer", "stage1": "autoencoder", "stage2": "stage1", "stage3": "stage2"}


def category(sub_task_type: str) -> str:
    try:
        return SUB_TASK_CATEGORY[sub_task_type]
    except KeyError:
        raise ValueError(f"unknown sub_task_type {sub_task_type!r}; known: {sorted(SUB_TASK_CATEGORY)}") from None


def normalise(mixture: dict[str, float], available: set[str] | None = None) -> dict[str, float]:
    """Percentages -> probabilities summing to 1 (the paper's rows do not sum to 100).

    With `available`, categories the data set lacks are dropped first and the rest renormalised.
    """
    bad = set(mixture) - set(CATEGORIES)
    if bad:
        raise ValueError(f"unknown mixture categories {sorted(bad)}; use {', '.join(CATEGORIES)}")
    if any(v < 0 for v in mixture.values()):
        raise ValueError("mixture percentages must be non-negative")
    kept = {k: float(v) for k, v in mixture.items() if v > 0 and (available is None or k in available)}
    total = sum(kept.values())
    if total <= 0:
        have = "none" if available is None else ", ".join(sorted(available)) or "none"
        raise ValueError(f"the mixture {mixture} selects no task category the data has (data has: {have})")
    return {k: kept[k] / total for k in CATEGORIES if k in kept}


@dataclass(frozen=True)
class StageSpec:
    """Everything that differs between stages. Token budgets are per worker per step."""

    name: str
    lr: float
    steps: int
    mixture: dict[str, float]
    frozen: tuple[str, ...] = ("autoencoder",)
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    ema_schedule: str = "ramp"  # ramp: min(ema_decay, (1+n)/(10+n)) after n updates | constant
    grad_clip: float = 1.0
    max_tokens: int = 1024  # token budget of one packed sequence
    max_text_tokens: int = 128  # longer turns are truncated
    vit_resolution: int = 64
    vae_resolution: int = 64
    text_cond_dropout: float = 0.3
    vit_cond_dropout: float = 0.05
    vae_cond_dropout: float = 0.05

    def __post_init__(self) -> None:
        if self.ema_schedule not in ("ramp", "constant"):
            raise ValueError(f"{self.name}: ema_schedule must be ramp or constant, not {self.ema_schedule!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"{self.name}: schedule must be cosine or constant, not {self.schedule!r}")
        bad = set(self.frozen) - set(MODULE_GROUPS)
        if bad:
            raise ValueError(f"{self.name}: unknown frozen module groups {sorted(bad)}; use {', '.join(MODULE_GROUPS)}")
        if "autoencoder" not in self.frozen:
            raise ValueError(f"{self.name}: the autoencoder stays frozen in every training stage")
        normalise(self.mixture)

    def probabilities(self, available: set[str] | None = None) -> dict[str, float]:
        return normalise(self.mixture, available)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frozen"] = list(self.frozen)
        return d

    def override(self, **kw: Any) -> StageSpec:
        kw = {k: v for k, v in kw.items() if v is not None}
        if "frozen" in kw:
            kw["frozen"] = tuple(kw["frozen"])
        if "mixture" in kw:
            kw["mixture"] = dict(kw["mixture"])
        return replace(self, **kw)


@dataclass(frozen=True)
class Curriculum:
    name: str
    stages: dict[str, StageSpec] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> StageSpec:
        try:
            return self.stages[stage]
        except KeyError:
            raise ValueError(f"unknown training stage {stage!r}; choose one of {', '.join(self.stages)}") from None


# Paper, Appendix Table 12. Frozen: ViT trainable only in stage 1; autoencoder (FLUX VAE) always.
PAPER = Curriculum(
    "paper",
    {
        "stage1": StageSpec("stage1", lr=5e-5, steps=85_000, mixture={"text_only": 5, "t2i": 25, "i2t": 75, "interleaved": 0},
                            frozen=("autoencoder",), warmup_steps=2500, max_tokens=32_768, max_text_tokens=4096,
                            vit_resolution=980, vae_resolution=1024),
        "stage2": StageSpec("stage2", lr=2.5e-5, steps=120_000, mixture={"text_only": 5, "t2i": 45, "i2t": 40, "interleaved": 10},
                            frozen=("autoencoder", "vit"), warmup_steps=500, max_tokens=32_768, max_text_tokens=4096,
                            vit_resolution=980, vae_resolution=1024),
        "stage3": StageSpec("stage3", lr=1e-5, steps=70_000, mixture={"text_only": 3, "t2i": 35, "i2t": 37, "interleaved": 25},
                            frozen=("autoencoder", "vit"), warmup_steps=500, max_tokens=32_768, max_text_tokens=4096,
                            vit_resolution=980, vae_resolution=1024),
    },
)

# The same curriculum at CPU scale: same mixtures and frozen modules, learning rates for a tiny model
# trained for a few hundred steps, 64 px images.
TINY = Curriculum(
    "tiny",
    {
        name: replace(spec, lr=lr, steps=steps, warmup_steps=10, max_tokens=1024, max_text_tokens=96,
                      vit_resolution=64, vae_resolution=64)
        for (name, spec), (lr, steps) in zip(PAPER.stages.items(), ((2e-3, 150), (1e-3, 100), (5e-4, 100)), strict=True)
    },
)

CURRICULA: dict[str, Curriculum] = {"paper": PAPER, "tiny": TINY}


def get_curriculum(name: str) -> Curriculum:
    try:
        return CURRICULA[name]
    except KeyError:
        raise ValueError(f"unknown curriculum {name!r}; choose one of {', '.join(CURRICULA)}") from None


def trainable_names(names: list[str], frozen: tuple[str, ...]) -> set[str]:
    """Parameter names left trainable once the `frozen` groups are taken out."""
    prefixes = tuple(p for g in frozen for p in MODULE_GROUPS[g])
    return {n for n in names if not n.startswith(prefixes)}


def apply_freezing(model, frozen: tuple[str, ...]) -> list[str]:
    """Set requires_grad per the stage; fixed tables (position embeddings) stay frozen. Returns the
    names of the trainable parameters."""
    fixed = ("vit_pos_embed.", "latent_pos_embed.")
    keep = trainable_names([n for n, _ in model.named_parameters()], frozen)
    out = []
    for n, p in model.named_parameters():
        train = n in keep and not n.startswith(fixed)
        p.requires_grad_(train)
        if train:
            out.append(n)
    return out
