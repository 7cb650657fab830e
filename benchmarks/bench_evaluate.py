"""Question answering throughput of evaluation: the batched sampler (`evaluate.sampling.batch_size`
contexts per call) against one question at a time, same model, same questions, in one run.

    python benchmarks/bench_evaluate.py [--model models/stage3] [--questions 96] [--batch 16]

The questions are the phantom benchmark's finding-presence and open questions (a small benchmark is
built in a temporary folder). Without --model (or when models/stage3 does not exist) an untrained tiny
model with a tokenizer fitted to those questions is used: speed does not depend on the weights. The
answers of both runs must be identical (the script fails otherwise). The last line is
`evaluate batched/sequential speedup: X` (questions per second, batched over sequential; goal >= 4 at
batch 16).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _model(folder: Path | None, texts: list[str], tmp: Path):
    from dataclasses import replace

    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.config import PRESETS
    from unimedvl.model.tokenizer import load_tokenizer, train_tokenizer
    from unimedvl.model.unimedvl import build_model

    if folder is not None and (folder / "ema.safetensors").exists():
        model, _ = load_model(folder, "ema")
        return model.eval(), load_tokenizer(folder), str(folder)
    tok = train_tokenizer(texts, 512, tmp / "tokenizer.json")
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    cfg = cfg.replace(llm=replace(cfg.llm, vocab_size=tok.vocab_size))
    return build_model(cfg, special=tok.special).eval(), tok, "untrained tiny"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/stage3"))
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from unimedvl.config import Params
    from unimedvl.data.shards import read_table
    from unimedvl.evaluate.benchmark import build_benchmark
    from unimedvl.evaluate.sampling import context, generate_texts
    from unimedvl.train.curriculum import get_curriculum

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        params = Params()
        n = args.questions
        bench = params.evaluate.benchmark.model_copy(update={
            "finding_questions": max(6, n // 2), "open_questions": n - n // 2, "report_prompts": 0,
            "generation_per_finding": 2, "counterfactual_pairs": 0, "super_resolution_pairs": 0, "cross_modal_pairs": 0})
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"benchmark": bench})})
        build_benchmark(tmp / "bench", params)
        rows = [r for r in read_table(tmp / "bench").to_pylist() if r["sub_task_type"] in ("vqa_closed", "vqa_open")][:n]
        texts = [t["value"] for r in rows for t in r["message"]]
        model, tok, name = _model(args.model, texts, tmp)
        spec = get_curriculum("tiny")["stage3"]
        ctxs = [context(r, tok, spec, model.cfg) for r in rows]
        results = {}
        for label, batch in (("sequential", 1), ("batched", args.batch)):
            s = params.evaluate.sampling.model_copy(update={"batch_size": batch})
            generate_texts(model, ctxs[: min(4, len(ctxs))], args.max_new_tokens, s)  # warm-up
            t0 = time.perf_counter()
            answers = generate_texts(model, ctxs, args.max_new_tokens, s)
            dt = time.perf_counter() - t0
            results[label] = (answers, len(ctxs) / dt)
            print(f"{label:10} batch {batch:3d}: {len(ctxs)} questions in {dt:.2f} s = {len(ctxs) / dt:.1f} questions/s")
        same = sum(a == b for a, b in zip(results["sequential"][0], results["batched"][0], strict=True))
        print(f"model: {name}; identical answers: {same}/{len(ctxs)}")
        if same != len(ctxs):
            raise SystemExit("batched and sequential answers differ")
        print(f"evaluate batched/sequential speedup: {results['batched'][1] / results['sequential'][1]:.2f}")


if __name__ == "__main__":
    main()
