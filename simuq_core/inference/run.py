"""One ``predict`` run as a user asks for it: a model folder, inputs, params and overrides in,
a :class:`~simuq_core.inference.files.PredictReport` out.

The policy a command line should not hold lives here: the tile size (the request, else the
model's training crop, else the ``simulate`` crop), the classical Wiener image's options, how many
MC-dropout passes a model gets, and which out-of-distribution reference applies (the one given,
else the model folder's own :data:`~simuq_core.inference.ood.OOD_REFERENCE_FILE`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simuq_core.baselines.wiener import wiener_options
from simuq_core.config import Params
from simuq_core.inference.files import PredictReport, predict_files
from simuq_core.inference.ood import OOD_REFERENCE_FILE
from simuq_core.inference.predictor import resolve_tile
from simuq_core.io import read_json
from simuq_core.network.store import load_model
from simuq_core.realdata.reader import find_inputs

__all__ = ["PredictUsageError", "RunOptions", "run_predict"]


class PredictUsageError(ValueError):
    """A request that cannot run at all (no inputs, no model, a missing reference, a tile the
    network cannot take): the message says what to change."""


@dataclass(frozen=True)
class RunOptions:
    """What a caller may choose beyond the ``predict`` section: ``context`` (``None``: the
    section's), ``pattern`` (``auto`` / ``model`` / ``blind``), ``epistemic`` MC-dropout passes
    (``None``: ``epistemic.n_samples`` for a model with dropout, else 0), ``ood_reference``
    (``None``: the model folder's own, if any) and ``progress`` bars."""

    context: str | None = None
    pattern: str = "auto"
    epistemic: int | None = None
    ood_reference: str | os.PathLike | None = None
    progress: bool = True


def _reference(model_dir: Path, given: str | os.PathLike | None, n_epi: int) -> dict[str, Any] | None:
    own = model_dir / OOD_REFERENCE_FILE
    ref = Path(given) if given else (own if own.is_file() else None)
    if ref is None:
        return None
    if not ref.exists():
        raise PredictUsageError(f"--ood-reference {ref}: no such file (run the epistemic stage)")
    reference = read_json(ref)
    if n_epi == 0 and "epistemic" in reference:
        raise PredictUsageError("--ood-reference needs epistemic passes (a model trained with dropout, "
                                "--epistemic N > 0)")
    return reference


def run_predict(model_dir: str | os.PathLike, patterns: list[str], out: str | os.PathLike, params: Params,
                options: RunOptions = RunOptions()) -> PredictReport:
    """Reconstruct every file matching ``patterns`` into ``out`` with the model in ``model_dir``
    (module docstring); raises :class:`PredictUsageError` before any work when the request cannot
    run, and otherwise reports per input (a bad file never stops the others)."""
    inputs = find_inputs(patterns)
    if not inputs:
        raise PredictUsageError(f"no input matches {patterns}")
    model_dir = Path(model_dir)
    if not (model_dir / "model.json").exists():
        raise PredictUsageError(f"{model_dir}: no model.json (train a model first)")
    model, spec = load_model(model_dir)
    cfg, sim = params.predict, params.simulate
    try:
        tile = resolve_tile(cfg.tile, spec, fallback=min(sim.lr_h, sim.lr_w))
        wiener = (wiener_options(params.baseline, cfg.wiener_w or params.baseline.wiener_w[0])
                  if cfg.wiener else None)
        n_epi = (options.epistemic if options.epistemic is not None
                 else params.epistemic.n_samples if float(spec["model"].get("dropout", 0.0)) > 0 else 0)
        reference = _reference(model_dir, options.ood_reference, n_epi)
        return predict_files(inputs, out, model, spec, model_dir, cfg, tile, progress=options.progress,
                             context=options.context or cfg.context, wiener=wiener, pattern=options.pattern,
                             period_hint=cfg.period_hint, epistemic_samples=n_epi,
                             epistemic_seed=params.epistemic.seed, ood_reference=reference)
    except PredictUsageError:
        raise
    except ValueError as exc:  # tile / overlap incompatible with the model
        raise PredictUsageError(str(exc)) from exc
