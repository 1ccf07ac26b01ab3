"""What every params section shares: strict models (unknown keys are errors), the error type and
the recursive merge that OOD shifts, ``--match`` overrides and profiles use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ['ParamsError', 'merge_override']


class ParamsError(ValueError):
    """Invalid parameters; the message names the file and every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def merge_override(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, any other value in ``override`` replaces.

    ``merge_override({"psf": {"na": 1.3, "kind": "airy"}}, {"psf": {"na": 1.1}})``
    gives ``{"psf": {"na": 1.1, "kind": "airy"}}``. Neither input is modified.
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_override(merged[key], value)
        else:
            merged[key] = value
    return merged
