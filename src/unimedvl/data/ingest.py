"""The ingest step: run source adapters, de-identify, write shards, manifest and quarantine."""

from __future__ import annotations

import contextlib
import gc
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config import IngestConfig, SourceSpec
from . import images
from .privacy import Keyed, load_key, scrub_text
from .schema import Quarantine, Record, Rejected
from .shards import DatasetWriter
from .sources import get_source
from .sources.base import Context


class IngestError(RuntimeError):
    """A problem with the command itself (not with a user's file): a clear message, exit non-zero."""


@dataclass
class IngestResult:
    manifest: dict[str, Any]
    seconds: float


def resolve_specs(specs: list[SourceSpec]) -> list[tuple[Any, SourceSpec]]:
    resolved = []
    for spec in specs:
        module = get_source(spec.name)
        if module.NEEDS_INPUT:
            if not spec.input:
                raise IngestError(f"--source {spec.name} needs an --input folder (the dataset as distributed)")
            if not Path(spec.input).exists():
                raise IngestError(f"--input {spec.input} for --source {spec.name} does not exist")
        resolved.append((module, spec))
    return resolved


def ingest(
    specs: list[SourceSpec],
    output: Path,
    cfg: IngestConfig,
    *,
    key: bytes | None = None,
    console: Console | None = None,
) -> IngestResult:
    """Ingest every source into one data set at `output`. Library entry of CLI, DVC and KFP."""
    with _old_objects_frozen():
        return _ingest(specs, output, cfg, key=key, console=console)


@contextlib.contextmanager
def _old_objects_frozen():
    """Keep the objects that exist before the run (imported libraries: pydicom, pyarrow, numpy...)
    out of the cyclic collector's full passes while it runs: the run allocates enough containers
    to trigger ~250 collections, and each full one re-scanned them all (~0.17 s of a 4.5 s packaged
    ingest). They are handed back (gc.unfreeze) afterwards, so nothing is kept alive for good. A
    caller that froze objects itself keeps its own setting."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _ingest(
    specs: list[SourceSpec],
    output: Path,
    cfg: IngestConfig,
    *,
    key: bytes | None,
    console: Console | None,
) -> IngestResult:
    console = console or Console(stderr=True)
    resolved = resolve_specs(specs)
    images.set_max_pixels(cfg.max_pixels, cfg.max_decoded_bytes)
    keyed = Keyed(key if key is not None else load_key())
    writer = DatasetWriter(Path(output), step="ingest", shard_max_mb=cfg.shard_max_mb)
    start = time.perf_counter()
    with Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[quarantined]} quarantined"), TimeElapsedColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    ) as progress:
        for module, spec in resolved:
            ctx = Context(source=spec.name, keyed=keyed, cfg=cfg)
            root = Path(spec.input) if spec.input else None
            total = _safe_count(module, root, ctx) if hasattr(module, "count") else None
            by_units = total is not None and getattr(module, "PROGRESS_BY_UNITS", False)
            task = progress.add_task(spec.name, total=total, quarantined=0)
            counts = writer.source(spec.name)
            if by_units:
                ctx.on_unit = lambda n, task=task: progress.advance(task, n)
            for item in _guarded(module, root, ctx):
                writer.add(spec.name, item)
                if not progress.disable:  # no bar (not a terminal): nothing to update per item
                    progress.update(task, advance=0 if by_units else 1, quarantined=counts.quarantined)
            if total is not None:
                progress.update(task, completed=total)
            if not console.is_terminal:
                console.print(f"ingest {spec.name}: {counts.accepted} accepted, {counts.quarantined} quarantined")
    manifest = writer.close(extra={"sources": [{"name": s.name} for _, s in resolved]})
    elapsed = time.perf_counter() - start
    summary = render_summary(manifest, elapsed)
    (Path(output) / "summary.txt").write_text(_plain(summary))
    console.print(summary)
    if manifest["accepted"] == 0:
        raise IngestError(
            f"nothing could be read: all {manifest['seen']} items were quarantined "
            f"(see {Path(output) / 'quarantine.jsonl'} for the reason of each)"
            if manifest["seen"]
            else "nothing could be read: the inputs hold no items this source recognises "
            "(check --source matches the dataset layout; `unimedvl ingest --help` lists the layouts)"
        )
    return IngestResult(manifest=manifest, seconds=elapsed)


def log_run(output: Path, cfg: IngestConfig, result: IngestResult, tracking=None) -> str | None:
    """ingest's child run under the pipeline's MLflow parent (`unimedvl.tracking`): the settings (source
    names only: an input path may name a person), the counts, the manifest, summary and quarantine file.
    The parent is resolved after the run, since the pipeline's data id is this step's own output."""
    from ..tracking import step_run

    params = {"ingest": cfg.model_dump(exclude={"sources"}), "ingest.sources": [s.name for s in cfg.sources]}
    counts = {k: float(result.manifest[k]) for k in ("seen", "accepted", "quarantined", "distinct_images")
              if isinstance(result.manifest.get(k), int | float)}
    with step_run("ingest", params=params, data=output, tracking=tracking, defer_parent=True,
                  dataset_context=None) as run:
        run.log_metrics({**counts, "seconds": result.seconds})
        for name in ("manifest.json", "summary.txt", "quarantine.jsonl"):
            if (Path(output) / name).exists():
                run.log_artifact(Path(output) / name)
    return run.run_id


def _safe_count(module: Any, root: Path | None, ctx: Context) -> int | None:
    """The adapter's unit count for the progress bar; a failing count only loses the bar's total."""
    try:
        return int(module.count(root, ctx))
    except Exception:  # noqa: BLE001 - the count is cosmetic; `read` reports real problems
        return None


def _guarded(module: Any, root: Path | None, ctx: Context):
    """Run an adapter so that one bad item never stops the run and nothing escapes as a traceback."""
    it = module.read(root, ctx)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Rejected as e:  # an adapter that raises instead of yielding: the source as a whole failed
            yield ctx.rejected(".", e)  # "." = the input root; its absolute path may name a person
            return
        except Exception as e:  # noqa: BLE001 - a bug must not lose the items already read
            # The message may quote a header value, so it is scrubbed like any text before it is shown.
            detail, _ = scrub_text(f"the adapter stopped: {type(e).__name__}: {e}")
            yield ctx.reject(".", "unreadable", detail)
            print(f"unimedvl: source {ctx.source} stopped early on an unexpected error ({detail}); "
                  "the items read before it are kept. Please report this as a bug.", file=sys.stderr)
            return
        if not isinstance(item, Record | Quarantine):
            raise TypeError(f"source {ctx.source} yielded {type(item).__name__}")
        yield item


def render_summary(m: dict[str, Any], seconds: float) -> Table:
    table = Table(title=f"ingest: {m['accepted']} accepted, {m['quarantined']} quarantined of {m['seen']} seen "
                  f"({m['distinct_images']} distinct images, {seconds:.1f} s)", show_lines=False)
    table.add_column("group")
    table.add_column("name")
    table.add_column("count", justify="right")
    for name, c in m["by_source"].items():
        table.add_row("source", name, f"{c['accepted']} / {c['seen']} ({c['quarantined']} quarantined)")
    for group in ("by_task", "by_modality", "by_split", "by_lang", "quarantine_reasons"):
        for name, n in m[group].items():
            table.add_row(group.removeprefix("by_").replace("_", " "), name, str(n))
    for mod, splits in m["subjects"].items():
        table.add_row("subjects", mod, ", ".join(f"{s} {n}" for s, n in splits.items()))
    return table


def _plain(renderable: Any) -> str:
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()
