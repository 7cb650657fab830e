"""The `evaluate` step: score a model folder on the QC'd test split and the phantom benchmark.

`evaluate(...)` is the one function behind `unimedvl evaluate`, the DVC stage and the KFP component. It
writes `metrics.json` (the schema in `schema.py`), DVC plot files, an HTML report and an MLflow child
run. Families:

* understanding: closed / open VQA of the real test split (by source, modality, language) and the
  benchmark's finding-presence and open questions; blind (no image) and majority baselines; McNemar
  model vs blind;
* reports: benchmark report prompts + real test reports;
* generation: benchmark t2i prompts judged by the judge (faithfulness, against an untrained model of the
  same preset and seed, cached), domain Frechet distance per modality against the real test images,
  super-resolution (with bicubic), cross-contrast, counterfactual locality.

Bad input: a missing model / tokenizer / benchmark / judge is an `EvaluateError` naming the fix; a
test split without questions gives `insufficient_samples` metrics, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Params
from .schema import PROTOCOL_VERSION, EvalMetrics, Inputs, Metric, Sampling, save_metrics


class EvaluateError(ValueError):
    pass


class _Progress:
    """One tqdm bar per family (on stderr), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, total: int, desc: str):
        if not self.enabled:
            return None, None
        from tqdm import tqdm

        b = tqdm(total=total, desc=desc, unit="item", leave=False)
        return b, b.update


def _check_model(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise EvaluateError(f"model folder {model_dir} does not exist: train it with `unimedvl train --stage stage3`")
    missing = [f for f in ("ema.safetensors", "llm_config.json", "vit_config.json") if not (model_dir / f).exists()]
    if missing:
        raise EvaluateError(f"{model_dir} is not a model folder (missing {', '.join(missing)})")
    if not (model_dir / "tokenizer.json").exists():
        raise EvaluateError(f"{model_dir} has no tokenizer.json: answers cannot be decoded; copy the tokenizer the "
                            "model was trained with into the folder (the tokenizer stage writes models/tokenizer/tokenizer.json)")


_TABLES: dict[tuple[str, bool], Any] = {}


def _rows(data_dir: Path, split: str, tasks: tuple[str, ...], images: bool = True) -> list[dict[str, Any]]:
    """Rows of one split and task set. The data set is read once per run (several families and the
    majority baseline read it), without the image columns where `images` is False."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..data.shards import manifest_sha256, read_table

    key = (f"{Path(data_dir).resolve()}:{manifest_sha256(data_dir)}", images)
    if key not in _TABLES:
        cols = None if images else ["id", "dataset", "modality", "sub_task_type", "split", "lang", "labels", "message"]
        if len(_TABLES) > 4:
            _TABLES.clear()
        _TABLES[key] = read_table(data_dir, columns=cols)
    t = _TABLES[key]
    t = t.filter(pc.and_(pc.equal(t["split"], split), pc.is_in(t["sub_task_type"], value_set=pa.array(list(tasks)))))
    return t.to_pylist()


def _labels(row: dict[str, Any]) -> dict[str, Any]:
    raw = row.get("labels")
    return json.loads(raw) if isinstance(raw, str) and raw else (raw or {})


def _turns(row: dict[str, Any]) -> tuple[str, str]:
    human = "\n".join(t["value"] for t in row["message"] if t["from"] == "human")
    answer = "\n".join(t["value"] for t in row["message"] if t["from"] == "gpt")
    return human, answer


def _qtype(row: dict[str, Any]) -> str:
    """Question type for the majority baseline: the phantom task's question (and finding), else the task."""
    task = _labels(row).get("task") or {}
    if task.get("question"):
        return f"{task['question']}:{task.get('finding') or ''}"
    return f"{row['dataset']}:{row['sub_task_type']}"


def _subsample(rows: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    if len(rows) <= limit:
        return rows
    idx = np.random.default_rng(seed).permutation(len(rows))[:limit]
    return [rows[int(i)] for i in sorted(idx)]


def _grey01(img: torch.Tensor) -> np.ndarray:
    return ((img.float().mean(0) + 1) / 2).clamp(0, 1).numpy()


def _png_grey01(data: bytes, size: int | None = None) -> np.ndarray:
    from ..train.data import decode_png

    arr = decode_png(data).mean(axis=2)
    if size is not None and arr.shape != (size, size):
        import torch.nn.functional as F

        t = F.interpolate(torch.from_numpy(arr)[None, None], size=(size, size), mode="bilinear", antialias=True)
        arr = t[0, 0].numpy()
    return arr.astype(np.float64)


class Evaluation:
    """State shared by the families of one run (model, tokenizer, settings, results, examples)."""

    def __init__(self, model_dir: Path, data_dir: Path, bench_dir: Path, judge_dir: Path, params: Params,
                 progress: bool):
        from ..model.checkpoint import load_model
        from ..model.tokenizer import load_tokenizer
        from ..train.stages import stage_spec
        from .benchmark import BenchmarkError, check_benchmark
        from .judge import JudgeError, load_judge

        _check_model(model_dir)
        if not (data_dir / "manifest.json").exists():
            raise EvaluateError(f"{data_dir} holds no data set (no manifest.json): run `unimedvl qc` first")
        try:
            self.bench_manifest = check_benchmark(bench_dir)
            self.judge = load_judge(judge_dir)
        except (BenchmarkError, JudgeError) as e:
            raise EvaluateError(str(e)) from None
        self.params = params
        self.cfg = self.params.evaluate
        self.model_dir, self.data_dir, self.bench_dir, self.judge_dir = model_dir, data_dir, bench_dir, judge_dir
        self.model, report = load_model(model_dir, "ema")
        self.model.eval()
        self.tok = load_tokenizer(model_dir)
        self.spec = stage_spec(self.params, "stage3")
        self.lineage = report.lineage or {}
        self.metrics: dict[str, Metric] = {}
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.plots: dict[str, list[dict[str, Any]]] = {}
        self.images: dict[str, Any] = {}
        self.progress = _Progress(progress)
        self.min_n, self.n_boot, self.seed = self.cfg.min_n, self.cfg.bootstrap, self.cfg.seed
        self.calls = 0  # answers and images the model produced in this run
        self.finding_correct: dict[str, bool] | None = None  # finding question id -> answered right

    # -- helpers -------------------------------------------------------------------------------------

    def ctx(self, row: dict[str, Any]):
        from .sampling import context

        return context(row, self.tok, self.spec, self.model.cfg)

    def answers(self, contexts: list, max_new_tokens: int, desc: str) -> list[str]:
        return self._generate(contexts, max_new_tokens, desc, first_logits=False)[0]

    def yes_no_answers(self, contexts: list, max_new_tokens: int, desc: str) -> tuple[list[str], list[float]]:
        """Answers, and each answer's first-token logit("Yes") - logit("No"): how far the context moves
        the yes/no decision, whichever way the greedy answer falls."""
        texts, firsts = self._generate(contexts, max_new_tokens, desc, first_logits=True)
        yes, no = self.tok.encode("Yes.")[0], self.tok.encode("No.")[0]
        return texts, [float(lg[yes] - lg[no]) for lg in firsts]

    def _generate(self, contexts: list, max_new_tokens: int, desc: str, first_logits: bool) -> tuple[list[str], list]:
        from .sampling import decode, generate_texts

        self.calls += len(contexts)
        bar, tick = self.progress.bar(len(contexts), desc)
        got = generate_texts(self.model, contexts, max_new_tokens, self.cfg.sampling, tick, first_logits=first_logits)
        ids, firsts = got if first_logits else (got, [])
        if bar is not None:
            bar.close()
        return [decode(self.tok, i) for i in ids], firsts

    def images_for(self, model, contexts: list, seeds: list[int], desc: str) -> torch.Tensor:
        from .sampling import generate_images

        self.calls += len(contexts)
        bar, tick = self.progress.bar(len(contexts), desc)
        out = generate_images(model, contexts, seeds, self.cfg.sampling, tick)
        if bar is not None:
            bar.close()
        return out

    def put(self, key: str, m: Metric) -> None:
        self.metrics[key] = m

    def mean(self, key: str, values, what: str = "items") -> None:
        from .stats import metric

        self.put(key, metric(values, self.min_n, self.n_boot, self.seed, what))


def _tracking_run(params: Params, data_dir: Path, enabled: bool | None):
    """The step's MLflow child run (one place, so the tracking module is called once)."""
    from ..tracking import step_run

    return step_run("evaluate", params={"evaluate": params.evaluate.model_dump()}, data=data_dir,
                    tracking=params.tracking, enabled=enabled, dataset_context="test")


def evaluate(model_dir: str | Path, data_dir: str | Path, bench_dir: str | Path, judge_dir: str | Path,
             output: str | Path, params: Params, *, progress: bool = False, log_to_mlflow: bool | None = None,
             untrained_cache: str | Path | None = None) -> EvalMetrics:
    """Score `model_dir`; writes `<output>/metrics.json`, `<output>/plots/`, `<output>/report/index.html`."""
    from . import families, imaging
    from .judge import judge_sha256

    t0 = time.perf_counter()
    model_dir, data_dir, bench_dir, judge_dir, output = map(Path, (model_dir, data_dir, bench_dir, judge_dir, output))
    ev = Evaluation(model_dir, data_dir, bench_dir, judge_dir, params, progress)
    torch.manual_seed(ev.cfg.sampling.seed)
    families.understanding(ev)
    families.reports(ev)
    imaging.generation(ev, Path(untrained_cache) if untrained_cache else Path("build/eval-cache"))
    imaging.image_pairs(ev)
    imaging.pointing_game(ev)
    ev.put("eval.items", Metric.ok(ev.calls, ev.calls))
    from ..data.shards import manifest_sha256

    s = ev.cfg.sampling
    inputs = Inputs(
        test_manifest_sha256=manifest_sha256(data_dir), benchmark_manifest_sha256=manifest_sha256(bench_dir),
        judge_sha256=judge_sha256(judge_dir), protocol_version=PROTOCOL_VERSION,
        sampling=Sampling(steps=s.steps, cfg_text_scale=s.cfg_text_scale, cfg_img_scale=s.cfg_img_scale,
                          timestep_shift=s.timestep_shift, max_new_tokens=s.max_new_tokens,
                          temperature=s.temperature, batch_size=s.batch_size, seed=s.seed),
        model_lineage=ev.lineage, model_dir=str(model_dir), untrained_cache_key=ev.images.get("untrained_key"))
    result = EvalMetrics(metrics=dict(sorted(ev.metrics.items())), inputs=inputs)
    output.mkdir(parents=True, exist_ok=True)
    save_metrics(result, output / "metrics.json")
    from .plots import write_plots
    from .html import write_report

    write_plots(ev, output / "plots")
    report = write_report(ev, result, output / "report", wall_s=time.perf_counter() - t0)
    with _tracking_run(ev.params, data_dir, log_to_mlflow) as run:
        run.log_metrics({k: m.value for k, m in result.metrics.items() if m.value is not None})
        run.set_tags({"unimedvl.eval.protocol_version": PROTOCOL_VERSION, "unimedvl.eval.model_dir": str(model_dir)})
        run.log_artifact(output / "metrics.json")
        run.log_artifact(report.parent, "report")
    return result


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
