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
from simuq_core.config import BaselineParams, PredictParams
from simuq_core.inference.files import PredictReport, predict_files
from simuq_core.inference.ood import OOD_REFERENCE_FILE
from simuq_core.inference.predictor import resolve_tile
from simuq_core.io import read_json
from simuq_core.network.store import load_model
from simuq_core.realdata.reader import find_inputs

__all__ = ["PredictUsageError", "RunOptions", "compile_cache_dir", "enable_compile_cache", "run_predict"]


def compile_cache_dir() -> Path:
    """Where compiled XLA programs are kept between processes: ``SIMUQ_COMPILE_CACHE`` if set, else
    ``$XDG_CACHE_HOME/simuq/jax`` (``~/.cache/simuq/jax``)."""
    env = os.environ.get("SIMUQ_COMPILE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simuq" / "jax"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """JAX's persistent compilation cache at ``path`` (default :func:`compile_cache_dir`), so a
    second process with the same model and tile shapes loads its programs instead of compiling
    them (the first call of a predict process is otherwise mostly compilation). ``SIMUQ_COMPILE_CACHE=off``
    disables it; a cache folder that cannot be created leaves compilation as it is. Returns the
    folder used, or ``None``."""
    import jax

    if os.environ.get("SIMUQ_COMPILE_CACHE", "").lower() == "off":
        return None
    folder = Path(path) if path is not None else compile_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program, however quick to compile: a time threshold would make what is cached depend
    # on the machine's load.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


class PredictUsageError(ValueError):
    """A request that cannot run at all (no inputs, no model, a missing reference, a tile the
    network cannot take): the message says what to change."""


@dataclass(frozen=True)
class RunOptions:
    """What a caller may choose beyond the ``predict`` section: ``context`` (``None``: the
    section's), ``pattern`` (``auto`` / ``model`` / ``blind``), ``epistemic`` MC-dropout passes
    (``None``: ``predict.mc_passes``; a model without dropout has none), ``ood_reference``
    (``None``: the model folder's own, if any), ``instrument`` (a JSON with an
    ``instrument_pattern``, e.g. ``measure``'s output, in place of the model's) and ``progress``
    bars."""

    context: str | None = None
    pattern: str = "auto"
    epistemic: int | None = None
    ood_reference: str | os.PathLike | None = None
    instrument: str | os.PathLike | None = None
    progress: bool = True


def _reference(model_dir: Path, given: str | os.PathLike | None) -> dict[str, Any] | None:
    own = model_dir / OOD_REFERENCE_FILE
    ref = Path(given) if given else (own if own.is_file() else None)
    if ref is None:
        return None
    if not ref.exists():
        raise PredictUsageError(f"--ood-reference {ref}: no such file (run the epistemic stage)")
    return read_json(ref)


def _with_instrument(spec: dict[str, Any], given: str | os.PathLike | None) -> dict[str, Any]:
    """``spec`` carrying the instrument pattern of the JSON file ``given`` (a ``measure`` output,
    or a fine-tuned ``model.json``), in place of its own."""
    if not given:
        return spec
    path = Path(given)
    if not path.is_file():
        raise PredictUsageError(f"--instrument {path}: no such file (run simuq measure on bright "
                                "acquisitions)")
    data = read_json(path)
    pattern = data.get("instrument_pattern") or (data.get("finetune") or {}).get("instrument_pattern")
    if not pattern:
        raise PredictUsageError(f"--instrument {path}: no instrument_pattern in it (no acquisition measured "
                                "there had a clear pattern)")
    return spec | {"finetune": (spec.get("finetune") or {}) | {"instrument_pattern": pattern}}


def run_predict(model_dir: str | os.PathLike, patterns: list[str], out: str | os.PathLike, cfg: PredictParams,
                baseline: BaselineParams, *, epistemic_seed: int = 0, fallback_tile: int | None = None,
                options: RunOptions = RunOptions()) -> PredictReport:
    """Reconstruct every file matching ``patterns`` into ``out`` with the model in ``model_dir``
    (module docstring), with the ``predict`` section ``cfg`` and the ``baseline`` section's Wiener
    options; ``fallback_tile``: the tile when neither ``cfg.tile`` nor the model records a training
    crop. Raises :class:`PredictUsageError` before any work when the request cannot run, and
    otherwise reports per input (a bad file never stops the others)."""
    inputs = find_inputs(patterns)
    if not inputs:
        raise PredictUsageError(f"no input matches {patterns}")
    model_dir = Path(model_dir)
    if not (model_dir / "model.json").exists():
        raise PredictUsageError(f"{model_dir}: no model.json (train a model first)")
    model, spec = load_model(model_dir)
    spec = _with_instrument(spec, options.instrument)
    try:
        tile = resolve_tile(cfg.tile, spec, fallback=fallback_tile)
        wiener = wiener_options(baseline, cfg.wiener_w or baseline.wiener_w[0]) if cfg.wiener else None
        n_epi = options.epistemic if options.epistemic is not None else cfg.mc_passes
        n_epi = n_epi if float(spec["model"].get("dropout", 0.0)) > 0 else 0
        reference = _reference(model_dir, options.ood_reference)
        return predict_files(inputs, out, model, spec, model_dir, cfg, tile, progress=options.progress,
                             context=options.context or cfg.context, wiener=wiener, pattern=options.pattern,
                             period_hint=cfg.period_hint, epistemic_samples=n_epi,
                             epistemic_seed=epistemic_seed, ood_reference=reference)
    except PredictUsageError:
        raise
    except ValueError as exc:  # tile / overlap incompatible with the model
        raise PredictUsageError(str(exc)) from exc
