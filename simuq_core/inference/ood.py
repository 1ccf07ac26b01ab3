"""The out-of-distribution check of one prediction against a model's in-distribution reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simuq_core.realdata.checks import InputError
from simuq_core.uncertainty.epistemic import ood_flags, ood_scores

__all__ = ['OOD_REFERENCE_FILE', 'ood_check']


# Beside a fine-tuned model: the thresholds of its out-of-distribution check (:func:`ood_check`;
# written by :func:`simuq_core.workflows.finetune.ood_reference_from_data`, read by default by ``predict``).
OOD_REFERENCE_FILE = "ood_reference.json"


def ood_check(x: np.ndarray, maps: dict[str, np.ndarray], reference: dict[str, Any] | None,
              source: str) -> dict[str, Any]:
    """The image-level OOD scores of one prediction (:func:`simuq_core.uncertainty.epistemic.ood_scores`,
    from the blended maps) and, with a ``reference``, the flag: ``{"scores", "ratios",
    "flagged", "message"}``."""
    # The same scores as the epistemic stage's (:func:`simuq_core.uncertainty.epistemic.ood_scores`), from the
    # blended std maps of this one image.
    pred = {"emitter": maps["emitter"][None], "rec": maps["rec"][None],
            "emitter_var_epi": np.square(maps.get("emitter_epi_std", np.zeros_like(maps["emitter"])))[None],
            "var_rec_total": np.maximum(np.square(np.asarray(
                maps.get("rec_total_std", maps["rec_std"]), np.float64)), 1e-30)[None]}
    input_model = (reference or {}).get("input_model")
    scores = {k: float(v[0]) for k, v in ood_scores(pred, np.asarray(x)[None], input_model).items()}
    # Without MC-dropout passes there is no epistemic spread: the check rests on the data-only
    # terms (the raw-frame misfit under the predicted variance, and the input statistics).
    passes = "emitter_epi_std" in maps and "rec_total_std" in maps
    if not passes:
        scores.pop("epistemic")
    out: dict[str, Any] = {"scores": scores, "terms": sorted(scores)}
    if reference is None:
        out["flagged"] = None
        out["message"] = "no in-distribution reference given: not checked"
        return out
    if not any(name in reference for name in scores):
        raise InputError(f"{source}: the OOD reference has none of the scores {sorted(scores)} (needs "
                         "MC-dropout passes: --epistemic N)")
    flags = ood_flags({k: np.asarray([v]) for k, v in scores.items()}, reference)
    ratios = {k: float(v[0]) for k, v in flags.items() if k != "flagged"}
    flagged = bool(flags["flagged"][0])
    out |= {"ratios": ratios, "flagged": flagged, "percentile": reference["percentile"]}
    parts = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if k != "combined")
    out["message"] = (
        f"{source}: outside the training distribution (OOD score {ratios['combined']:.2f}x the "
        f"in-distribution {reference['percentile']:g}th percentile; {parts}): the uncertainty maps "
        "may not be trustworthy; fine-tune on data like this (python -m stages.finetune)" if flagged else
        f"{source}: within the training distribution (OOD score {ratios['combined']:.2f}x the "
        f"{reference['percentile']:g}th percentile)")
    return out
