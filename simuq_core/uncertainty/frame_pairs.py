"""Frame-pair layout of the cross-frame covariance: which ``(k, j)`` pairs are stored, in which
order, and how they become the symmetric ``F × F`` matrices per camera pixel.

The builders of :mod:`simuq_core.uncertainty.frame_covariance` and
:mod:`simuq_core.uncertainty.parametric_covariance` work on the upper triangle ``k ≤ j`` only,
as maps ``(B, n_pairs, ...)``: the ``A·P(P+1)/2`` same-angle pairs first (the only ones the
coherent light-pattern errors reach), then the pairs of different angles. Frames are angle-major,
``k = P·a + p``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "add_same_angle",
    "frame_pairs",
    "pair_products",
    "pairs_to_matrix",
    "same_angle_gram",
    "same_angle_stack",
    "with_noise_diagonal",
]


def frame_pairs(n_angles: int, n_phases: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Frame pairs ``(k, j)``, ``k ≤ j``: the ``A·P(P+1)/2`` same-angle pairs first (angle-major,
    then the upper triangle of each ``P × P`` block), then the pairs of different angles.

    Returns ``rows, cols`` (``(F(F+1)/2,)``) and the number of same-angle pairs.
    """
    p_rows, p_cols = np.triu_indices(n_phases)
    same_r = np.concatenate([a * n_phases + p_rows for a in range(n_angles)])
    same_c = np.concatenate([a * n_phases + p_cols for a in range(n_angles)])
    rows, cols = np.triu_indices(n_angles * n_phases)
    cross = rows // n_phases != cols // n_phases
    return (np.concatenate([same_r, rows[cross]]), np.concatenate([same_c, cols[cross]]),
            same_r.size)


def same_angle_stack(pair_maps: list[jnp.ndarray]) -> jnp.ndarray:
    """The ``P(P+1)/2`` same-angle pair maps ``(B, A, ...)`` (upper triangle of the ``P × P`` block,
    row-major) -> ``(B, A·P(P+1)/2, ...)`` in :func:`frame_pairs` order."""
    stacked = jnp.stack(pair_maps, axis=2)
    return stacked.reshape((stacked.shape[0], -1) + stacked.shape[3:])


def same_angle_gram(factors: jnp.ndarray) -> jnp.ndarray:
    """``Σ_q F[b, a, q, p]·F[b, a, q, s]`` for the same-angle pairs ``p ≤ s``:
    ``(B, A, Q, P, ...) -> (B, A·P(P+1)/2, ...)``.

    Written as explicit sums over the short axes: a ``sum(axis=...)`` followed by slicing made the
    gradient crash XLA's CPU runtime (segmentation fault, jaxlib 0.10.2).
    """
    n_q, n_p = factors.shape[2], factors.shape[3]
    return same_angle_stack([
        sum(factors[:, :, q, p] * factors[:, :, q, s] for q in range(n_q))
        for p, s in zip(*np.triu_indices(n_p), strict=True)])


def add_same_angle(pairs: jnp.ndarray, same: jnp.ndarray, n_same: int) -> jnp.ndarray:
    """Adds ``same`` ``(B, n_same, ...)`` to the same-angle pairs (the first ``n_same``) of
    ``pairs`` ``(B, n_pairs, ...)``."""
    return jnp.concatenate([pairs[:, :n_same] + same, pairs[:, n_same:]], axis=1)


def pair_products(x: jnp.ndarray, rows: np.ndarray, cols: np.ndarray) -> jnp.ndarray:
    """``x[:, k]·x[:, j]`` for every pair: ``(B, F, ...) -> (B, n_pairs, ...)``."""
    return x[:, rows] * x[:, cols]


def pairs_to_matrix(pairs: jnp.ndarray, rows: np.ndarray, cols: np.ndarray, f: int) -> jnp.ndarray:
    """``(B, n_pairs, H, W)`` upper-triangle values -> symmetric ``(B, H, W, F, F)`` (a gather: each
    of the ``F²`` entries reads its pair)."""
    index = np.zeros((f, f), np.int64)
    index[rows, cols] = np.arange(rows.size)
    index[cols, rows] = np.arange(rows.size)
    vals = jnp.moveaxis(pairs, 1, -1)
    return vals[..., index.ravel()].reshape(vals.shape[:-1] + (f, f))


def with_noise_diagonal(pairs: jnp.ndarray, rows: np.ndarray, cols: np.ndarray, f: int,
                        var_obs: jnp.ndarray | None, var_floor: float) -> jnp.ndarray:
    """The covariance ``(B, H, W, F, F)`` of the pair maps ``(B, n_pairs, H, W)`` plus the camera
    noise ``var_obs`` (``(B, F, H, W)``, ``(B, 1, H, W)`` or ``None``) and ``var_floor`` on its
    diagonal (frame-independent terms)."""
    bsz, _, h, w = pairs.shape
    cov = pairs_to_matrix(pairs, rows, cols, f)
    noise = jnp.full((bsz, f, h, w), var_floor, cov.dtype)
    if var_obs is not None:
        noise = noise + var_obs
    eye = jnp.eye(f, dtype=cov.dtype).reshape((1, 1, 1, f, f))
    return cov + jnp.moveaxis(noise, 1, -1)[..., None] * eye
