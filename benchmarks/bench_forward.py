"""Prediction throughput with uncertainty, and what the std maps cost.

    python benchmarks/bench_forward.py [--quick] [--size 256]

Writes reports/bench/forward.json. Model: ``models/selfsup`` when it has been trained, else a
freshly initialised network of the default profile (``params.yaml``; speed does not depend on the
weights); the JSON says which. Input: one simulated stack of ``size × size`` camera pixels,
tiles of the training crop (``simulate.lr_h``), ``predict.overlap`` and ``predict.batch_size``.
Times exclude the one-off JIT compiles (reported separately) and file I/O.

- ``end_to_end``: :class:`simuq_core.inference.files.TiledPredictor` (tiling, image-level context pass,
  network, variance propagation, blending of every mean and std map): camera megapixels per
  second; the same with per-tile context (no statistics pass) and with a mean-only network.
- ``forward``: one jitted batch of tiles. ``with_uncertainty`` = the network with its
  log-variance heads + :func:`simuq_core.network.forward.predict` (bounded variances, exact
  propagation to ``Var(rec)``, ``Var(S)``); ``mean_only`` = the same architecture without UQ heads
  (``uq.targets = []``, ``obs_noise = none``) + :func:`simuq_core.optics.imaging.forward_model` only.
  ``std_cost_ratio`` = with_uncertainty / mean_only.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from _common import ROOT, machine, time_call, write_report
from flax import nnx

from simuq_core.config import parse_params
from simuq_core.inference.predictor import TiledPredictor
from simuq_core.network.forward import build_model, model_spec, predict
from simuq_core.optics.imaging import forward_model
from simuq_core.realdata.normalise import normalise
from simuq_core.simulation.samples import sample_rng, simulate_sample


def _model(params):
    """The trained selfsup model if present, else a fresh default-profile one, and its spec."""
    model_dir = ROOT / "models" / "selfsup"
    if (model_dir / "model.npz").exists() and (model_dir / "model.json").exists():
        from simuq_core.network.store import load_model

        model, spec = load_model(model_dir)
        return model, spec, f"trained: {model_dir.relative_to(ROOT)}"
    model = build_model(params.model, params.uq, 9, 0)
    return model, model_spec(params.model, params.uq, 9), "freshly initialised (params.yaml)"


def _jitted(model, fn):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, x: fn(nnx.merge(graphdef, state), x))
    return lambda x: jax.block_until_ready(run(state, x))


def _first_call_s(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small image, few repetitions")
    parser.add_argument("--size", type=int, default=None, help="camera px per side")
    args = parser.parse_args()
    size = args.size or (96 if args.quick else 256)
    reps = 2 if args.quick else 5

    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    model, spec, which = _model(params)
    uq = params.uq.model_copy(update={"targets": spec["uq"]["targets"],
                                      "obs_noise": spec["uq"]["obs_noise"]})
    tile, overlap, batch = params.simulate.lr_h, params.predict.overlap, params.predict.batch_size
    sim = params.simulate.model_copy(update={"lr_h": size, "lr_w": size})
    raw = simulate_sample(sample_rng(0, "test", 0), sim).raw
    x, _ = normalise(raw, sim.noise.offset_adu, params.predict.norm_percentile, "bench")
    megapixels = size * size / 1e6
    report: dict = {"machine": machine(), "model": which, "image_px": [size, size],
                    "tile": tile, "overlap": overlap, "batch_size": batch,
                    "uq_targets": list(uq.targets), "obs_noise": uq.obs_noise}

    # -- end to end --------------------------------------------------------------------------
    mean_uq = uq.model_copy(update={"targets": [], "obs_noise": "none"})
    mean_model = build_model(params.model, mean_uq, 9, 0)
    mean_spec = model_spec(params.model, mean_uq, 9)
    end_to_end = {}
    for name, (m, s, context) in {"with_uncertainty": (model, spec, "image"),
                                  "per_tile_context": (model, spec, "tile"),
                                  "mean_only_network": (mean_model, mean_spec, "image")}.items():
        predictor = TiledPredictor(m, s, tile, overlap, batch, context=context)
        compile_s = _first_call_s(predictor, x)
        t = time_call(lambda p=predictor: p(x), reps=reps, warmup=0)
        _, info = predictor(x)
        end_to_end[name] = {**t, "megapixels_per_s": megapixels / t["median_s"],
                            "first_call_s": compile_s, "n_tiles": info["n_tiles"],
                            "batch_size": info["batch_size"], "context": info["context"]}
    report["end_to_end"] = end_to_end
    report["end_to_end_std_cost_ratio"] = (end_to_end["with_uncertainty"]["median_s"]
                                           / end_to_end["mean_only_network"]["median_s"])
    report["image_context_overhead"] = (end_to_end["with_uncertainty"]["median_s"]
                                        / end_to_end["per_tile_context"]["median_s"])

    # -- one batch of tiles ------------------------------------------------------------------
    tiles = jnp.asarray(np.stack([x[:, :tile, :tile]] * batch))

    def with_uncertainty(m, xb):
        return predict(m, xb, uq)

    def mean_only(m, xb):
        out = m(xb)
        return forward_model(out["emitter"], out["light_pattern"], out["psf"], m.rescale,
                             out.get("background"))

    forward = {}
    for name, (m, fn) in {"with_uncertainty": (model, with_uncertainty),
                          "mean_only": (mean_model, mean_only)}.items():
        run = _jitted(m, fn)
        compile_s = _first_call_s(run, tiles)
        # Interleaving is not needed here: each is timed over many short calls.
        t = time_call(lambda r=run: r(tiles), reps=reps * 4, warmup=1)
        forward[name] = {**t, "first_call_s": compile_s,
                         "ms_per_tile": 1000 * t["median_s"] / batch,
                         "megapixels_per_s": batch * tile * tile / 1e6 / t["median_s"]}
    report["forward"] = forward
    report["std_cost_ratio"] = forward["with_uncertainty"]["min_s"] / forward["mean_only"]["min_s"]
    report["end_to_end_over_tile_forwards"] = (
        end_to_end["with_uncertainty"]["median_s"]
        / (end_to_end["with_uncertainty"]["n_tiles"] / batch
           * forward["with_uncertainty"]["median_s"]))  # context pass, host copies, blending

    path = write_report("forward", report)
    print(json.dumps({
        "model": which, "image_px": size,
        "megapixels_per_s": round(end_to_end["with_uncertainty"]["megapixels_per_s"], 4),
        "std_cost_ratio (forward)": round(report["std_cost_ratio"], 3),
        "std_cost_ratio (end to end)": round(report["end_to_end_std_cost_ratio"], 3),
        "image_context_overhead": round(report["image_context_overhead"], 3),
    }, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
