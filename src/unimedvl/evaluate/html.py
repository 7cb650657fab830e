"""The evaluation's HTML report: metric tables with intervals, confusion matrices, per-group bars,
faithfulness bars, the generated-image grid with prompts and judge verdicts, and the worst examples.

Figures are matplotlib PNGs beside `index.html`; the page is a Jinja2 template (both already in the
environment). The report holds question text and benchmark images, so it stays in the run's output
folder and its MLflow run, never in logs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .schema import FINDINGS, EvalMetrics

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>UniMedVL evaluation</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}
.ok{color:#060}.bad{color:#a00}img{max-width:100%}.muted{color:#777}</style></head><body>
<h1>UniMedVL evaluation</h1>
<p>Model <code>{{ inputs.model_dir }}</code>, protocol version {{ inputs.protocol_version }},
sampling {{ inputs.sampling.steps }} steps, text CFG {{ inputs.sampling.cfg_text_scale }}; {{ wall }} s.
Test manifest <code>{{ (inputs.test_manifest_sha256 or '')[:12] }}</code>, benchmark
<code>{{ (inputs.benchmark_manifest_sha256 or '')[:12] }}</code>, judge <code>{{ (inputs.judge_sha256 or '')[:12] }}</code>.</p>
{% if headline %}<h2>Headline</h2><ul>{% for h in headline %}<li>{{ h }}</li>{% endfor %}</ul>{% endif %}
{% for section, rows in sections %}
<h2>{{ section }}</h2><table><tr><th>metric</th><th>value</th><th>95% interval</th><th>n</th><th>status</th></tr>
{% for key, m in rows %}<tr><td><code>{{ key }}</code></td>
<td>{{ '%.4g'|format(m.value) if m.value is not none else '' }}</td>
<td>{% if m.ci_low is not none %}[{{ '%.4g'|format(m.ci_low) }}, {{ '%.4g'|format(m.ci_high) }}]{% endif %}</td>
<td>{{ m.n }}</td><td class="{{ 'ok' if m.status.value == 'ok' else 'bad' }}">{{ m.status.value }}
{% if m.reason %}<span class="muted">({{ m.reason }})</span>{% endif %}</td></tr>{% endfor %}</table>
{% endfor %}
{% for fig, title in figures %}<h2>{{ title }}</h2><img src="{{ fig }}" alt="{{ title }}">{% endfor %}
{% for family, rows in worst %}<h2>Worst examples: {{ family }}</h2>
<table><tr><th>id</th><th>source</th><th>question</th><th>reference</th><th>prediction</th><th>score</th></tr>
{% for e in rows %}<tr><td>{{ e.id[:12] }}</td><td>{{ e.source }}</td><td>{{ e.question[:160] }}</td>
<td>{{ e.reference[:200] }}</td><td>{{ e.prediction[:200] }}</td><td>{{ '%.3g'|format(e.score) }}</td></tr>{% endfor %}
</table>{% endfor %}
</body></html>
"""


def _sections(result: EvalMetrics):
    groups: dict[str, list] = {}
    for key, m in result.metrics.items():
        head = key.split(".")[0]
        sub = key.split(".")[1] if head == "vqa" else ""
        name = {"vqa": "Understanding", "report": "Reports", "generation": "Generation", "sr": "Super-resolution",
                "cross_modal": "Cross-contrast synthesis", "counterfactual": "Counterfactuals",
                "explain": "Explanations", "eval": "Run"}.get(head, head)
        if sub:
            name += f" ({sub})"
        groups.setdefault(name, []).append((key, m))
    return list(groups.items())


def _bars(rows: list[dict], out: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.28 * len(rows))))
    labels = [f"{r['family']} / {r['by']} / {r['group']} (n={r['n']})" for r in rows]
    ax.barh(range(len(rows)), [r["value"] for r in rows], color="#4a7bb7")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy / exact match")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _faith(rows: list[dict], out: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["model"] for r in rows], 0.4, label="model")
    ax.bar(x + 0.2, [r["untrained"] for r in rows], 0.4, label="untrained")
    ax.set_xticks(x, [r["finding"] for r in rows])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("P(found|asked) - P(found|not asked)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _confusion(rows: list[dict], out: Path, title: str) -> Path | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = ["yes", "no", "other"]
    m = np.zeros((3, 3), dtype=int)
    for r in rows:
        m[cats.index(r["actual"]), cats.index(r["predicted"])] += r["count"]
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(m, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(m[i, j]), ha="center", va="center")
    ax.set_xticks(range(3), cats)
    ax.set_yticks(range(3), cats)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _grid(items, out: Path) -> Path | None:
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.6))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (img, prompt, finding, asks, found) in zip(np.atleast_1d(axes).ravel(), items, strict=False):
        ax.imshow(((img.float().mean(0) + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        hit = finding in found
        ax.set_title(f"{'asks' if asks else 'no'} {finding}\njudge: {', '.join(found) or 'nothing'}", fontsize=7,
                     color="green" if hit == asks else "red")
        ax.text(0, 1.0, prompt[:60], fontsize=5, transform=ax.transAxes, va="bottom")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def write_report(ev, result: EvalMetrics, out: Path, wall_s: float) -> Path:
    from jinja2 import Environment, select_autoescape

    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for path, title in (
        (_bars(ev.plots.get("by_group", []), out / "by_group.png"), "Accuracy per source, modality and finding"),
        (_faith(ev.plots.get("faithfulness", []), out / "faithfulness.png"), "Faithfulness per finding"),
        (_confusion(ev.plots.get("confusion", []), out / "confusion_closed.png", "closed VQA (test split)"), "Closed VQA confusion matrix"),
        (_confusion(ev.plots.get("confusion_finding", []), out / "confusion_finding.png", "finding questions"), "Finding questions confusion matrix"),
        (_grid(ev.images.get("grid", []), out / "generated.png"), "Generated images with prompts and judge verdicts"),
    ):
        if path is not None:
            figures.append((path.name, title))
    headline = []
    for key, label in (("vqa.finding.accuracy", "finding questions, model"), ("vqa.finding.blind.accuracy", "blind"),
                       ("vqa.finding.mcnemar_p", "McNemar p"), ("generation.faithfulness.mean", "faithfulness"),
                       ("generation.faithfulness.untrained.mean", "untrained"),
                       ("generation.faithfulness.permutation_p", "permutation p")):
        v = result.value(key)
        if v is not None:
            headline.append(f"{label}: {v:.4g}")
    env = Environment(autoescape=select_autoescape(default=True))
    html = env.from_string(_PAGE).render(inputs=result.inputs, wall=round(wall_s, 1), sections=_sections(result),
                                         figures=figures, worst=sorted(ev.examples.items()), headline=headline)
    path = out / "index.html"
    path.write_text(html)
    return path


__all__ = ["FINDINGS", "write_report"]
