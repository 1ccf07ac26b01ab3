"""A trained network on disk: ``model.npz`` (parameters as host arrays, keyed by their pytree path)
and ``model.json`` (the spec that rebuilds it), and the flat-array form of any parameter pytree
that checkpoints share. Arrays are device-count independent: a model saved on 8 devices loads on 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.config import ModelParams, UQParams
from simuq_core.io import read_json, write_json, write_npz
from simuq_core.network.forward import build_model

__all__ = ['key_str', 'load_checkpoint_arrays', 'load_model', 'restore_state', 'save_model',
           'state_to_arrays']


def save_model(model: nnx.Module, spec: dict[str, Any], out_dir: Path) -> None:
    """``model.npz`` (parameters as host arrays) and ``model.json`` (``spec``), atomically."""
    write_npz(out_dir / "model.npz", **state_to_arrays(nnx.state(model, nnx.Param)))
    write_json(out_dir / "model.json", spec)


def load_model(model_dir: str | Path) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuild a saved network and load its parameters (any device count)."""
    model_dir = Path(model_dir)
    spec = read_json(model_dir / "model.json")
    # Models saved before the parametric light pattern existed had the free one.
    spec["model"].setdefault("light_pattern", {"mode": "free"})
    # ... and before the upsampling choice, the plain sub-pixel convolution (same parameters).
    spec["model"].setdefault("upsample", "pixel_shuffle")
    spec["model"].setdefault("wiener_input", False)  # ... and before the Wiener input
    model = build_model(ModelParams(**spec["model"]), UQParams(**spec["uq"]), spec["n_frames"], 0)
    state = nnx.state(model, nnx.Param)
    arrays = load_checkpoint_arrays(model_dir / "model.npz")
    nnx.update(model, restore_state(state, arrays, str(model_dir / "model.npz")))
    return model, spec


def key_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def state_to_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Flatten a pytree of arrays to ``{path: host array}`` (device-count independent)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        out[key_str(path)] = np.asarray(jax.device_get(leaf))
    return out


def restore_state(template: Any, arrays: Mapping[str, np.ndarray], source: str) -> Any:
    """Fill ``template``'s structure with ``arrays`` (from :func:`state_to_arrays`)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in flat:
        key = key_str(path)
        if key not in arrays:
            raise KeyError(f"{source}: checkpoint has no entry {key!r} (different model params?)")
        value = arrays[key]
        if value.shape != np.shape(leaf):
            raise ValueError(
                f"{source}: {key!r} has shape {value.shape}, the model expects {np.shape(leaf)}"
            )
        leaves.append(jnp.asarray(value, dtype=jnp.asarray(leaf).dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def load_checkpoint_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
