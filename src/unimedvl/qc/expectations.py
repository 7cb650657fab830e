"""The Great Expectations suite on the metadata table (one row per record, built by `checks.py`).

Two kinds of expectation:

- **row level** (`meta.reason` names a quarantine reason): the rows GE lists in its
  `unexpected_index_list` (result format COMPLETE, indexed by the `_key` column, which is the record
  id) go to quarantine with that reason. Nothing re-implements the test beside GE.
- **suite level** (`meta.level == "suite"`): a property of the whole data set (every split present,
  at least one row). When one fails the step stops with `SuiteFailed`, naming the expectation.

GE is imported lazily: it costs seconds to import and only this module needs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import QCConfig
from ..data.schema import MODALITIES, SPLITS, SUB_TO_MAIN, TASKS
from .checks import LANG_TAG

REQUIRED = ("id", "dataset", "modality", "main_task_type", "sub_task_type", "split", "lang", "license")
INDEX = ["_key"]


class SuiteFailed(RuntimeError):
    """A suite-level expectation failed: the data set as a whole is unusable; the step stops."""


@dataclass
class GEOutcome:
    success: bool
    row_failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (reason, detail)
    per_expectation: list[dict[str, Any]] = field(default_factory=list)
    suite_failures: list[str] = field(default_factory=list)
    results_json: dict[str, Any] = field(default_factory=dict)


def expectation_specs(cfg: QCConfig) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(expectation class name, kwargs, meta) for the whole suite; reused by the docs and tests."""
    row = []
    for col in REQUIRED:
        row.append(("ExpectColumnValuesToNotBeNull", {"column": col}, {"reason": "missing_field"}))
    row += [
        ("ExpectColumnValuesToBeUnique", {"column": "id"}, {"reason": "duplicate_id"}),
        ("ExpectColumnValuesToBeInSet", {"column": "main_task_type", "value_set": sorted(TASKS)}, {"reason": "invalid_value"}),
        ("ExpectColumnValuesToBeInSet", {"column": "sub_task_type", "value_set": sorted(SUB_TO_MAIN)}, {"reason": "invalid_value"}),
        ("ExpectColumnValuesToBeInSet",
         {"column": "task", "value_set": sorted(f"{m}/{s}" for s, m in SUB_TO_MAIN.items())}, {"reason": "invalid_value"}),
        ("ExpectColumnValuesToBeInSet", {"column": "modality", "value_set": list(MODALITIES)}, {"reason": "invalid_value"}),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": list(SPLITS)}, {"reason": "invalid_value"}),
        ("ExpectColumnValuesToMatchRegex", {"column": "lang", "regex": LANG_TAG}, {"reason": "invalid_value"}),
        ("ExpectColumnValuesToMatchRegex", {"column": "turn_roles", "regex": r"^human,gpt(?:,human,gpt)*$"},
         {"reason": "malformed_turns"}),
        ("ExpectColumnPairValuesToBeEqual", {"column_A": "n_image_tokens", "column_B": "n_input_img"},
         {"reason": "placeholder_mismatch"}),
        ("ExpectColumnValuesToBeBetween", {"column": "img_min_side", "min_value": cfg.min_side}, {"reason": "image_too_small"}),
        ("ExpectColumnValuesToBeBetween", {"column": "img_max_side", "max_value": cfg.max_side}, {"reason": "image_too_big"}),
        ("ExpectColumnValuesToBeBetween", {"column": "vqa_answer_len", "min_value": 1}, {"reason": "empty_answer"}),
        ("ExpectColumnValuesToBeBetween",
         {"column": "caption_len", "min_value": cfg.caption_min_chars, "max_value": cfg.caption_max_chars},
         {"reason": "caption_length"}),
    ]
    suite = [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}, {"level": "suite"}),
        ("ExpectColumnDistinctValuesToContainSet", {"column": "split", "value_set": list(cfg.required_splits)},
         {"level": "suite"}),
    ]
    return row + suite


def metadata_frame(table) -> pd.DataFrame:  # table: pyarrow.Table of checks.RESULT_SCHEMA
    cols = [c for c in table.column_names if not c.startswith("img_") or c in ("img_min_side", "img_max_side")]
    cols = [c for c in cols if c not in ("leak_sig", "text_hash", "check_detail")]
    df = table.select(cols).to_pandas()
    # Nullable integers keep "no image" as null, which GE's map expectations skip (not a failure).
    for c in ("img_min_side", "img_max_side", "caption_len", "vqa_answer_len"):
        df[c] = df[c].astype("Int64")
    return df


def validate(df: pd.DataFrame, cfg: QCConfig, results_path: Path | None = None) -> GEOutcome:
    """Run the suite; save the validation results JSON; map unexpected rows to reasons."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # never phone home (offline machines)
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    source = context.data_sources.add_pandas("qc")
    asset = source.add_dataframe_asset("records")
    batch_def = asset.add_batch_definition_whole_dataframe("all_records")
    suite = context.suites.add(gx.ExpectationSuite(name="unimedvl_qc_metadata"))
    for cls_name, kwargs, meta in expectation_specs(cfg):
        suite.add_expectation(getattr(gxe, cls_name)(**kwargs, meta=meta))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name="qc_metadata", data=batch_def, suite=suite))
    result = vd.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": INDEX},
    )
    payload = result.to_json_dict()
    out = GEOutcome(success=bool(payload["success"]), results_json=payload)
    for res in payload["results"]:
        conf = res["expectation_config"]
        meta = conf.get("meta") or {}
        kwargs = {k: v for k, v in conf["kwargs"].items() if k != "batch_id"}
        r = res.get("result") or {}
        entry = {
            "expectation": conf["type"],
            "kwargs": kwargs,
            "success": bool(res["success"]),
            "level": meta.get("level", "row"),
            "reason": meta.get("reason"),
            "unexpected_count": r.get("unexpected_count", 0 if res["success"] else None),
            "observed_value": r.get("observed_value"),
        }
        out.per_expectation.append(entry)
        if res.get("exception_info", {}).get("raised_exception"):
            raise RuntimeError(f"GE expectation {conf['type']} {kwargs} raised: {res['exception_info']}")
        if res["success"]:
            continue
        if meta.get("level") == "suite":
            out.suite_failures.append(_suite_message(conf["type"], kwargs, r))
            continue
        subject = kwargs.get("column") or f"{kwargs.get('column_A')} vs {kwargs.get('column_B')}"
        for item in r.get("unexpected_index_list") or []:
            key = item["_key"]
            if key in out.row_failures:
                continue  # first failing expectation wins (suite order = precedence)
            value = {k: v for k, v in item.items() if k != "_key"}
            out.row_failures[key] = (meta["reason"], f"GE {conf['type']} on {subject}: {_short(value)}")
    if results_path is not None:
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 160 else text[:157] + "..."


def _suite_message(kind: str, kwargs: dict[str, Any], result: dict[str, Any]) -> str:
    if kind == "expect_column_distinct_values_to_contain_set":
        missing = result.get("partial_missing_list") or sorted(set(kwargs["value_set"]) - set(result.get("observed_value") or []))
        return (f"split(s) {sorted(missing)} are missing entirely; qc.required_splits asks for {kwargs['value_set']} "
                "(set qc.required_splits to the splits this data set really has)")
    if kind == "expect_table_row_count_to_be_between":
        return f"the data set has {result.get('observed_value')} rows"
    return f"{kind} {kwargs} failed: observed {result.get('observed_value')}"
