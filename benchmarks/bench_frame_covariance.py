"""Cost of the cross-frame (F-dimensional) residual likelihood vs the per-frame diagonal one.

Usage: ``python benchmarks/bench_frame_covariance.py [--quick]`` (about 1–2 minutes on 2 CPU
cores; ``--quick``: fewer repetitions).

Default geometry (``params.yaml``): batch 8, 9 frames (3 angles × 3 phases), 32×32 camera pixels,
rescale 2, Airy PSF (NA 1.3, 488 nm, 31.3 nm model pixels, K = 27) per sample, parametric light
pattern, every UQ target on, Poisson–Gaussian + map noise, β = 0.5. Both losses are jitted
``value_and_grad`` with respect to every mean and variance input (emitter, its variance, pattern
modulation and parameter variances, PSF, its variance, noise map), i.e. the loss part of a
training step without the network:

- ``diagonal``: ``propagate_rec_variance`` (parametric LP variance as independent per pixel) +
  per-frame ``gaussian_nll``;
- ``full``: ``forward_model`` + ``parametric_residual_covariance`` (emitter, coherent LP errors of
  the parametric pattern, PSF, noise) + ``frame_gaussian_nll``: what ``uq.frame_covariance: full``
  trains through (``covariance_of_prediction``);
- ``full_dense_jacobian``: the same covariance through the generic ``residual_covariance`` with
  the dense ``pattern_jacobian`` (the API of the first implementation);
- ``full_independent_lp``: the generic path with the LP variance as independent per pixel.

A first, unoptimised implementation (same script): full 6.3×, independent LP 4.7×
the diagonal loss (0.357 / 0.268 vs 0.057 s).

Timings: AOT-compiled executables (compile excluded), one warm-up call each, then the median of
``reps`` calls, timed in alternation so load drift on a shared machine affects all alike. Writes
``reports/bench/frame_covariance.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine, write_report  # noqa: E402  (puts the repo root on sys.path)

from simuq_core.optics import imaging as ph  # noqa: E402
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.pattern.maps import pattern_maps, pattern_variance
from simuq_core.training.losses import gaussian_nll  # noqa: E402
from simuq_core.uncertainty import frame_covariance as fc  # noqa: E402
from simuq_core.uncertainty import frame_likelihood as fl  # noqa: E402
from simuq_core.uncertainty import parametric_covariance as pc  # noqa: E402
from simuq_core.uncertainty import propagation as uq  # noqa: E402

BATCH, LR, R, ANGLES, PHASES, BETA = 8, 32, 2, 3, 3, 0.5


def _inputs(seed: int = 0) -> tuple[dict, PatternEstimate]:
    rng = np.random.default_rng(seed)
    hr, f32 = LR * R, np.float32
    psf = ph.airy_psf(ph.default_psf_size(1.3, 488.0, 62.6 / R), 1.3, 488.0, 62.6 / R)
    ang = rng.uniform(0, np.pi) + np.arange(ANGLES) * np.pi / ANGLES
    k = np.broadcast_to(np.stack([np.sin(ang), np.cos(ang)], -1) / 5.0, (BATCH, ANGLES, 2))
    pattern = PatternEstimate(jnp.asarray(k, f32), jnp.asarray(rng.uniform(0, 6.28, (BATCH, ANGLES)), f32),
                              jnp.ones((BATCH, ANGLES), f32), jnp.zeros((BATCH, 2), f32))
    vals = {
        "x": rng.uniform(0.0, 1.0, (BATCH, ANGLES * PHASES, LR, LR)),
        "emitter": rng.uniform(0.0, 1.0, (BATCH, hr, hr)),
        "var_emitter": rng.uniform(1e-4, 1e-2, (BATCH, hr, hr)),
        "modulation": np.full((BATCH, ANGLES), 0.8),
        "var_phase": np.full((BATCH, ANGLES), 1e-3),
        "var_modulation": np.full((BATCH, ANGLES), 1e-3),
        "var_k": np.full((BATCH, ANGLES), 1e-6),
        "psf": np.broadcast_to(psf, (BATCH,) + psf.shape),
        "var_psf": np.broadcast_to((0.1 * psf) ** 2, (BATCH,) + psf.shape),
        "obs_map": rng.uniform(0.0, 1e-3, (BATCH, 1, LR, LR)),
    }
    return {key: jnp.asarray(v, f32) for key, v in vals.items()}, pattern


NOISE = uq.init_obs_noise_params(2e-3, 2e-4)


def _pattern_terms(v, pattern):
    lp = pattern_maps(pattern, v["modulation"], PHASES, (LR, LR), R)
    var_lp = pattern_variance(pattern, v["modulation"], v["var_phase"], v["var_modulation"],
                              v["var_k"], PHASES, (LR, LR), R)
    return lp, var_lp


def diagonal_loss(v, pattern):
    lp, var_lp = _pattern_terms(v, pattern)
    prop = uq.propagate_rec_variance(
        v["emitter"], lp, v["psf"], R, var_emitter=v["var_emitter"], var_light_pattern=var_lp,
        var_psf=v["var_psf"], obs_noise="poisson_gaussian_map", obs_noise_params=NOISE,
        obs_var_map=v["obs_map"], var_floor=1e-6)
    return gaussian_nll(v["x"], prop.rec, prop.var_rec, beta=BETA)


def full_loss(v, pattern, lp_model: str = "parametric"):
    """``lp_model``: ``parametric`` (the training path), ``dense_jacobian`` or ``independent``."""
    lp, var_lp = _pattern_terms(v, pattern)
    rec = ph.forward_model(v["emitter"], lp, v["psf"], R)
    var_obs = uq.observation_variance(rec, "poisson_gaussian_map", NOISE, v["obs_map"])
    common = dict(var_emitter=v["var_emitter"], var_psf=v["var_psf"], var_obs=var_obs,
                  var_floor=1e-6)
    if lp_model == "parametric":
        cov = pc.parametric_residual_covariance(
            v["emitter"], pattern, v["modulation"], v["psf"], R, n_phases=PHASES,
            var_phase=v["var_phase"], var_modulation=v["var_modulation"], var_k=v["var_k"], **common)
    else:
        lp_kw = {"var_light_pattern": var_lp}
        if lp_model == "dense_jacobian":
            jac, var_q = fc.pattern_jacobian(pattern, v["modulation"], v["var_phase"],
                                             v["var_modulation"], v["var_k"], PHASES, (LR, LR), R)
            lp_kw = {"lp_jacobian": jac, "lp_param_var": var_q}
        cov = fc.residual_covariance(v["emitter"], lp, v["psf"], R, n_angles=ANGLES, **common,
                                     **lp_kw)
    return fl.frame_gaussian_nll(v["x"] - rec, cov, beta=BETA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    reps = 3 if parser.parse_args().quick else 15
    vals, pattern = _inputs()
    losses = {
        "diagonal": diagonal_loss,
        "full": full_loss,
        "full_dense_jacobian": lambda v, p: full_loss(v, p, "dense_jacobian"),
        "full_independent_lp": lambda v, p: full_loss(v, p, "independent"),
    }
    calls, compile_s = {}, {}
    for name, fn in losses.items():
        t0 = time.perf_counter()
        calls[name] = jax.jit(jax.value_and_grad(fn)).lower(vals, pattern).compile()
        compile_s[name] = time.perf_counter() - t0
        print(f"compiled {name} in {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
    times = {name: [] for name in calls}
    for fn in calls.values():
        jax.block_until_ready(fn(vals, pattern))
    for _ in range(reps):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(vals, pattern))
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    report = {
        "geometry": {"batch": BATCH, "frames": ANGLES * PHASES, "lr": LR, "rescale": R,
                     "psf_size": int(vals["psf"].shape[-1]), "beta": BETA},
        "what": "jitted value_and_grad of the loss (no network) w.r.t. every mean and variance input",
        "median_s": med,
        "min_s": {name: min(t) for name, t in times.items()},
        "compile_s": compile_s,
        "ratio_full_vs_diagonal": med["full"] / med["diagonal"],
        "ratio_full_dense_jacobian_vs_diagonal": med["full_dense_jacobian"] / med["diagonal"],
        "ratio_full_independent_lp_vs_diagonal": med["full_independent_lp"] / med["diagonal"],
        "ratio_full_vs_diagonal_min": min(times["full"]) / min(times["diagonal"]),
        "before_speedup": {"ratio_full_vs_diagonal": 6.30, "ratio_full_independent_lp_vs_diagonal": 4.73},
        "reps": reps,
        "machine": machine(),
    }
    path = write_report("frame_covariance", report)
    print(f"wrote {path}: {med} ratio {report['ratio_full_vs_diagonal']:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
