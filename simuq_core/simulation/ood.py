"""Out-of-distribution test splits: the simulator shifted on one axis at a time, and on all at once.

Each shift of the ``ood`` section is a partial ``simulate`` override (a nested mapping merged
recursively over the ``simulate`` section, then validated as :class:`SimulateParams`). Only a test
split is simulated, in the layout :func:`simuq_core.simulation.dataset.load_split` reads::

    <out>/ood.json                      the OOD seed, sizes, each shift's override, its resolved
                                        simulate params, seed and content digest
    <out>/<shift>/test/<name>.tif       (F, H, W) raw frames, as in the in-distribution dataset
    <out>/<shift>/test_gt/ ...          emitter and light-pattern GT
    <out>/<shift>/test_meta/ ...        noise σ, PSF, pattern, normalisation
    <out>/<shift>/dataset.json          the manifest of :func:`simuq_core.simulation.dataset.write_dataset`

The camera geometry (``lr_h``, ``lr_w``, ``hr_factor``) and the frame layout (``n_angles``,
``n_phases``) are never shifted (:class:`simuq_core.config.OODParams` refuses them), so a model
trained on ``simulate`` runs on every split.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from simuq_core.config import Params, ParamsError, SimulateParams, merge_override
from simuq_core.io import atomic_directory, write_json
from simuq_core.simulation.dataset import write_dataset

__all__ = ["OOD_FORMAT_VERSION", "ood_simulate_params", "resolve_ood_shifts",
           "shift_seed", "write_ood_splits"]

OOD_FORMAT_VERSION = 1


def shift_seed(ood_seed: int, name: str) -> int:
    """The ``simulate.seed`` of shift ``name``: a 32-bit hash of ``(ood_seed, name)``.

    Sample ``i`` of the shift is then ``sample_rng(shift_seed, "test", i)``. Keyed by the name, not by
    the shift's position, so adding, removing or reordering shifts leaves the other splits' samples
    unchanged, while two shifts never share their objects.
    """
    digest = hashlib.sha256(f"simuq-ood:{ood_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _shift_error(err: ValidationError, name: str) -> str:
    lines = [f"ood.shifts.{name}: invalid simulate override ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(["ood", "shifts", name, *(str(p) for p in e["loc"])])
        msg = "unknown key (typo?); not part of the simulate schema" if (
            e["type"] == "extra_forbidden") else e["msg"]
        got = e.get("input")
        shown = "" if e["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def ood_simulate_params(params: Params, name: str) -> SimulateParams:
    """The ``simulate`` params of OOD shift ``name``: its override merged over ``params.simulate``,
    with ``seed = shift_seed(params.ood.seed, name)`` and ``n_test = params.ood.n_test``.

    Raises
    ------
    ParamsError
        Unknown shift, or an override that does not validate; the message names every offending
        key as ``ood.shifts.<name>.<key>``.
    """
    shifts = params.ood.shifts
    if name not in shifts:
        raise ParamsError(f"ood.shifts: no shift named {name!r} (known: {sorted(shifts)})")
    merged = merge_override(params.simulate.model_dump(mode="json"), shifts[name])
    merged |= {"seed": shift_seed(params.ood.seed, name), "n_test": params.ood.n_test}
    try:
        return SimulateParams.model_validate(merged)
    except ValidationError as err:
        raise ParamsError(_shift_error(err, name)) from None


def resolve_ood_shifts(params: Params) -> dict[str, SimulateParams]:
    """Every shift's :func:`ood_simulate_params`, validated all before any is simulated.

    Raises
    ------
    ParamsError
        Listing the problems of every invalid shift (not only the first).
    """
    resolved, problems = {}, []
    for name in params.ood.shifts:
        try:
            resolved[name] = ood_simulate_params(params, name)
        except ParamsError as exc:
            problems.append(str(exc))
    if problems:
        raise ParamsError("\n".join(problems))
    return resolved


def write_ood_splits(params: Params, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Simulate the test split of every OOD shift under ``out_dir`` atomically; return ``ood.json``.

    Parameters
    ----------
    params : validated parameters; reads the ``simulate`` and ``ood`` sections.
    out_dir : the folder; it appears (or replaces a previous one) only once every shift is written.
    progress : show progress bars.

    Returns
    -------
    The manifest also written to ``out_dir/ood.json``: ``{"format_version", "seed", "n_test",
    "base_params", "shifts": {name: {"override", "seed", "params", "content_sha256"}}}``.
    """
    resolved = resolve_ood_shifts(params)  # every shift is valid before anything is simulated
    shifts: dict[str, Any] = {}
    with atomic_directory(out_dir) as work:
        for name, cfg in tqdm(resolved.items(), desc="ood shifts", unit="shift",
                              disable=not progress or None):
            manifest = write_dataset(cfg, work / name, progress=progress,
                                     sizes={"test": params.ood.n_test})
            shifts[name] = {
                "override": params.ood.shifts[name],
                "seed": cfg.seed,
                "params": cfg.model_dump(mode="json"),
                "content_sha256": manifest["content_sha256"],
            }
        manifest = {
            "format_version": OOD_FORMAT_VERSION,
            "seed": params.ood.seed,
            "n_test": params.ood.n_test,
            "split": "test",
            "base_params": params.simulate.model_dump(mode="json"),
            "shifts": shifts,
        }
        write_json(work / "ood.json", manifest)
    return manifest
