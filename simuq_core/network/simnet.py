"""SIM reconstruction networks (Flax NNX).

:class:`SIMNet` maps the 9 normalised raw frames ``(B, F, H, W)`` to the physical components of the
forward model on the model grid (``rescale``× finer, ``Hh = rescale·H``):

- ``emitter`` ``(B, Hh, Wh)``: softplus, ≥ 0;
- ``light_pattern`` ``(B, F, Hh, Wh)``, mean over frames 1 at every pixel. ``lp_mode="parametric"``
  (default): ``1 + m·cos(2π k·x + φ + 2πp/P)`` per angle (:mod:`simuq_core.pattern.estimate`), with ``k``
  and ``φ`` estimated classically from the input frames (or passed in, as estimated once per
  image or dataset) and the modulation ``m`` per angle predicted from the pooled bottleneck
  features (starting at ``modulation_init``); ``lp_mode="free"``: ``F · softmax`` over frames of a
  per-pixel head (the original design; it cannot keep the pattern sinusoidal, and absorbs noise
  and emitter structure);
- ``psf`` ``(B, K, K)``: softmax over the ``K²`` taps (≥ 0, sums to 1). ``psf_mode="per_sample"``
  predicts one PSF per sample from the bottleneck features (starting at the Airy prior of the
  configured optics); ``"shared"`` learns one PSF for the whole dataset (broadcast over B);
- ``background`` ``(B, H, W)`` (optional): smooth (bottleneck resolution, bilinearly upsampled);

and, for the components in ``uq_targets``, *unbounded* log-variance maps predicted from decoder
**features** by small convolutional heads (docs/design.md §4.1): ``emitter_logvar`` ``(B, Hh, Wh)``,
``lp_logvar`` ``(B, F, Hh, Wh)`` (parametric mode: the log of the first-order pattern variance
from per-angle phase / modulation / wave-vector log-variances, ``pattern_logvar`` ``(B, A, 3)``,
predicted from the pooled features and the estimator's match strength), ``psf_logvar``
``(B, K, K)`` (the *relative* variance of each tap: ``Var p = p² · exp(logvar)``, so a PSF
variance can never dwarf the taps themselves, the failure of docs/design.md §4.3), and
``obs_logvar`` ``(B, H, W)`` (a per-pixel observation-noise map on
the camera grid, when ``obs_noise = poisson_gaussian_map``). Disabled targets have no head and no
output. The bias of every head starts at ``logvar_bias`` (chosen by the caller so that the bounded
log-variance starts at ``uq.logvar_init``).

The backbone is a U-Net working on the camera grid; it is swappable (``backbone`` names a class
in :data:`BACKBONES` with the same ``(B, H, W, C) -> features, bottleneck`` contract).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.baselines.wiener_jax import wiener_sim_jax
from simuq_core.optics.imaging import airy_psf, default_psf_size
from simuq_core.pattern.estimate import PatternEstimate, estimate_pattern
from simuq_core.pattern.maps import pattern_maps, pattern_variance

__all__ = [
    "BACKBONES",
    "DROPOUT_SITES",
    "LIGHT_PATTERNS",
    "PSF_MODES",
    "SIMNet",
    "SIMNetConfig",
    "UNET_UPSAMPLERS",
    "UNet",
    "UPSAMPLERS",
    "model_psf_size",
]

# Where MC dropout can mask features (``SIMNet(dropout_at=...)``): ``feats`` the U-Net output
# (camera grid), ``bottleneck`` the input of the pooled (pattern, PSF) and background heads, ``hr``
# the model-grid features right before the emitter / LP / log-variance heads, ``mid`` the U-Net
# bottleneck as its decoder reads it (the skip connections bypass it).
DROPOUT_SITES = ("feats", "bottleneck", "hr", "mid")


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nnx.Module):
    """Two 3×3 convolutions, each followed by GroupNorm and GELU. ``(B, H, W, Cin) -> (B, H, W, C)``."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.norm1 = nnx.GroupNorm(cout, num_groups=_groups(cout), rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=_groups(cout), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.gelu(self.norm1(self.conv1(x)))
        return nnx.gelu(self.norm2(self.conv2(x)))


UNET_UPSAMPLERS = ("transpose", "resize_conv")


class UNet(nnx.Module):
    """U-Net on the camera grid. ``(B, H, W, Cin) -> ((B, H, W, width), (B, H/2^d, W/2^d, Cb))``.

    ``H`` and ``W`` must be divisible by ``2**depth``. ``up`` is the decoder's 2× up-sampling:
    ``"transpose"`` a 2×2 stride-2 transposed convolution (each output pixel of a 2×2 block has its
    own kernel, so a learned block-periodic grid at the strides — 2 and 4 camera pixels — survives
    into the output: seen on real data), ``"resize_conv"`` bilinear 2× resize then a 3×3
    convolution (Odena et al. 2016, "Deconvolution and checkerboard artifacts"): the same kernel at
    every output pixel, no grid by construction.
    """

    def __init__(self, cin: int, width: int, depth: int, *, up: str = "transpose", rngs: nnx.Rngs):
        if up not in UNET_UPSAMPLERS:
            raise ValueError(f"U-Net up-sampling must be one of {UNET_UPSAMPLERS}, got {up!r}")
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.up_mode = up
        self.out_features = width
        self.bottleneck_features = chans[depth]
        self.enc = nnx.List(
            [ConvBlock(cin if i == 0 else chans[i - 1], chans[i], rngs=rngs) for i in range(depth)]
        )
        self.mid = ConvBlock(chans[depth - 1], chans[depth], rngs=rngs)
        self.up = nnx.List(
            [nnx.ConvTranspose(chans[i + 1], chans[i], (2, 2), strides=(2, 2), rngs=rngs)
             if up == "transpose" else nnx.Conv(chans[i + 1], chans[i], (3, 3), rngs=rngs)
             for i in reversed(range(depth))]
        )
        self.dec = nnx.List(
            [ConvBlock(2 * chans[i], chans[i], rngs=rngs) for i in reversed(range(depth))]
        )

    def __call__(self, x: jax.Array,
                 mid_fn: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
        """``mid_fn`` (e.g. dropout) transforms the bottleneck as the decoder reads it; the
        returned bottleneck is the untransformed one."""
        b, h, w, _ = x.shape
        if h % 2**self.depth or w % 2**self.depth:
            raise ValueError(
                f"input {h}x{w} must be divisible by 2**depth = {2**self.depth} (model.depth)"
            )
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        bottleneck = self.mid(x)
        x = bottleneck if mid_fn is None else mid_fn(bottleneck)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            if self.up_mode == "resize_conv":
                x = jax.image.resize(x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]),
                                     "bilinear")
            x = dec(jnp.concatenate([up(x), skip], axis=-1))
        return x, bottleneck


BACKBONES = {"unet": UNet}


def _dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout: each element kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``, so the expected activation is unchanged."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _identity(x: jax.Array) -> jax.Array:
    return x


def _space_to_depth(x: jax.Array, r: int) -> jax.Array:
    """Inverse pixel shuffle ``(B, r·H, r·W, C) -> (B, H, W, C·r²)`` (same channel order)."""
    b, hh, ww, c = x.shape
    x = x.reshape(b, hh // r, r, ww // r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hh // r, ww // r, r * r * c)


def _depth_to_space(x: jax.Array, r: int) -> jax.Array:
    """Pixel shuffle ``(B, H, W, C·r²) -> (B, r·H, r·W, C)``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))




def icnr_init(base_init=None, r: int = 2):
    """ICNR initialisation of a sub-pixel convolution (Aitken et al. 2017, arXiv:1707.02937).

    The ``r²`` output channels that :func:`_depth_to_space` scatters over one ``r × r`` block share
    one kernel at initialisation, so the first pixel shuffle is a nearest-neighbour upsampling of
    one convolution: no checkerboard at the model-grid period to unlearn. Channel ``s·C + c`` of
    the ``C·r²`` outputs lands at sub-pixel ``s`` of feature ``c`` (the slow index is the sub-pixel).
    """

    base_init = base_init or nnx.initializers.lecun_normal()

    def init(key, shape, dtype=jnp.float32):
        *spatial, cin, cout = shape
        if cout % (r * r):
            raise ValueError(f"ICNR needs output channels divisible by r² = {r * r}, got {cout}")
        base = base_init(key, (*spatial, cin, cout // (r * r)), dtype)
        return jnp.tile(base, (1,) * (len(shape) - 1) + (r * r,))

    return init


class _LogvarHead(nnx.Module):
    """3×3 conv + GELU + 1×1 conv on features; the last bias starts at ``bias``."""

    def __init__(self, cin: int, cout: int, bias: float, *, rngs: nnx.Rngs):
        hidden = max(cin // 2, 4)
        self.conv = nnx.Conv(cin, hidden, (3, 3), rngs=rngs)
        self.out = nnx.Conv(hidden, cout, (1, 1), kernel_init=nnx.initializers.normal(1e-3),
                            bias_init=nnx.initializers.constant(bias), rngs=rngs)

    def __call__(self, feats: jax.Array) -> jax.Array:
        return self.out(nnx.gelu(self.conv(feats)))


def model_psf_size(optics_na: float, wavelength_nm: float, model_pixel_nm: float,
                   configured: int | None) -> int:
    return configured or default_psf_size(optics_na, wavelength_nm, model_pixel_nm)


@dataclass(frozen=True)
class SIMNetConfig:
    """Everything that shapes a :class:`SIMNet` (built from params by
    :func:`simuq_core.network.forward.build_model`).

    Geometry: ``n_frames``, ``rescale`` (model grid / camera grid), ``width``, ``depth`` (U-Net),
    ``psf_size`` (taps). Choices, each a key of a registry: ``backbone`` (:data:`BACKBONES`),
    ``upsample`` (:data:`UPSAMPLERS`, camera grid -> model grid), ``unet_upsample``
    (:data:`UNET_UPSAMPLERS`), ``lp_mode`` (:data:`LIGHT_PATTERNS`), ``psf_mode``
    (:data:`PSF_MODES`). Uncertainty: ``uq_targets`` (components with a log-variance head),
    ``logvar_bias`` (their starting bias), ``logvar_init`` (the bounded log-variance it gives),
    ``obs_map`` / ``obs_map_residual`` (the camera-noise map head and its residual-energy input),
    ``obs_noise_raw`` (starting Poisson-Gaussian coefficients, or ``None``), ``dropout`` /
    ``dropout_at`` (MC dropout). Inputs: ``wiener_input`` / ``wiener_w`` (the classical Wiener
    image as extra input). Pattern: ``n_angles``, ``otf_cutoff`` (cycles per camera px),
    ``k_range`` (the search band), ``modulation_init``.
    """

    n_frames: int
    rescale: int
    width: int
    depth: int
    psf_size: int
    uq_targets: tuple[str, ...]
    obs_map: bool
    logvar_bias: float
    obs_map_residual: bool = False
    background: bool = True
    psf_mode: str = "per_sample"
    obs_noise_raw: tuple[float, float] | None = None
    backbone: str = "unet"
    upsample: str = "icnr"
    unet_upsample: str = "transpose"
    wiener_input: bool = False
    wiener_w: float = 0.05
    lp_mode: str = "free"
    n_angles: int = 3
    otf_cutoff: float = 0.33
    k_range: tuple[float, float] = (0.08, 0.45)
    modulation_init: float = 0.8
    logvar_init: float = -4.0
    dropout: float = 0.0
    dropout_at: tuple[str, ...] = ("feats", "bottleneck", "hr")

    def validate(self) -> None:
        """A :class:`ValueError` naming the first impossible choice."""
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.dropout_at) - set(DROPOUT_SITES)
        if unknown or not self.dropout_at:
            raise ValueError(f"dropout_at must be a non-empty subset of {DROPOUT_SITES}, "
                             f"got {self.dropout_at}")
        for name, value, registry in (("backbone", self.backbone, BACKBONES),
                                      ("upsample", self.upsample, UPSAMPLERS),
                                      ("lp_mode", self.lp_mode, LIGHT_PATTERNS),
                                      ("psf_mode", self.psf_mode, PSF_MODES)):
            if value not in registry:
                raise ValueError(f"{name} must be one of {tuple(registry)}, got {value!r}")
        if self.lp_mode == "parametric" and self.n_frames % self.n_angles:
            raise ValueError(f"{self.n_frames} frames do not split into n_angles={self.n_angles}")


# -- registries of the parts a config chooses -------------------------------------------------
# Each builder sets the part's parameters on the network, in a fixed order: parameter
# initialisation draws keys from one ``nnx.Rngs`` stream, so the order of construction is part
# of what makes a seed reproduce a model.


def _subpixel_conv(icnr: bool):
    def build(cfg: SIMNetConfig, rngs: nnx.Rngs) -> nnx.Conv:
        init = icnr_init(r=cfg.rescale) if icnr else nnx.initializers.lecun_normal()
        return nnx.Conv(cfg.width, cfg.width * cfg.rescale**2, (3, 3), kernel_init=init, rngs=rngs)
    return build


def _resize_conv(cfg: SIMNetConfig, rngs: nnx.Rngs) -> nnx.Conv:
    # Resize-convolution (Odena et al. 2016): bilinear upsampling, then a 3×3 convolution.
    return nnx.Conv(cfg.width, cfg.width, (3, 3), rngs=rngs)


def _shuffle_forward(conv: nnx.Conv, feats: jax.Array, r: int) -> jax.Array:
    return _depth_to_space(nnx.gelu(conv(feats)), r)


def _resize_forward(conv: nnx.Conv, feats: jax.Array, r: int) -> jax.Array:
    b, h, w, c = feats.shape
    return nnx.gelu(conv(jax.image.resize(feats, (b, r * h, r * w, c), "linear")))


#: camera grid -> model grid: name -> (builder of the convolution, forward pass through it)
UPSAMPLERS: dict[str, tuple[Callable, Callable]] = {
    "icnr": (_subpixel_conv(icnr=True), _shuffle_forward),
    "pixel_shuffle": (_subpixel_conv(icnr=False), _shuffle_forward),
    "resize_conv": (_resize_conv, _resize_forward),
}


def _free_pattern_heads(net: SIMNet, cfg: SIMNetConfig, cb: int, rngs: nnx.Rngs) -> None:
    net.lp_head = nnx.Conv(cfg.width, cfg.n_frames, (1, 1), kernel_init=nnx.initializers.normal(1e-2),
                           rngs=rngs)
    net.pattern_hidden = net.modulation_head = None


def _parametric_pattern_heads(net: SIMNet, cfg: SIMNetConfig, cb: int, rngs: nnx.Rngs) -> None:
    net.lp_head = None
    net.pattern_hidden = nnx.Linear(cb, 64, rngs=rngs)
    m0 = float(np.log(cfg.modulation_init / (1.0 - cfg.modulation_init)))
    net.modulation_head = nnx.Linear(64, cfg.n_angles, kernel_init=nnx.initializers.zeros,
                                     bias_init=nnx.initializers.constant(m0), rngs=rngs)


def _free_pattern_logvar(net: SIMNet, cfg: SIMNetConfig, rngs: nnx.Rngs) -> None:
    net.lp_logvar_head = (_LogvarHead(cfg.width, cfg.n_frames, cfg.logvar_bias, rngs=rngs)
                          if "lp" in cfg.uq_targets else None)
    net.pattern_logvar_head = None


def _parametric_pattern_logvar(net: SIMNet, cfg: SIMNetConfig, rngs: nnx.Rngs) -> None:
    # Per angle, log-variances of phase (rad²), modulation and |k| ((cycles/px)²); the wave-vector
    # term starts at the phase term's size 8 camera pixels from the centre.
    net.lp_logvar_head = None
    if "lp" not in cfg.uq_targets:
        net.pattern_logvar_head = None
        return
    k0 = cfg.logvar_init - float(np.log(4.0 * np.pi**2 * 8.0**2))
    bias = np.tile(np.asarray([cfg.logvar_init, cfg.logvar_init, k0], np.float32), cfg.n_angles)
    net.pattern_logvar_head = nnx.Linear(64 + cfg.n_angles, 3 * cfg.n_angles,
                                         kernel_init=nnx.initializers.normal(1e-3),
                                         bias_init=lambda *_: jnp.asarray(bias), rngs=rngs)


#: light pattern: mode -> (builder of the mean heads, builder of the log-variance heads)
LIGHT_PATTERNS: dict[str, tuple[Callable, Callable]] = {
    "free": (_free_pattern_heads, _free_pattern_logvar),
    "parametric": (_parametric_pattern_heads, _parametric_pattern_logvar),
}


def _per_sample_psf(net: SIMNet, cfg: SIMNetConfig, cb: int, prior_logits: np.ndarray,
                    rngs: nnx.Rngs) -> None:
    net.psf_hidden = nnx.Linear(cb, 64, rngs=rngs)
    net.psf_head = nnx.Linear(64, cfg.psf_size**2, kernel_init=nnx.initializers.zeros,
                              bias_init=lambda *_: jnp.asarray(prior_logits.ravel()), rngs=rngs)


def _shared_psf(net: SIMNet, cfg: SIMNetConfig, cb: int, prior_logits: np.ndarray, rngs: nnx.Rngs) -> None:
    net.psf_logits = nnx.Param(jnp.asarray(prior_logits))


#: PSF: mode -> builder of its parameters (``per_sample``: a head on the pooled bottleneck;
#: ``shared``: one PSF for the dataset)
PSF_MODES: dict[str, Callable] = {"per_sample": _per_sample_psf, "shared": _shared_psf}


class SIMNet(nnx.Module):
    """The physics-informed SIM network (module docstring). Call with ``(B, F, H, W)``."""

    def __init__(self, cfg: SIMNetConfig, psf_prior: np.ndarray, *, rngs: nnx.Rngs):
        cfg.validate()
        if psf_prior.shape != (cfg.psf_size, cfg.psf_size):
            raise ValueError(f"psf_prior shape {psf_prior.shape} != ({cfg.psf_size}, {cfg.psf_size})")
        self.n_frames, self.rescale, self.psf_size = cfg.n_frames, cfg.rescale, cfg.psf_size
        self.uq_targets, self.psf_mode = tuple(cfg.uq_targets), cfg.psf_mode
        # MC dropout (epistemic uncertainty, :mod:`simuq_core.uncertainty.epistemic`): a key passed to
        # ``__call__`` drops the features of the ``dropout_at`` sites (:data:`DROPOUT_SITES`) at
        # this rate; without a key the network is deterministic (the mean network, what
        # ``predict`` runs by default).
        self.dropout = float(cfg.dropout)
        self.dropout_at = tuple(site for site in DROPOUT_SITES if site in cfg.dropout_at)
        # With ``wiener_input`` the network also reads the classical Wiener SIM image of its input
        # (:func:`simuq_core.baselines.wiener_jax.wiener_sim_jax`, from the same pattern estimate):
        # on the camera grid as r² space-to-depth channels of the U-Net input, and on the model
        # grid as one more channel of the high-resolution block.
        self.wiener_input, self.wiener_w = bool(cfg.wiener_input), float(cfg.wiener_w)
        self.upsample, self.lp_mode, self.n_angles = cfg.upsample, cfg.lp_mode, cfg.n_angles
        self.modulation_init = float(cfg.modulation_init)
        self.otf_cutoff, self.k_range = float(cfg.otf_cutoff), (float(cfg.k_range[0]), float(cfg.k_range[1]))
        cb = self._build_trunk(cfg, rngs)
        LIGHT_PATTERNS[cfg.lp_mode][0](self, cfg, cb, rngs)
        prior_logits = np.log(np.maximum(psf_prior, 1e-12 * psf_prior.max())).astype(np.float32)
        PSF_MODES[cfg.psf_mode](self, cfg, cb, prior_logits, rngs)
        self.background_head = (
            nnx.Conv(cb, 1, (1, 1), kernel_init=nnx.initializers.normal(1e-3),
                     bias_init=nnx.initializers.constant(-4.0), rngs=rngs)
            if cfg.background else None
        )
        self._build_uncertainty_heads(cfg, cb, rngs)

    def _build_trunk(self, cfg: SIMNetConfig, rngs: nnx.Rngs) -> int:
        """Backbone, camera -> model grid, the model-grid block and the emitter head; returns the
        bottleneck's channel count (the pooled heads' input)."""
        extra_lr = cfg.rescale**2 if self.wiener_input else 0
        self.backbone = BACKBONES[cfg.backbone](cfg.n_frames + extra_lr, cfg.width, cfg.depth,
                                                up=cfg.unet_upsample, rngs=rngs)
        self.to_hr = UPSAMPLERS[cfg.upsample][0](cfg, rngs)
        self.hr_block = ConvBlock(cfg.width + int(self.wiener_input), cfg.width, rngs=rngs)
        self.emitter_head = nnx.Conv(cfg.width, 1, (1, 1), rngs=rngs)
        return self.backbone.bottleneck_features

    def _build_uncertainty_heads(self, cfg: SIMNetConfig, cb: int, rngs: nnx.Rngs) -> None:
        """A log-variance head for each component in ``uq_targets``, and the camera-noise map."""
        width, bias = cfg.width, cfg.logvar_bias
        self.emitter_logvar_head = (_LogvarHead(width, 1, bias, rngs=rngs) if "emitter" in cfg.uq_targets
                                    else None)
        LIGHT_PATTERNS[cfg.lp_mode][1](self, cfg, rngs)
        if "psf" in cfg.uq_targets:
            self.psf_logvar_hidden = nnx.Linear(cb, 64, rngs=rngs)
            self.psf_logvar_head = nnx.Linear(64, cfg.psf_size**2, kernel_init=nnx.initializers.normal(1e-3),
                                              bias_init=nnx.initializers.constant(bias), rngs=rngs)
        else:
            self.psf_logvar_hidden = self.psf_logvar_head = None
        # With ``obs_map_residual`` the head also reads one more channel, the log local residual
        # energy, which needs the mean reconstruction: :func:`simuq_core.network.forward.predict`
        # applies it through :meth:`obs_logvar` after propagating.
        self.obs_map_residual = bool(cfg.obs_map and cfg.obs_map_residual)
        self.obs_logvar_head = (_LogvarHead(width + int(self.obs_map_residual), 1, bias, rngs=rngs)
                                if cfg.obs_map else None)
        # Unconstrained Poisson-Gaussian coefficients (a_raw, b_raw) of the camera noise model.
        self.obs_noise_raw = (nnx.Param(jnp.asarray(cfg.obs_noise_raw, jnp.float32))
                              if cfg.obs_noise_raw is not None else None)

    def estimate_pattern(self, x: jax.Array) -> PatternEstimate:
        """The classical pattern estimate this network uses for ``x`` ``(B, F, H, W)``."""
        return estimate_pattern(x, self.n_angles, self.otf_cutoff, self.k_range)

    def __call__(self, x: jax.Array, pattern: PatternEstimate | None = None,
                 wiener: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> dict[str, jax.Array]:
        """``x``: ``(B, F, H, W)`` normalised frames -> dict of components (module docstring).

        ``pattern``: a precomputed :meth:`estimate_pattern` for ``x`` (parametric mode; estimated
        here when omitted). ``wiener``: the Wiener SIM image ``(B, rH, rW)`` the network reads
        (``wiener_input``), e.g. a tile of the whole image's (:meth:`wiener_image`); computed from
        ``x`` here when omitted. ``dropout_key``: a PRNG key that switches on dropout (training and
        MC-dropout sampling; ignored when the network was built with ``dropout = 0``).
        """
        b, f, h, w = x.shape
        if f != self.n_frames:
            raise ValueError(f"expected {self.n_frames} frames, got input of shape {x.shape}")
        inputs = x.transpose(0, 2, 3, 1)
        if self.wiener_input:
            if wiener is None:
                if pattern is None:
                    pattern = self.estimate_pattern(x)
                wiener = self.wiener_image(x, pattern)
            wiener = jax.lax.stop_gradient(wiener)[..., None]  # (B, rH, rW, 1)
            inputs = jnp.concatenate([inputs, _space_to_depth(wiener, self.rescale)], axis=-1)
        drop = self._site_dropout(dropout_key)
        feats, bottleneck = self.backbone(inputs, mid_fn=drop.get("mid"))
        feats = drop.get("feats", _identity)(feats)
        bottleneck = drop.get("bottleneck", _identity)(bottleneck)
        hr = self._to_model_grid(feats)
        if wiener is not None:
            hr = jnp.concatenate([hr, wiener], axis=-1)
        hr = drop.get("hr", _identity)(self.hr_block(hr))
        out = {"emitter": nnx.softplus(self.emitter_head(hr)[..., 0])}
        pooled = bottleneck.mean(axis=(1, 2))
        if self.lp_head is not None:
            out["light_pattern"] = f * nnx.softmax(self.lp_head(hr), axis=-1).transpose(0, 3, 1, 2)
        else:
            parametric, pattern_hidden = self._parametric_pattern(x, pooled, pattern)
            out |= parametric
        k = self.psf_size
        if self.psf_mode == "per_sample":
            logits = self.psf_head(nnx.gelu(self.psf_hidden(pooled)))
        else:
            logits = jnp.broadcast_to(self.psf_logits[...].ravel(), (b, k * k))
        out["psf"] = nnx.softmax(logits, axis=-1).reshape(b, k, k)
        if self.background_head is not None:
            bg = nnx.softplus(self.background_head(bottleneck))
            out["background"] = jax.image.resize(bg, (b, h, w, 1), "linear")[..., 0]
        if self.emitter_logvar_head is not None:
            out["emitter_logvar"] = self.emitter_logvar_head(hr)[..., 0]
        if self.lp_logvar_head is not None:
            out["lp_logvar"] = self.lp_logvar_head(hr).transpose(0, 3, 1, 2)
        elif self.pattern_logvar_head is not None:
            out |= self._pattern_logvar(out, pattern_hidden)
        if self.psf_logvar_head is not None:
            hidden = nnx.gelu(self.psf_logvar_hidden(pooled))
            out["psf_logvar"] = self.psf_logvar_head(hidden).reshape(b, k, k)
        if self.obs_logvar_head is not None and not self.obs_map_residual:
            out["obs_logvar"] = self.obs_logvar_head(feats)[..., 0]
        elif self.obs_logvar_head is not None:
            out["obs_features"] = feats
        return out

    def _site_dropout(self, key: jax.Array | None) -> dict[str, Callable[[jax.Array], jax.Array]]:
        """Site name -> its dropout function, for the configured sites (``{}``: deterministic).
        Site ``i`` of :data:`DROPOUT_SITES` draws its mask from ``split(key, 4)[i]`` (the same keys
        as ``split(key, 3)`` for the first three), so each site's mask does not depend on which
        other sites are on."""
        if key is None or self.dropout <= 0.0:
            return {}
        keys = jax.random.split(key, len(DROPOUT_SITES))
        return {site: partial(_dropout, rate=self.dropout, key=keys[DROPOUT_SITES.index(site)])
                for site in self.dropout_at}

    def wiener_image(self, x: jax.Array, pattern: PatternEstimate) -> jax.Array:
        """The Wiener SIM image the network reads, ``(B, rH, rW)`` (no gradient to the pattern)."""
        pattern = PatternEstimate(*(jax.lax.stop_gradient(jnp.asarray(a, jnp.float32))
                                    for a in pattern))
        return wiener_sim_jax(x, pattern, self.modulation_init, self.otf_cutoff, self.rescale,
                              self.wiener_w)

    def _to_model_grid(self, feats: jax.Array) -> jax.Array:
        """Camera-grid features ``(B, H, W, C)`` -> model-grid features ``(B, rH, rW, C)``."""
        return UPSAMPLERS[self.upsample][1](self.to_hr, feats, self.rescale)

    def obs_logvar(self, feats: jax.Array, local_energy: jax.Array) -> jax.Array:
        """Observation-noise log-variance map ``(B, H, W)`` from the camera-grid features
        ``(B, H, W, C)`` and the local residual energy ``(B, 1, H, W)`` (``obs_map_residual``)."""
        log_energy = jnp.log(local_energy[:, 0, :, :, None] + 1e-12)
        return self.obs_logvar_head(jnp.concatenate([feats, log_energy], axis=-1))[..., 0]


    def _parametric_pattern(self, x, pooled, pattern):
        b, f, h, w = x.shape
        if pattern is None:
            pattern = self.estimate_pattern(x)
        pattern = PatternEstimate(*(jax.lax.stop_gradient(jnp.asarray(a, jnp.float32))
                                    for a in pattern))
        hidden = nnx.gelu(self.pattern_hidden(pooled))
        m = nnx.sigmoid(self.modulation_head(hidden))
        n_phases = f // self.n_angles
        return {
            "light_pattern": pattern_maps(pattern, m, n_phases, (h, w), self.rescale),
            "pattern_k": pattern.k, "pattern_phase": pattern.phase,
            "pattern_contrast": pattern.contrast, "pattern_origin": pattern.origin,
            "pattern_modulation": m,
        }, hidden

    def _pattern_logvar(self, out, hidden):
        contrast = out["pattern_contrast"]
        b, f, hh, wh = out["light_pattern"].shape
        # How clearly the pattern stood out: -log(1 - |match|) grows as the estimate sharpens.
        sharp = -jnp.log(jnp.clip(1.0 - contrast, 1e-6, 1.0))
        raw = self.pattern_logvar_head(jnp.concatenate([hidden, sharp], axis=-1))
        raw = raw.reshape(b, self.n_angles, 3)
        v = jnp.exp(raw)
        pattern = PatternEstimate(out["pattern_k"], out["pattern_phase"], contrast,
                                  out["pattern_origin"])
        var = pattern_variance(pattern, out["pattern_modulation"],
                               v[..., 0], v[..., 1], v[..., 2], f // self.n_angles,
                               (hh // self.rescale, wh // self.rescale), self.rescale)
        return {"pattern_logvar": raw, "lp_logvar": jnp.log(var + 1e-12)}


def airy_prior(na: float, wavelength_nm: float, model_pixel_nm: float, size: int) -> np.ndarray:
    """The Airy PSF the PSF head starts from, ``(size, size)``."""
    return airy_psf(size, na, wavelength_nm, model_pixel_nm)
