"""The tiny test profile as :class:`~simuq_core.config.Params`, with per-section overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from simuq_core.config import Params, apply_profile, parse_params

ROOT = Path(__file__).resolve().parents[1]


def tiny_raw() -> dict:
    """``params.yaml`` with the ``profiles/tiny.yaml`` overlay applied (raw mapping)."""
    return apply_profile(yaml.safe_load((ROOT / "params.yaml").read_text()),
                         yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text()), "profiles/tiny.yaml")


def tiny_params(**sections) -> Params:
    """The tiny profile with each keyword's dict merged over that section (one level)."""
    raw = tiny_raw()
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return parse_params(raw)


_TINY_FILE: Path | None = None


def tiny_params_file() -> str:
    """The tiny profile applied, as a params file for the stages' ``--params`` (written once per
    test session into a temporary folder)."""
    global _TINY_FILE
    if _TINY_FILE is None:
        import tempfile

        _TINY_FILE = Path(tempfile.mkdtemp(prefix="simuq-tiny-")) / "params.yaml"
        _TINY_FILE.write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    return str(_TINY_FILE)
