"""From a parsed ``params.yaml`` (or a profile over it) to validated
:class:`~simuq_core.config.sections.Params`, with errors that name the file and the dotted key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from simuq_core.config.base import ParamsError, _Strict, merge_override
from simuq_core.config.microscope import MicroscopeParams, apply_microscope
from simuq_core.config.sections import Params

__all__ = ['apply_profile', 'format_validation_error', 'params_hash', 'parse_params', 'parse_section',
           'read_sections']


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<source>: <dotted.key>: <message> (got <value>)``."""
    lines = [f"{source}: invalid parameters ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?); not part of the schema"
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed ``params.yaml`` mapping; raise :class:`ParamsError` naming bad keys."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        filled = apply_microscope(raw)
    except ValueError as err:
        raise ParamsError(f"{source}: the microscope section and another section disagree:\n{err}") from None
    try:
        return Params.model_validate(filled)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, source)) from None


def parse_section(raw: Any, name: str, source: str = "params.yaml") -> BaseModel:
    """One section of a parsed ``params.yaml`` (e.g. ``finetune``), with the ``microscope`` section's
    facts copied in, validated alone: for commands that also run on a params file without the
    sections the training stages need. Raises :class:`ParamsError` naming the bad keys."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    # The two sections alone, validated together so every error carries its dotted key.
    wrapper = create_model("_Section", __base__=_Strict, microscope=(MicroscopeParams | None, None),
                           **{name: (Params.model_fields[name].annotation, ...)})
    try:
        filled = apply_microscope(raw)
        section = wrapper.model_validate({"microscope": filled.get("microscope"),
                                          name: filled.get(name) or {}})
        return getattr(section, name)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, source)) from None
    except ValueError as err:
        raise ParamsError(f"{source}: the microscope section and another section disagree:\n{err}") from None


def params_hash(params: BaseModel) -> str:
    """Short stable hash of validated params (for tags and dataset manifests)."""
    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _overlay_problems(base: Mapping[str, Any], overlay: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of ``overlay`` that ``base`` does not have (a profile may change values, not
    invent keys: a typo would otherwise pass silently wherever the schema has a default)."""
    problems = []
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            problems.append(f"  {dotted}: not in the base params file (typo?)")
        elif isinstance(value, Mapping) and isinstance(base[key], Mapping):
            problems += _overlay_problems(base[key], value, dotted + ".")
    return problems


def apply_profile(base: Any, overlay: Any, source: str = "profile") -> dict[str, Any]:
    """A profile is an overlay of ``params.yaml``: it holds only what differs. Returns the merged
    raw params (:func:`merge_override`), validated like ``params.yaml`` itself
    (:func:`parse_params`); an overlay key the base does not have, or a merged value the schema
    rejects, is a :class:`ParamsError` naming ``source`` and the dotted key."""
    if not isinstance(base, Mapping) or not isinstance(overlay, Mapping):
        raise ParamsError(f"{source}: a profile and its base must both be mappings of sections")
    problems = _overlay_problems(base, overlay)
    if problems:
        raise ParamsError(f"{source}: keys the base params do not have:\n" + "\n".join(problems))
    merged = merge_override(base, overlay)
    parse_params(merged, source=f"{source} over params.yaml")
    return merged


def read_sections(path: str | os.PathLike | None, *names: str) -> tuple:
    """``(raw, section, ...)``: the parsed params file and the named sections only, each with the
    ``microscope`` section's facts copied in and validated (the microscope too), for commands that
    also run on a params file without the training stages' sections. ``None`` or a missing file
    reads as empty (every section at its defaults); bad YAML or values raise :class:`ParamsError`
    naming the file and keys."""
    import yaml

    path = Path(path) if path is not None else None
    try:
        raw = (yaml.safe_load(path.read_text()) if path is not None and path.exists() else {}) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    source = str(path) if path is not None else "defaults"
    return (raw, *(parse_section(raw, name, source) for name in names))
