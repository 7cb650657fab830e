"""KFP form values -> `Params`, validated by the same typed config as params.yaml.

A component parameter is named after its params.yaml key with dots as underscores (`stage1.lr` ->
`stage1_lr`), and its default is read from params.yaml when the pipeline is compiled, so the form
and the file cannot drift. At run time the layers are, lowest first: the image's params.yaml, the
selected profile (`train_profile`), the form values that differ from params.yaml, then
`params_override` (YAML text). A form value left at its default therefore keeps what the profile says,
as `dvc repro --profile` would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import Params, ParamsError, load_params


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty dicts are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "mixture":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def params_file() -> Path:
    """params.yaml of this run: env UNIMEDVL_PARAMS, else the one in the repository or image folder."""
    from ..tracking import repo_root

    return Path(os.environ.get("UNIMEDVL_PARAMS") or repo_root() / "params.yaml")


def dotted_key(name: str, params: Params) -> str:
    """`stage1_lr` -> `stage1.lr` (the params.yaml key whose underscored form is `name`)."""
    keys = [k for k in flatten(params.model_dump()) if k.replace(".", "_") == name]
    if len(keys) != 1:
        raise KeyError(f"{name!r} names {'no' if not keys else 'more than one'} params.yaml key")
    return keys[0]


def defaults(names: list[str], params: Params) -> dict[str, Any]:
    """The params.yaml value of each underscored name (JSON types: tuples become lists)."""
    flat = flatten(params.model_dump(mode="json"))
    return {n: flat[dotted_key(n, params)] for n in names}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "mixture" else v
    return out


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def parse_override(text: str | None) -> dict[str, Any]:
    """`params_override` YAML text -> a mapping of sections; a clear error otherwise."""
    if not text or not text.strip():
        return {}
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"params_override is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"params_override must be a mapping of params.yaml sections, got {type(raw).__name__}")
    unknown = set(raw) - set(Params.model_fields)
    if unknown:
        raise ParamsError(f"params_override has unknown sections {sorted(unknown)}; use {', '.join(Params.model_fields)}")
    return raw


def resolve(values: dict[str, Any], params_override: str = "", base: Params | Path | None = None) -> Params:
    """The effective params of one component: base -> profile -> changed form values -> override.

    The profile stays selected (`train.profile`) with the form and override folded into it, so the
    training stages' own profile resolution gives the same result."""
    from ..train.stages import StageError, resolve_params

    base = base if isinstance(base, Params) else load_params(base or params_file())
    raw = base.model_dump(mode="json")
    flat = flatten(raw)
    layer: dict[str, Any] = {}
    profile = values.get("train_profile") or base.train.profile
    for name, value in values.items():
        if name == "train_profile":
            continue
        key = dotted_key(name, base)
        if value != flat[key]:
            layer = _merge(layer, _nest(key, value))
    layer = _merge(layer, parse_override(params_override))
    if "profiles" in layer:
        raise ParamsError("params_override cannot redefine profiles; pick one with train_profile")
    if profile != "demo" and profile not in base.profiles:
        raise ParamsError(f"unknown profile {profile!r}; params.yaml defines: {', '.join(['demo', *base.profiles])}")
    raw["profiles"] = {**raw.get("profiles", {}), profile: _merge(raw.get("profiles", {}).get(profile, {}), layer)}
    raw["train"]["profile"] = profile
    try:
        params = Params(**raw)
        resolve_params(params)  # validates the merged profile layer now, not in the middle of a run
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'] if p not in ('profiles', profile))}: {err['msg']}" for err in e.errors()]
        raise ParamsError("the pipeline's parameters are invalid:\n" + "\n".join(lines)) from None
    except StageError as e:
        raise ParamsError(str(e)) from None
    return params


def effective(params: Params) -> Params:
    """`params` with its selected profile applied (what ingest and qc read)."""
    from ..train.stages import resolve_params

    return resolve_params(params)
