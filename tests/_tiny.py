"""The tiny test profile as :class:`~simuq_core.config.Params`, with per-section overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from simuq_core.config import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(**sections) -> Params:
    """``profiles/tiny.yaml`` with each keyword's dict merged over that section (one level)."""
    raw = yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text())
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return parse_params(raw)
