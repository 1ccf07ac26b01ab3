"""Tolerances for comparing two float32 computations of the same quantity.

Two code paths that compute the same float32 values (jit against eager, batched against one sample
at a time, one device against two, an FFT against a direct sum, a fused implementation against the
term-by-term one, or simply the same program on another CPU, where XLA picks other kernels, vector
widths and reduction orders) agree only up to round-off. A tolerance read off one machine's output
(``atol=2e-6`` because the worst value there was 1.5e-6) fails on the next machine; this module
derives it from float32 precision instead, so it holds on any CPU.

Model (:func:`f32_tol`). float32 rounds each operation with a relative error of at most
``u = eps / 2`` (``eps = np.finfo(np.float32).eps = 2**-23 ≈ 1.19e-7``).

- A reduction of ``n`` terms in some order: the worst-case bound ``(n - 1)·u·Σ|t|`` is never
  approached; rounding errors behave like independent zero-mean variables, so the error grows like
  ``√n·u`` times the terms' magnitude (Higham & Mary, SIAM J. Sci. Comput. 41 (2019) A2815: the
  bound ``λ·√n·u`` fails with a probability that falls like exp(−λ²/2)). Another order of summation gives
  another error of that size. The magnitude used is ``max|ref|``: the outputs of a normalised layer,
  a convolution with a unit-sum kernel or a variance propagation are not smaller than their terms
  by more than an O(1) factor. (For a reduced scalar with strong cancellation, a mean of terms of
  both signs, pass the terms as ``ref``.)
- A chain of ``depth`` such stages (the layers of a network, an FFT followed by its inverse): every
  stage adds its own round-off and passes the earlier ones on with gain ≈ 1 (normalised layers,
  unit-sum kernels), so the errors add: a factor ``depth``. Stages of different sizes add the
  same way: sum the stages' ``f32_tol`` (a network's layers, then a mean over all its outputs).
- An FFT convolution over ``N`` points (all axes together) mixes every input into every output:
  pass ``n_terms = N``. (Its round-off grows only like log2 N in theory, so √N is a conservative
  stand-in that stays simple.)
- ``safety = 4``: the two paths each carry their own error, which at worst add (2·u = eps), times
  λ = 4. The rest of the estimate is already generous (every term taken at the largest magnitude,
  the stages' errors added linearly), so λ = 4 leaves room for the largest of thousands of values;
  deviations measured on one x86 machine sat 40× to several 1000× below the tolerance.

So ``tol = 4 · eps · max|ref| · √n_terms · depth``. It is meant for comparisons where the round-off
is absolute on the array's scale (reductions, convolutions, FFTs, networks); a pure element-wise
formula keeps a relative tolerance of a few eps instead.

Set ``SIMUQ_TOL_REPORT=1`` (and run pytest with ``-s``) to print each comparison's measured
deviation against its tolerance.
"""

from __future__ import annotations

import math
import os

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 ≈ 1.19e-7
SAFETY = 4.0


def f32_tol(ref, n_terms: int = 1, depth: int = 1, *, safety: float = SAFETY) -> float:
    """Absolute tolerance for two float32 computations of ``ref`` that round differently:
    ``safety · eps32 · max|ref| · √n_terms · depth`` (see the module docstring).

    ``ref``: the reference values (any array-like; float64 welcome), or for a reduced scalar the
    terms it reduces. ``n_terms``: the size of the largest reduction feeding one value (a
    convolution's fan-in k·k·C_in, the number of points of an FFT, the length of a mean).
    ``depth``: the number of such stages chained from the inputs to the compared values.
    """
    if n_terms < 1 or depth < 1:
        raise ValueError(f"n_terms and depth must be >= 1, got {n_terms}, {depth}")
    scale = float(np.max(np.abs(np.asarray(ref, np.float64))))
    return safety * EPS32 * scale * math.sqrt(n_terms) * depth


def assert_f32_close(actual, desired, n_terms: int = 1, depth: int = 1, *, scale=None,
                     atol: float | None = None, err_msg: str = "") -> None:
    """``np.testing.assert_allclose(actual, desired, rtol=0, atol=f32_tol(...))``; the tolerance's
    magnitude is ``max|desired|`` unless ``scale`` (e.g. the terms of a reduced scalar) is given.
    ``atol``: a tolerance already composed from several :func:`f32_tol` (stages that add)."""
    if atol is None:
        atol = f32_tol(desired if scale is None else scale, n_terms, depth)
    if os.environ.get("SIMUQ_TOL_REPORT"):
        dev = float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(desired, np.float64))))
        print(f"\n[f32 tol] {err_msg or 'value'}: max|dev| {dev:.3g}, tol {atol:.3g} "
              f"({dev / atol if atol else float('inf'):.3f} of it)")
    np.testing.assert_allclose(actual, desired, rtol=0, atol=atol, err_msg=err_msg)
