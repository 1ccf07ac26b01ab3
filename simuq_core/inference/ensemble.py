"""Member predictions of one or several networks: MC-dropout passes and deep ensembles.

A network trained with dropout gives ``n_samples`` passes with independent masks; one without
gives its single deterministic pass; an ensemble pools the passes of several networks. The
members are combined by :class:`~simuq_core.uncertainty.epistemic.EnsembleAccumulator`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.config import UQParams
from simuq_core.network.forward import predict
from simuq_core.uncertainty.epistemic import EnsembleAccumulator

__all__ = ['make_ensemble_predictor', 'member_keys', 'sample_members']


def member_keys(seed: int, n_samples: int, dropout: float) -> jax.Array | None:
    """``(n_samples, 2)`` dropout keys, or ``None`` for a network without dropout (one pass)."""
    if dropout <= 0.0:
        return None
    return jax.random.split(jax.random.PRNGKey(seed), n_samples)


def sample_members(model: nnx.Module, x: jax.Array, uq: UQParams, keys: jax.Array | None,
                   pattern=None, wiener: jax.Array | None = None) -> dict[str, jax.Array]:
    """Every member prediction of one network, stacked on a leading axis ``(S, B, …)``.

    The pattern estimate and the Wiener input depend on ``x`` only: computed once (when not
    given) and shared by the passes. ``keys``: :func:`member_keys` (``None``: ``S = 1``).
    """
    if getattr(model, "lp_mode", "free") == "parametric" and pattern is None:
        pattern = model.estimate_pattern(x)
    if getattr(model, "wiener_input", False) and wiener is None:
        wiener = model.wiener_image(x, pattern)
    if keys is None:
        out = predict(model, x, uq, pattern, wiener)
        return {k: v[None] for k, v in out.items()}
    return jax.lax.map(lambda key: predict(model, x, uq, pattern, wiener, dropout_key=key), keys)


def make_ensemble_predictor(members: Sequence[tuple[nnx.Module, UQParams]], n_samples: int, seed: int,
                            batch_size: int):
    """``x (N, F, H, W) -> combined prediction`` (:class:`EnsembleAccumulator` keys, host arrays)
    of every member network's passes (``n_samples`` MC-dropout passes for a network with dropout,
    one otherwise; member ``i`` draws its masks from ``seed + i``), in fixed-size jitted batches
    (the last one padded, so one compile per member serves every call)."""
    fns = []
    for i, (model, uq) in enumerate(members):
        keys = member_keys(seed + i, n_samples, float(getattr(model, "dropout", 0.0)))
        fn = nnx.jit(lambda m, xb, k, uq=uq: sample_members(m, xb, uq, k))
        fns.append((fn, model, keys))

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        chunks: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            pad = batch_size - len(xb)
            if pad:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            acc = EnsembleAccumulator()
            for fn, model, keys in fns:
                acc.add(jax.device_get(fn(model, jnp.asarray(xb), keys)))
            for k, v in acc.result().items():
                chunks.setdefault(k, []).append(v[: batch_size - pad])
        return {k: np.concatenate(v) for k, v in chunks.items()}

    return run
