"""Image-level context for tiled inference: GroupNorm statistics and the pooled PSF features.

Two parts of :class:`~simuq_core.network.simnet.SIMNet` look at the *whole* input, so predicting tile by
tile changes them:

- GroupNorm normalises features with their mean and variance over the input: every tile gets its
  own feature gain (each tile is in effect auto-contrasted). On a 112×112 synthetic stack cut into
  the tiny test model's 16-px training crops, the emitter changed by ~30% RMS everywhere in a
  tile, not only near its borders (a patchwork that blending can only smooth);
- the per-sample PSF heads (``psf_hidden``, ``psf_logvar_hidden``) and the pattern modulation
  head (``pattern_hidden``) read the spatial mean of the bottleneck features: every tile gets its
  own PSF, PSF variance and modulation (one per *acquisition* by design), which moves
  ``rec_std``. (The classical pattern estimate itself is made once per image by
  :class:`~simuq_core.inference.files.TiledPredictor`.)

Here both are computed once for the image and frozen for every tile. The image-level values come
from one extra network pass over large *statistics tiles* (non-overlapping, up to ``4×`` the
prediction tile per side: the whole image when it fits; an even sub-grid of them for large
images) in ``POOLED`` mode: each GroupNorm layer normalises with the statistics pooled over the
batch (= over the sampled area), and the PSF heads read the bottleneck mean pooled over it, so
deeper layers already see inputs normalised the image-level way and one pass gives every layer
consistently. They are then ``FROZEN`` for the prediction pass over all tiles. With them frozen
the network is local up to its receptive field: beyond it, tiled and untiled predictions agree to
float round-off; sampling 64-px statistics tiles instead of the whole image moved the emitter by
~2% RMS (tests: ``tests/test_predict.py``).

:func:`with_context_layers` returns a copy of the model in which every ``nnx.GroupNorm`` is a
:class:`ContextGroupNorm` and the PSF heads' first layers are :class:`ContextPooledLinear` (same
parameters); in ``PER_INPUT`` mode they compute exactly what the originals compute (the training
behaviour, checked in the tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "CROP_MEAN",
    "ContextGroupNorm",
    "ContextLayer",
    "ContextPooledLinear",
    "FROZEN",
    "FrozenStats",
    "PER_INPUT",
    "POOLED",
    "POOLED_INPUT_LAYERS",
    "TileStats",
    "get_path",
    "set_mode",
    "with_context_layers",
]


class FrozenStats(nnx.Variable):
    """Image-level statistics of a context layer, and its mode."""


class TileStats(nnx.Variable):
    """The statistics the last call used (first axis: the batch)."""


PER_INPUT, FROZEN, POOLED, CROP_MEAN = 0, 1, 2, 3


class ContextGroupNorm(nnx.Module):
    """GroupNorm over ``(B, H, W, C)`` whose statistics can be shared across inputs.

    ``mode`` (a variable, so one compiled program serves every mode):

    - ``PER_INPUT`` (0): each input's own statistics, exactly ``nnx.GroupNorm`` with
      ``use_fast_variance`` (``Var = E[x²] − E[x]²``): the training behaviour;
    - ``POOLED`` (2): statistics pooled over the whole batch (every tile has the same pixel count,
      so ``E`` over the batch is the mean of the per-tile ``E``);
    - ``CROP_MEAN`` (3): the mean over the batch of each input's own mean and variance: the
      normalisation of a *typical* input. Pooling adds the spread of the inputs' means to the
      variance; on a heterogeneous image (an empty region beside dense structure) cut into
      training-crop-sized tiles that spread is large, and a network trained on single crops,
      normalised by their own statistics, then sees features scaled down everywhere;
    - ``FROZEN`` (1): the stored image-level :class:`FrozenStats` ``(G,)``.

    The statistics used are recorded in :class:`TileStats` (so a ``POOLED`` pass yields the
    image-level statistics of every layer at once).
    """

    def __init__(self, norm: nnx.GroupNorm):
        if norm.reduction_axes is not None or norm.axis_name is not None:
            raise ValueError("only the default GroupNorm (all spatial axes, no axis_name) is supported")
        self.scale, self.bias = norm.scale, norm.bias
        self.num_groups, self.epsilon = norm.num_groups, norm.epsilon
        g = norm.num_groups
        self.frozen_mean = FrozenStats(jnp.zeros((g,), jnp.float32))
        self.frozen_var = FrozenStats(jnp.ones((g,), jnp.float32))
        self.mode = FrozenStats(jnp.asarray(PER_INPUT, jnp.int32))
        self.used_mean = TileStats(jnp.zeros((1, g), jnp.float32))
        self.used_var = TileStats(jnp.ones((1, g), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        g = self.num_groups
        xg = x.reshape(b, h, w, g, c // g)
        mean = xg.mean(axis=(1, 2, 4))
        sq = jnp.square(xg).mean(axis=(1, 2, 4))
        pooled_mean = jnp.broadcast_to(mean.mean(axis=0, keepdims=True), (b, g))
        pooled_sq = jnp.broadcast_to(sq.mean(axis=0, keepdims=True), (b, g))
        mode = self.mode[...]
        mean_used = jnp.where(mode == POOLED, pooled_mean, mean)
        var_used = jnp.maximum(jnp.where(mode == POOLED, pooled_sq, sq) - jnp.square(mean_used), 0.0)
        crop_var = jnp.maximum(sq - jnp.square(mean), 0.0).mean(axis=0, keepdims=True)
        mean_used = jnp.where(mode == CROP_MEAN, pooled_mean, mean_used)
        var_used = jnp.where(mode == CROP_MEAN, jnp.broadcast_to(crop_var, (b, g)), var_used)
        mean_used = jnp.where(mode == FROZEN, self.frozen_mean[...][None], mean_used)
        var_used = jnp.where(mode == FROZEN, self.frozen_var[...][None], var_used)
        self.used_mean.value, self.used_var.value = mean_used, var_used
        inv = jax.lax.rsqrt(var_used + self.epsilon)[:, None, None, :, None]
        y = ((xg - mean_used[:, None, None, :, None]) * inv).reshape(b, h, w, c)
        if self.scale is not None:
            y = y * self.scale[...].reshape(1, 1, 1, c)
        if self.bias is not None:
            y = y + self.bias[...].reshape(1, 1, 1, c)
        return y

    def stats(self) -> tuple[jax.Array, ...]:
        """The ``(mean, var)`` ``(G,)`` the last call used for its first input."""
        return self.used_mean[...][0], self.used_var[...][0]

    def freeze(self, stats: tuple[np.ndarray, ...]) -> None:
        self.frozen_mean.value = jnp.asarray(stats[0], jnp.float32)
        self.frozen_var.value = jnp.asarray(stats[1], jnp.float32)


class ContextPooledLinear(nnx.Module):
    """An ``nnx.Linear`` on spatially pooled features ``(B, C)`` whose input can be shared:
    ``PER_INPUT`` each row, ``POOLED`` / ``CROP_MEAN`` the batch mean, ``FROZEN`` the stored
    image-level ``(C,)``.
    """

    def __init__(self, linear: nnx.Linear):
        self.linear = linear
        c = linear.in_features
        self.frozen_input = FrozenStats(jnp.zeros((c,), jnp.float32))
        self.mode = FrozenStats(jnp.asarray(PER_INPUT, jnp.int32))
        self.used_input = TileStats(jnp.zeros((1, c), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        mode = self.mode[...]
        pooled = jnp.broadcast_to(x.mean(axis=0, keepdims=True), x.shape)
        used = jnp.where((mode == POOLED) | (mode == CROP_MEAN), pooled, x)
        used = jnp.where(mode == FROZEN, jnp.broadcast_to(self.frozen_input[...], x.shape), used)
        self.used_input.value = used
        return self.linear(used)

    def stats(self) -> tuple[jax.Array, ...]:
        """The pooled input ``(C,)`` the last call used for its first row."""
        return (self.used_input[...][0],)

    def freeze(self, stats: tuple[np.ndarray, ...]) -> None:
        self.frozen_input.value = jnp.asarray(stats[0], jnp.float32)


ContextLayer = ContextGroupNorm | ContextPooledLinear
# SIMNet's layers that read the spatial mean of the bottleneck (per-sample PSF and its variance,
# the pattern modulation and the pattern-parameter variances).
POOLED_INPUT_LAYERS = ("psf_hidden", "psf_logvar_hidden", "pattern_hidden")


def get_path(root: nnx.Module, path: tuple) -> nnx.Module:
    """The sub-module of ``root`` at ``path`` (attribute names and list indices)."""
    node = root
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def _replace(root: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = get_path(root, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def with_context_layers(model: nnx.Module) -> tuple[nnx.Module, list[tuple]]:
    """A copy of ``model`` (sharing nothing with it) with every ``nnx.GroupNorm`` replaced by a
    :class:`ContextGroupNorm` and the :data:`POOLED_INPUT_LAYERS` by :class:`ContextPooledLinear`,
    and the paths of those layers (a fixed order; see :func:`get_path`)."""
    model = nnx.clone(model)
    targets = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.GroupNorm):
            targets.append((tuple(path), ContextGroupNorm(node)))
        elif (isinstance(node, nnx.Linear) and len(path) == 1
              and path[0] in POOLED_INPUT_LAYERS):
            targets.append((tuple(path), ContextPooledLinear(node)))
    for path, layer in targets:
        _replace(model, path, layer)
    return model, [path for path, _ in targets]


def set_mode(layers: list[ContextLayer], mode: int,
             stats: list[tuple[np.ndarray, ...]] | None = None) -> None:
    """Put every layer in ``mode``; ``FROZEN`` needs ``stats``, one tuple per layer (as returned
    by the layers' ``stats()`` after a ``POOLED`` call)."""
    if mode == FROZEN and (stats is None or len(stats) != len(layers)):
        raise ValueError("FROZEN mode needs one statistics tuple per layer")
    for i, layer in enumerate(layers):
        layer.mode.value = jnp.asarray(mode, jnp.int32)
        if mode == FROZEN:
            layer.freeze(stats[i])
