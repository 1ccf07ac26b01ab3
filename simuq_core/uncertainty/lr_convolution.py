"""LR-sampled convolutions of the cross-frame covariance terms on one small FFT grid.

Every term of :mod:`simuq_core.uncertainty.frame_covariance` is a full convolution of length
``Hh + K + r − 2`` sampled at ``r·i + r − 1 + K//2`` (the LR grid of the mean path,
:func:`simuq_core.optics.imaging.pooled_full_convolve`), so one FFT grid serves all of them:

- only the LR samples of each full convolution are needed, so the grid ``N`` is the smallest
  2-3-5 length, a multiple of ``r``, for which the circular wrap-around misses the sampled pixels
  (:func:`lr_grid`: 80 instead of the linear 96 on the default geometry);
- the inverse FFT is taken on the ``r``× decimated grid after folding the spectrum (sampling
  every ``r``-th pixel = summing the ``r²`` aliased spectral blocks; :func:`decimated_irfft2`);
- ``v_p ⊛ B(D)/r² = (B(v_p)/r²) ⊛ D``, so the pixel-independent term ``D`` is convolved once with
  the merged kernel ``G² + w·B(v_p)/r²`` (:func:`independent_kernel`), and the spectra of all
  terms are added before one inverse FFT per frame pair.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from simuq_core.optics.imaging import align_ranks, box_mean_full

__all__ = [
    "Grid",
    "LRSampler",
    "decimated_irfft2",
    "fast_length",
    "filtered",
    "independent_kernel",
    "lr_grid",
    "per_sample",
    "psf_terms_enabled",
    "spectrum",
]


def fast_length(n: int, multiple: int) -> int:
    """Smallest ``m ≥ n``, a multiple of ``multiple``, whose only prime factors are 2, 3 and 5."""
    m = max(n, multiple)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1 and m % multiple == 0:
            return m
        m += 1


class Grid(NamedTuple):
    """FFT length ``n`` of one axis, the zero-padding ``shift`` in front of every input, and the
    first sampled index ``start`` on the ``r``× decimated grid."""

    n: int
    shift: int
    start: int


def lr_grid(full_len: int, offset: int, n_out: int, r: int, max_input: int) -> Grid:
    """FFT grid of one axis for ``y = conv_full(x, k)`` (``full_len = len(x) + len(k) − 1``, the
    same for every pair convolved here) sampled at ``offset + r·i``, ``i < n_out``.

    Shifting every input by ``s = (−offset) mod r`` makes the sampled indices
    ``n_i = offset + s + r·i`` multiples of ``r``. The circular convolution of length ``N`` equals
    ``y`` at ``n_i`` when no other period of the shifted ``y`` (support ``[s, s + full_len − 1]``)
    reaches them: ``N > full_len − 1 − offset`` and ``N > offset + s + r·(n_out − 1)``; and every
    input must fit, ``N ≥ s + max_input``.
    """
    shift = (-offset) % r
    n = fast_length(max(full_len - offset, offset + shift + r * (n_out - 1) + 1, shift + max_input), r)
    return Grid(n, shift, (offset + shift) // r)


def spectrum(x: jnp.ndarray, grid: tuple[Grid, Grid]) -> jnp.ndarray:
    """``rfft2`` of ``x`` ``(..., L0, L1)`` placed at ``(shift0, shift1)`` on the ``N0 × N1`` grid."""
    if any(g.shift for g in grid):
        pad = [(g.shift, g.n - g.shift - n) for g, n in zip(grid, x.shape[-2:], strict=True)]
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + pad)
    return jnp.fft.rfft2(x, s=(grid[0].n, grid[1].n))


def filtered(x: jnp.ndarray, kernel: jnp.ndarray, grid: tuple[Grid, Grid]) -> jnp.ndarray:
    """Spectrum of ``conv_full(x, kernel)`` on the grid (the kernel at the origin, unshifted);
    the kernel's leading axes broadcast against ``x``'s (unit axes prepended explicitly)."""
    spec_k = jnp.fft.rfft2(kernel, s=(grid[0].n, grid[1].n))
    spec_k = spec_k.reshape((1,) * (x.ndim - kernel.ndim) + spec_k.shape)
    return spectrum(x, grid) * spec_k


def _fold_rows(spec: jnp.ndarray, r: int) -> jnp.ndarray:
    """``(..., N, C) -> (..., N/r, C)``: ``Σ_t X[v + t·N/r, :]``."""
    n = spec.shape[-2]
    return spec.reshape(spec.shape[:-2] + (r, n // r, spec.shape[-1])).sum(axis=-3)


def _fold_half_columns(spec: jnp.ndarray, n: int, r: int) -> jnp.ndarray:
    """``Σ_t X[:, u + t·M]`` for ``u ≤ M//2`` (``M = n/r``) from the half spectrum of a real
    signal, ``(..., V, n//2 + 1) -> (..., V, M//2 + 1)``.

    Columns ``u > n/2`` are not stored: ``X[v, u] = conj(X[−v, n − u])`` (the row axis, already
    folded, is negated modulo its length). Static slices only, so the transpose is cheap too.
    """
    m, half = n // r, n // r // 2
    mirrored = jnp.conj(jnp.concatenate([spec[..., :1, :], jnp.flip(spec[..., 1:, :], axis=-2)],
                                        axis=-2))
    total = None
    for t in range(r):
        lo, hi = t * m, t * m + half  # the columns u + t·M, u = 0..M//2, inclusive
        pieces = []
        if lo <= min(hi, n // 2):
            pieces.append(spec[..., lo : min(hi, n // 2) + 1])
        first_mirrored = max(lo, n // 2 + 1)
        if first_mirrored <= hi:  # u in [first_mirrored, hi] reads n − u, descending
            pieces.append(jnp.flip(mirrored[..., n - hi : n - first_mirrored + 1], axis=-1))
        part = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)
        total = part if total is None else total + part
    return total


def decimated_irfft2(spec: jnp.ndarray, grid: tuple[Grid, Grid], r: int, out: tuple[int, int]
                     ) -> jnp.ndarray:
    """Samples ``c[r·i + start]`` (per axis) of the circular convolution whose ``rfft2`` is
    ``spec`` ``(..., N0, N1//2 + 1)``, ``(..., out0, out1)``.

    Sampling every ``r``-th pixel aliases the spectrum: ``c[r·i] = (1/r)·ifft_{N/r}(Σ_t X[u + t·N/r])``
    per axis, so the inverse FFT runs on the ``(N/r)²`` grid.
    """
    (g0, g1), m0, m1 = grid, grid[0].n // r, grid[1].n // r
    folded = _fold_half_columns(_fold_rows(spec, r), g1.n, r) / (r * r)
    small = jnp.fft.irfft2(folded, s=(m0, m1))
    return small[..., g0.start : g0.start + out[0], g1.start : g1.start + out[1]]


class LRSampler(NamedTuple):
    """The FFT grid of one covariance and its LR samples: ``filtered(x, kernel)`` is the spectrum
    of ``conv_full(x, kernel)`` on the grid, ``to_lr(spec)`` its samples ``(..., H, W)``."""

    grid: tuple[Grid, Grid]
    r: int
    out: tuple[int, int]

    @classmethod
    def for_image(cls, hh: int, wh: int, k: int, r: int) -> LRSampler:
        """The sampler of every covariance term on an ``Hh × Wh`` HR image with a ``K × K`` PSF:
        full convolutions of length ``Hh + K + r − 2`` (inputs up to ``Hh + r − 1``, the box means)
        sampled at ``r·i + r − 1 + K//2``."""
        offset = r - 1 + k // 2
        h, w = hh // r, wh // r
        grid = (lr_grid(hh + k + r - 2, offset, h, r, hh + r - 1),
                lr_grid(wh + k + r - 2, offset, w, r, wh + r - 1))
        return cls(grid, r, (h, w))

    def filtered(self, x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
        return filtered(x, kernel, self.grid)

    def to_lr(self, spec: jnp.ndarray) -> jnp.ndarray:
        return decimated_irfft2(spec, self.grid, self.r, self.out)


def per_sample(kernel: jnp.ndarray, extra_axes: int = 1) -> jnp.ndarray:
    """A per-sample array ``(B, ...)`` gets ``extra_axes`` unit axes after ``B``; a shared kernel
    ``(K, K)`` (``ndim == 2``) is returned as is and broadcasts."""
    if kernel.ndim == 2:
        return kernel
    return kernel.reshape(kernel.shape[:1] + (1,) * extra_axes + kernel.shape[1:])


def psf_terms_enabled(var_psf: jnp.ndarray | None, psf_var_weight: float | jnp.ndarray) -> bool:
    """Whether the PSF terms enter: a PSF variance is given and its weight is not a static 0 (as
    in ``propagate_rec_variance``)."""
    return var_psf is not None and not (isinstance(psf_var_weight, (int, float))
                                        and psf_var_weight == 0)


def independent_kernel(g: jnp.ndarray, var_psf: jnp.ndarray | None,
                       psf_var_weight: float | jnp.ndarray, r: int, use_psf: bool) -> jnp.ndarray:
    """The kernel of the pixel-independent term ``D``: ``G²`` through the mean blur, plus the PSF
    term's ``v_p ⊛ B(D)/r² = (B(v_p)/r²) ⊛ D`` when ``use_psf`` (one merged kernel)."""
    kernel = g**2
    if use_psf:
        kernel, box_vp = align_ranks(kernel, box_mean_full(var_psf, r))
        kernel = kernel + psf_var_weight * box_vp / (r * r)
    return kernel
