"""The sections of ``params.yaml``, one typed model each, and :class:`Params`, all of them.

Every model forbids unknown keys and bounds its values, so a typo in ``params.yaml`` or in
``dvc exp run -S`` fails at stage start-up with the dotted key named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from simuq_core.config.base import _Strict
from simuq_core.config.microscope import MicroscopeParams
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px

__all__ = [
    "CalibrateParams",
    "ExportDebugParams",
    "FinetuneParams",
    "ModelParams",
    "NoiseParams",
    "OODParams",
    "ObjectParams",
    "OpticsPrior",
    "Params",
    "PredictParams",
    "PsfParams",
    "SimulateParams",
    "TrainParams",
    "UQParams",
]


class PsfParams(_Strict):
    """Optics of the simulated microscope (BioSR-like defaults, docs/design.md §7)."""

    kind: Literal["airy", "gaussian"] = "airy"
    na: float = Field(1.3, gt=0.0, le=1.7, description="numerical aperture")
    wavelength_nm: float = Field(488.0, gt=100.0, lt=2000.0)
    lr_pixel_nm: float = Field(62.6, gt=1.0, lt=1000.0, description="camera pixel at the sample")
    size: int | None = Field(
        None, ge=3, le=201, description="kernel size in HR pixels (odd); null = auto"
    )
    gaussian_fwhm_nm: float | None = Field(
        None, gt=0.0, description="FWHM for kind=gaussian; null = Airy-equivalent 0.51·λ/NA"
    )
    na_jitter: float = Field(0.0, ge=0.0, lt=0.5, description="relative per-sample NA jitter")

    @model_validator(mode="after")
    def _odd_size(self) -> PsfParams:
        if self.size is not None and self.size % 2 == 0:
            raise ValueError(f"size must be odd (the PSF is centred on a pixel), got {self.size}")
        return self


class ObjectParams(_Strict):
    """How many objects of each kind a sample holds: ``[min, max]`` (inclusive, uniform)."""

    curves: tuple[int, int] = (2, 6)
    tubes: tuple[int, int] = (0, 2)
    rings: tuple[int, int] = (0, 3)
    blobs: tuple[int, int] = (1, 6)
    filament_width_nm: float = Field(30.0, gt=0.0)
    tube_diameter_nm: tuple[float, float] = (80.0, 200.0)
    ring_radius_nm: tuple[float, float] = (80.0, 250.0)
    blob_sigma_nm: tuple[float, float] = (30.0, 120.0)
    # Dense point texture (vesicles, single molecules); off by default so the default data do not
    # change (its draws are skipped entirely when puncta max is 0).
    puncta: tuple[int, int] = (0, 0)
    puncta_sigma_nm: tuple[float, float] = (15.0, 40.0)

    @model_validator(mode="after")
    def _ranges(self) -> ObjectParams:
        for name in ("curves", "tubes", "rings", "blobs", "puncta", "tube_diameter_nm",
                     "ring_radius_nm", "blob_sigma_nm", "puncta_sigma_nm"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} must be [min, max] with 0 <= min <= max, got {[lo, hi]}")
        if max(self.curves[1], self.tubes[1], self.rings[1], self.blobs[1], self.puncta[1]) == 0:
            raise ValueError("at least one object kind needs max > 0 (the sample would be empty)")
        return self


class NoiseParams(_Strict):
    """Camera and photon noise (docs/design.md §7). Electrons ``e``; ADU = gain·e + offset."""

    photons: float = Field(200.0, gt=0.0, description="mean expected photons per LR pixel on structure")
    photon_range: float = Field(
        1.0, ge=1.0, le=1000.0,
        description="per-sample photon budget drawn log-uniformly in [photons/range, photons] "
        "(signal and background alike); 1 = every sample at `photons`",
    )
    background_photons: float = Field(5.0, ge=0.0)
    read_noise_e: float = Field(5.0, ge=0.0)
    hetero_noise_e: float = Field(
        20.0, ge=0.0, description="extra Gaussian σ (e-) at the peak of the smooth spatial mask"
    )
    hetero_blobs: int = Field(3, ge=0, le=50, description="Gaussian blobs in the noise mask")
    gain_adu_per_e: float = Field(2.0, gt=0.0)
    offset_adu: float = Field(100.0, ge=0.0)
    norm_percentile: float = Field(
        99.9, gt=50.0, le=100.0, description="loader scale: this percentile of (raw - offset)"
    )


class SimulateParams(_Strict):
    """The ``simulate`` stage: synthetic SIM data with known heteroscedastic noise."""

    seed: int = Field(0, ge=0)
    n_samples: int = Field(..., ge=1, description="training samples")
    n_val: int = Field(..., ge=1)
    n_test: int = Field(..., ge=1)
    lr_h: int = Field(..., ge=8, le=4096)
    lr_w: int = Field(..., ge=8, le=4096)
    hr_factor: int = Field(..., ge=1, le=8)
    n_angles: int = Field(3, ge=1, le=8)
    n_phases: int = Field(3, ge=2, le=8)
    pattern_period_lr: float | None = Field(
        5.0, gt=0.0, description="pattern period in LR pixels (or set pattern_k_frac)"
    )
    pattern_k_frac: float | None = Field(
        None, gt=0.0, description="pattern frequency as a fraction of the OTF cut-off 2NA/λ"
    )
    period_jitter: float = Field(0.0, ge=0.0, lt=0.5)
    modulation: float = Field(0.8, ge=0.0, le=1.0)
    modulation_jitter: float = Field(0.0, ge=0.0, lt=1.0)
    psf: PsfParams = PsfParams()
    objects: ObjectParams = ObjectParams()
    noise: NoiseParams = NoiseParams()

    @model_validator(mode="after")
    def _pattern(self) -> SimulateParams:
        if (self.pattern_period_lr is None) == (self.pattern_k_frac is None):
            raise ValueError("set exactly one of pattern_period_lr and pattern_k_frac (the other null)")
        shortest = self.period_lr * (1.0 - self.period_jitter)
        if shortest <= 2.0:
            raise ValueError(
                f"pattern period {shortest:.3g} LR px (after jitter) is at or below the Nyquist "
                "limit of 2 LR px: the camera cannot sample the pattern"
            )
        return self

    @property
    def period_lr(self) -> float:
        """Pattern period in LR pixels, whichever way it was given."""
        if self.pattern_period_lr is not None:
            return self.pattern_period_lr
        cutoff = otf_cutoff_cycles_per_px(self.psf.na, self.psf.wavelength_nm, self.psf.lr_pixel_nm)
        return 1.0 / (self.pattern_k_frac * cutoff)

    @property
    def n_frames(self) -> int:
        return self.n_angles * self.n_phases

    @property
    def hr_pixel_nm(self) -> float:
        return self.psf.lr_pixel_nm / self.hr_factor


UQTarget = Literal["emitter", "lp", "psf"]


class UQParams(_Strict):
    """Aleatoric-uncertainty settings shared by both training stages (docs/design.md §2, §4, §5)."""

    targets: list[UQTarget] = Field(
        default_factory=lambda: ["emitter", "lp", "psf"],
        description="components that get a log-variance head (any subset, may be empty)",
    )
    logvar_min: float = Field(-10.0, ge=-30.0, le=10.0)
    logvar_max: float = Field(3.0, ge=-30.0, le=10.0)
    logvar_init: float = Field(-4.0, ge=-30.0, le=10.0, description="bias init of the heads")
    logvar_bound: Literal["hard", "soft"] = Field(
        "soft", description="hard = the original clamp; soft = smooth bound with non-zero gradient"
    )
    var_floor: float = Field(1e-6, ge=0.0, lt=1.0)
    psf_var_weight: float = Field(1.0, ge=0.0, description="weight of PSF terms in Var(rec); 0 off")
    pool_var: Literal["exact", "independent"] = Field(
        "exact", description="exact merged-kernel rule, or the original (biased) ablation"
    )
    obs_noise: Literal["none", "poisson_gaussian", "poisson_gaussian_map"] = Field(
        "poisson_gaussian_map",
        description="observation noise in Var(rec): none; a·rec + b; or a·rec + b + a per-pixel map",
    )
    obs_map_window: int = Field(
        5, ge=0, le=31,
        description="poisson_gaussian_map: the map head also reads the log of the leave-one-out "
        "local mean of the squared residual over this odd window (camera px; a classical local "
        "noise estimate, without the pixel itself); 0 = decoder features only",
    )
    nll_beta: float = Field(0.5, ge=0.0, le=1.0, description="β-NLL exponent; 0 = plain NLL")
    frame_covariance: Literal["diagonal", "full"] = Field(
        "diagonal",
        description="self-supervised likelihood of the 9 residuals of a camera pixel: diagonal "
        "(per-frame NLL) or full (the cross-frame covariance of every latent error, "
        "simuq_core/uncertainty/frame_covariance.py; separates emitter from camera noise; ~1.3x the step)",
    )
    detach_mean_in_var: bool = Field(
        False, description="stop the mean's gradient through the variance term"
    )
    aux_rec_weight: float = Field(0.0, ge=0.0)
    aux_rec_mode: Literal["l1", "ms-ssim", "l1+ms-ssim"] = "l1+ms-ssim"

    @model_validator(mode="after")
    def _bounds(self) -> UQParams:
        if self.obs_map_window and self.obs_map_window % 2 == 0:
            raise ValueError(f"obs_map_window must be odd (or 0), got {self.obs_map_window}")
        if self.logvar_min >= self.logvar_max:
            raise ValueError(
                f"logvar_min ({self.logvar_min}) must be < logvar_max ({self.logvar_max})"
            )
        if not self.logvar_min <= self.logvar_init <= self.logvar_max:
            raise ValueError("logvar_init must lie within [logvar_min, logvar_max]")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets has duplicates: {self.targets}")
        return self


class OpticsPrior(_Strict):
    """What the user knows of the microscope: the PSF head starts at this Airy PSF."""

    na: float = Field(1.3, gt=0.0, le=1.7)
    wavelength_nm: float = Field(488.0, gt=100.0, lt=2000.0)
    lr_pixel_nm: float = Field(62.6, gt=1.0, lt=1000.0)


class LightPatternParams(_Strict):
    """How the network gets the illumination (docs/design.md §1, §9; :mod:`simuq_core.pattern.estimate`)."""

    mode: Literal["parametric", "free"] = Field(
        "parametric",
        description="parametric: 1 + m·cos(2π k·x + φ) with k, φ estimated classically from the "
        "frames and m learned; free: 9 maps from a network head (F·softmax; the original design, "
        "kept as an ablation)",
    )
    n_angles: int = Field(3, ge=1, le=9, description="pattern orientations (frames are angle-major)")
    period_lr: float | None = Field(
        5.0, gt=2.0, lt=100.0,
        description="expected pattern period in camera pixels (a search prior); null = search all",
    )
    period_tolerance: float = Field(
        0.3, gt=0.0, lt=1.0, description="relative half-width of the period search window"
    )
    modulation_init: float = Field(0.8, gt=0.0, lt=1.0, description="starting modulation depth m")

    def k_range(self) -> tuple[float, float]:
        """The searched ``|k|`` window in cycles per camera pixel."""
        if self.period_lr is None:
            return (0.08, 0.45)
        return (1.0 / (self.period_lr * (1.0 + self.period_tolerance)),
                min(0.5, 1.0 / (self.period_lr * (1.0 - self.period_tolerance))))


class ModelParams(_Strict):
    """The network (shared by both training stages)."""

    backbone: Literal["unet"] = "unet"
    upsample: Literal["icnr", "pixel_shuffle", "resize_conv"] = Field(
        "resize_conv",
        description="camera grid -> model grid: sub-pixel convolution with ICNR init (no "
        "checkerboard at start), plain sub-pixel convolution (for ablation), or "
        "bilinear resize + convolution",
    )
    unet_upsample: Literal["transpose", "resize_conv"] = Field(
        "transpose",
        description="the U-Net decoder's 2x up-sampling: 2x2 stride-2 transposed convolution "
        "(leaves a grid at its strides in real-data emitters) or bilinear resize + 3x3 convolution "
        "(no grid); default = what models saved before this option had",
    )
    rescale: int = Field(2, ge=1, le=8, description="model grid = rescale x the camera grid")
    width: int = Field(32, ge=4, le=512, description="channels of the first U-Net level")
    depth: int = Field(3, ge=1, le=6, description="U-Net down-sampling levels")
    wiener_input: bool = Field(
        True, description="the network also reads the classical Wiener SIM image of its input "
        "(same pattern estimate; simuq_core/baselines/wiener_jax.py)")
    wiener_w: float = Field(0.05, gt=0.0, le=10.0, description="Wiener parameter of that input")
    psf_size: int | None = Field(None, ge=3, le=129, description="odd, model-grid px; null = auto")
    psf_mode: Literal["per_sample", "shared"] = Field(
        "per_sample", description="one PSF per sample (predicted) or one learned PSF for all"
    )
    background: bool = Field(True, description="predict a smooth additive background")
    dropout: float = Field(
        0.0, ge=0.0, lt=0.9, description="dropout rate of decoder / bottleneck / model-grid features "
        "in training; > 0 enables MC-dropout epistemic uncertainty (simuq_core/uncertainty/epistemic.py)")
    dropout_at: list[Literal["feats", "bottleneck", "hr", "mid"]] = Field(
        ["feats", "bottleneck", "hr"], min_length=1,
        description="where dropout masks features: feats (U-Net output, camera grid), bottleneck "
        "(the pooled / background heads' input), hr (model-grid features right before the output "
        "and log-variance heads), mid (the U-Net bottleneck as its decoder reads it)")
    optics: OpticsPrior = OpticsPrior()
    light_pattern: LightPatternParams = LightPatternParams()

    @model_validator(mode="after")
    def _odd_psf(self) -> ModelParams:
        if self.psf_size is not None and self.psf_size % 2 == 0:
            raise ValueError(f"psf_size must be odd, got {self.psf_size}")
        if len(set(self.dropout_at)) != len(self.dropout_at):
            raise ValueError(f"dropout_at lists a site twice: {self.dropout_at}")
        return self


class TrainParams(_Strict):
    """One training run (the ``train_selfsup`` / ``train_sup`` sections)."""

    seed: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1, le=4096)
    epochs: int = Field(40, ge=1, le=100000)
    lr: float = Field(1e-3, gt=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, lt=1.0)
    warmup_steps: int = Field(50, ge=0, description="linear learning-rate warm-up")
    grad_clip: float = Field(1.0, gt=0.0, description="global-norm gradient clipping")
    mean_first_epochs: int = Field(
        5, ge=0, description="epochs of mean-only loss (variances frozen) before the NLL"
    )
    log_every: int = Field(10, ge=1, description="steps between metrics.csv rows")
    debug_every_epochs: int = Field(10, ge=1)
    n_debug_samples: int = Field(2, ge=1, le=64)
    keep_checkpoints: int = Field(2, ge=1, le=100)
    resume: bool = Field(False, description="continue from the latest checkpoint if present")
    max_val_samples: int | None = Field(None, ge=1, description="cap on val samples per epoch")
    psf_prior_weight: float = Field(1.0, ge=0.0, description="pull of the PSF towards the prior")
    lp_smooth_weight: float = Field(0.0, ge=0.0, description="LP smoothness regulariser")
    freeze: list[str] = Field(
        default_factory=list, description="parameters kept fixed: path prefixes such as "
        "emitter_logvar_head (simuq_core.training.engine.make_optimizer)")
    resim_epochs: int = Field(
        0, ge=0, le=10000, description="self-supervised: then epochs of the emitter-std fit on "
        "re-simulated frames (only the emitter variance head trains; docs/design.md §5.15); 0 = off")
    resim_lr: float = Field(2e-3, gt=0.0, lt=1.0, description="learning rate of the emitter-std fit")
    gt_norm: Literal["none", "minmax", "minmax_full", "minmax_per_channel"] = Field(
        "none", description="supervised GT normalisation (train_sup only)"
    )


class ExportDebugParams(_Strict):
    """The ``export_debug`` stage: debug artifacts of a few fixed test samples."""

    seed: int = Field(0, ge=0, description="seeds the choice of test samples")
    n_samples: int = Field(4, ge=1, le=256)


class CalibrateParams(_Strict):
    """The ``calibrate`` stage: the metric suite, curves and recalibration on the test split."""

    n_bins: int = Field(15, ge=2, le=200, description="calibration-curve / ENCE bins")
    binning: Literal["equal_count", "log"] = "equal_count"
    min_count: int = Field(30, ge=1, description="minimum pixels per bin")
    n_bootstrap: int = Field(200, ge=10, le=10000)
    pit_bins: int = Field(20, ge=2, le=200)
    seed: int = Field(0, ge=0)


class PredictParams(_Strict):
    """The ``predict`` stage / command: a trained model on any 9-frame stacks."""

    tile: int | None = Field(
        None, ge=8, description="tile size in camera pixels; null = the training crop size"
    )
    overlap: int = Field(8, ge=0, description="overlap between tiles in camera pixels")
    tile_margin: int = Field(
        0, ge=0, description="camera px next to a tile's shared edges that get blending weight 0 "
        "(< overlap/2): a tile's edge, where its emitter is undetermined, never enters the maps")
    batch_size: int = Field(8, ge=1, le=1024, description="tiles per forward pass")
    mc_passes: int = Field(
        0, ge=0, le=256, description="MC-dropout passes for the epistemic / total std maps of a model "
        "trained with dropout (each costs one network pass; 0 = the deterministic network, whose OOD "
        "check uses the raw-frame misfit and the input statistics)")
    context: Literal["auto", "image", "crops", "tile"] = Field(
        "auto", description="GroupNorm statistics / PSF features of a tiled image: pooled over "
        "the image, the mean of tile-sized crops' own (for models trained or fine-tuned on crops "
        "of the tile size), or each tile its own (simuq_core/inference/predictor.py TiledPredictor); auto = "
        "crops for a fine-tuned model, image otherwise")
    norm_percentile: float = Field(
        99.9, gt=50.0, le=100.0, description="scale = this percentile of (raw - offset)"
    )
    norm_offset: float | None = Field(
        None, description="camera offset subtracted first; null = read from metadata or 0"
    )
    wiener: bool = Field(
        False, description="also write the classical Wiener SIM image and its exact noise std "
        "(options from the baseline section; w = its first candidate unless wiener_w is set)"
    )
    wiener_w: float | None = Field(None, gt=0.0, description="Wiener parameter for predict")
    frame_order: Literal["angle_major", "phase_major"] = Field(
        "angle_major", description="order of the raw frames (phase_major: frame = n_angles·phase + "
        "angle; reordered to angle-major on reading)")
    otf_file: str | None = Field(None, description="measured radial OTF for the blind pattern search "
                                 "(microscope.otf_file); null = Airy")
    period_hint: float | None = Field(None, gt=2.0, lt=100.0, description="blind pattern search only "
                                      "within 5 % of this period (camera px; microscope.pattern_period_px)")
    equalize_frames: bool = Field(
        False, description="divide every frame by its relative mean intensity over the field "
        "(simuq_core.realdata.normalise.frame_gains); must match the model's finetune.equalize_frames")

    @model_validator(mode="after")
    def _margin_inside_overlap(self) -> PredictParams:
        if self.tile_margin and 2 * self.tile_margin >= self.overlap:
            raise ValueError(f"tile_margin {self.tile_margin} must be below overlap/2 "
                             f"(overlap {self.overlap} camera px)")
        return self


class BaselineParams(_Strict):
    """The ``baseline`` stage: classical generalised Wiener SIM (:mod:`simuq_core.baselines.wiener`)
    with simuq's pattern estimate and the ``model`` section's optics."""

    wiener_w: list[float] = Field(
        [0.005, 0.01, 0.02, 0.05, 0.1, 0.2], min_length=1,
        description="Wiener parameter candidates; the one with the best val-split PSNR is used",
    )
    apodization: Literal["none", "triangle", "cosbell", "otf"] = "cosbell"
    apodization_cutoff: float = Field(1.0, gt=0.0, le=2.0,
                                      description="fraction of the extended support 2NA/λ + |k|")
    apodization_bend: float = Field(1.0, gt=0.0, le=4.0)
    attenuation_strength: float = Field(0.0, ge=0.0, le=1.0, description="OTF notch depth; 0 = off")
    attenuation_fwhm: float = Field(0.075, gt=0.0, description="notch FWHM, cycles per camera px")
    edge_taper: float = Field(0.0, ge=0.0, description="border fade width, camera px")

    @field_validator("wiener_w")
    @classmethod
    def _positive_w(cls, v: list[float]) -> list[float]:
        if any(w <= 0 for w in v):
            raise ValueError(f"every Wiener parameter must be > 0, got {v}")
        return v


class QualityParams(_Strict):
    """The ``quality`` stage: every reconstruction scored side by side on larger simulated stacks
    (the ``simulate`` instrument and objects, ``size``² camera pixels)."""

    seed: int = Field(1, ge=0)
    n_samples: int = Field(8, ge=1, le=256, description="scored stacks per photon level")
    n_val: int = Field(4, ge=1, le=256,
                       description="further stacks per level on which the Wiener parameter is chosen")
    size: int = Field(128, ge=16, le=2048, description="camera pixels per side")
    photon_factors: list[float] = Field(
        [1.0, 0.1], min_length=1, description="photon budgets relative to simulate.noise"
    )
    n_panel: int = Field(1, ge=0, le=8, description="samples drawn in the figure panel")

    @field_validator("photon_factors")
    @classmethod
    def _positive_factors(cls, v: list[float]) -> list[float]:
        if any(f <= 0 for f in v) or len(set(v)) != len(v):
            raise ValueError(f"photon factors must be distinct and > 0, got {v}")
        return v


class EpistemicParams(_Strict):
    """Epistemic uncertainty and the out-of-distribution check (``epistemic`` section; read by the
    ``epistemic`` report stage and by ``predict``)."""

    n_samples: int = Field(
        8, ge=2, le=256, description="MC-dropout forward passes per model (a model trained without "
        "dropout contributes one deterministic member; an ensemble pools every member's passes)")
    seed: int = Field(0, ge=0, description="seeds the dropout masks")
    ood_percentile: float = Field(
        99.0, gt=50.0, lt=100.0, description="an input whose OOD score exceeds this percentile of "
        "the in-distribution val split is flagged")
    n_figure_samples: int = Field(3, ge=1, le=16, description="OOD samples in the figure")


class FinetuneParams(_Strict):
    """The ``finetune`` section: self-supervised fine-tuning of a trained model on real raw
    acquisitions (:mod:`simuq_core.workflows.finetune`; ``pipelines/real/params.yaml``)."""

    inputs: list[str] = Field(
        default_factory=list, description="raw stacks (TIFF / OME / MRC / DV): files, folders or "
        "globs relative to the repo root; the stage's --input overrides")
    seed: int = Field(0, ge=0, description="crop plan, validation split")
    batch_size: int = Field(8, ge=1, le=4096, description="crops per step (all processes)")
    epochs: int = Field(10, ge=1, le=100000)
    crops_per_epoch: int = Field(512, ge=1, description="random crops drawn per epoch")
    crop: int | None = Field(None, ge=8, le=4096,
                             description="crop side, camera px; null = the model's training crop")
    lr: float = Field(1e-4, gt=0.0, lt=1.0, description="lower than training: the model is trained")
    weight_decay: float = Field(1e-4, ge=0.0, lt=1.0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    mean_first_epochs: int = Field(0, ge=0, description="mean-only epochs first (the model has a mean)")
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1, le=100)
    resume: bool = False
    psf_prior_weight: float = Field(1.0, ge=0.0)
    lp_smooth_weight: float = Field(0.0, ge=0.0)
    var_refit_epochs: int = Field(
        0, ge=0, le=1000, description="then re-fit only the variance heads (log-variance heads and the "
        "camera-noise coefficients) for this many epochs, with a fresh optimiser: the variance the "
        "pre-trained misfit inflated follows the final residual (0 = off)")
    var_refit_lr: float = Field(2e-3, gt=0.0, lt=1.0, description="learning rate of the variance re-fit")
    resim_epochs: int = Field(
        0, ge=0, le=1000, description="then epochs of the emitter-std fit on re-simulated frames (the "
        "network's own reconstruction, re-imaged with its pattern, PSF and camera noise: a ground truth "
        "on the lab's structures; only the emitter variance head trains); 0 = off")
    resim_lr: float = Field(2e-3, gt=0.0, lt=1.0, description="learning rate of the emitter-std fit")
    freeze: list[str] = Field(
        default_factory=list, description="parameters the fine-tuning leaves as pre-trained: path "
        "prefixes, e.g. [emitter_logvar_head] (the emitter std of the pre-trained model)")
    optics: OpticsPrior | None = Field(
        None, description="the acquisitions' microscope (NA, emission λ, pixel) for the blind pattern "
        "search and the resolution limits; null = the model's optics. A file's own pixel size and "
        "emission wavelength win when it records them")
    period_hint: float | None = Field(None, gt=2.0, lt=100.0,
                                      description="expected pattern period (camera px); null = blind")
    frame_order: Literal["angle_major", "phase_major"] = "angle_major"
    otf_file: str | None = Field(None, description="measured radial OTF for the blind pattern search "
                                 "(microscope.otf_file); null = Airy")
    norm_offset: float | None = Field(None, description="camera offset; null = TIFF metadata, else 0")
    norm_percentile: float = Field(99.9, gt=50.0, le=100.0)
    equalize_frames: bool = Field(
        False, description="divide every frame by its relative mean intensity over the whole field "
        "(per-angle illumination differences the mean-1 light pattern cannot fit)")
    strict: bool = Field(False, description="stop at the first bad file instead of skipping it")
    skip_unknown_pattern: bool = Field(
        True, description="leave out acquisitions whose pattern is detected at no angle (their crops "
        "would train against a wrong forward model)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="held-out share of the acquisitions")
    val_files: list[str] = Field(default_factory=list, description="held-out files (overrides the fraction)")
    val_split: Literal["auto", "files", "strips"] = Field(
        "auto", description="files: whole acquisitions held out (val_files / val_fraction); strips: a "
        "strip of every acquisition, on an edge that holds structure (for views of one field: SNR "
        "levels, repeats); auto: strips for a single acquisition, files otherwise")
    val_block_fraction: float = Field(0.25, gt=0.0, lt=1.0,
                                      description="held-out strip, share of the side (val_split strips)")
    val_tile: int = Field(64, ge=8, le=1024, description="side of the validation tiles (camera px)")
    max_val_tiles: int = Field(16, ge=1, le=4096)
    noise_band_margin: float = Field(1.15, ge=1.0, le=2.0,
                                     description="noise estimate from |f| > margin × OTF cut-off")
    num_threads: int = Field(2, ge=0, le=64, description="crop reader threads (0: inline)")
    prefetch: int = Field(16, ge=1, le=4096, description="crops read ahead")

    def train_params(self) -> TrainParams:
        """The engine's settings (no debug artefacts: there is no ground truth to show)."""
        return TrainParams(seed=self.seed, batch_size=self.batch_size, epochs=self.epochs, lr=self.lr,
                           weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           grad_clip=self.grad_clip, mean_first_epochs=self.mean_first_epochs,
                           log_every=self.log_every, debug_every_epochs=self.epochs,
                           keep_checkpoints=self.keep_checkpoints, resume=self.resume,
                           psf_prior_weight=self.psf_prior_weight, lp_smooth_weight=self.lp_smooth_weight,
                           freeze=self.freeze)


def _default_ood_shifts() -> dict[str, dict[str, Any]]:
    """The default OOD shifts (partial ``simulate`` overrides), one per axis a real user meets."""
    return {
        # Smooth objects only: no filaments, tubes or rings; blobs 150-400 nm (training: 30-120 nm).
        "objects_blobs": {"objects": {"curves": [0, 0], "tubes": [0, 0], "rings": [0, 0],
                                      "blobs": [2, 8], "blob_sigma_nm": [150.0, 400.0]}},
        # Dense texture: ~4x the filaments, tubes and rings, plus 150-300 sub-diffraction puncta
        # (a kind absent from training; ~40-75 dots per µm² at the default 2 µm crop).
        "objects_dense": {"objects": {"curves": [12, 24], "tubes": [2, 6], "rings": [3, 8],
                                      "puncta": [150, 300]}},
        # Gaussian PSF 1.3x as wide as the default Airy PSF (FWHM 0.5145 λ/NA = 193.1 nm at NA 1.3,
        # λ 488 nm; 1.3 x 193.1 = 251 nm): wrong shape and wrong width for the model's prior.
        "psf_gaussian": {"psf": {"kind": "gaussian", "gaussian_fwhm_nm": 251.0}},
        # Lower NA objective (1.1 instead of 1.3): Airy PSF 18% wider, OTF cut-off 15% lower.
        "psf_na": {"psf": {"na": 1.1}},
        # Finer pattern (period 4 instead of 5 camera px; still inside the model's period search
        # window 5 x (1 ± 0.3)) with a weaker modulation 0.5 instead of 0.8.
        "pattern": {"pattern_period_lr": 4.0, "pattern_k_frac": None, "modulation": 0.5},
        # 10x fewer photons than the dimmest training sample (training: log-uniform 20-200 photons,
        # background scaled alike, 0.5-5): 2 photons on structure, background 0.05, no range.
        "photons_low": {"noise": {"photons": 2.0, "photon_range": 1.0, "background_photons": 0.05}},
        # Every shift at once. Blobs and dense texture merge as large blobs under dense filaments and
        # puncta; the PSF is Gaussian at 1.3x the Airy FWHM of the NA 1.1 objective
        # (1.3 x 228.2 nm = 297 nm), so the lower NA also widens it.
        "all": {
            "objects": {"curves": [12, 24], "tubes": [2, 6], "rings": [3, 8], "blobs": [1, 4],
                        "blob_sigma_nm": [150.0, 400.0], "puncta": [150, 300]},
            "psf": {"kind": "gaussian", "na": 1.1, "gaussian_fwhm_nm": 297.0},
            "pattern_period_lr": 4.0, "pattern_k_frac": None, "modulation": 0.5,
            "noise": {"photons": 2.0, "photon_range": 1.0, "background_photons": 0.05},
        },
    }


class OODParams(_Strict):
    """The ``ood`` section: test splits shifted away from the training distribution
    (:mod:`simuq_core.simulation.ood`). Each shift is a partial ``simulate`` override merged recursively over
    the ``simulate`` section; the camera geometry and the split sizes stay those of ``simulate``
    / ``ood`` so a trained model runs on every split."""

    seed: int = Field(1000, ge=0, description="OOD objects differ from the in-distribution test split")
    n_test: int = Field(32, ge=1, le=100000, description="samples per OOD split")
    shifts: dict[str, dict[str, Any]] = Field(
        default_factory=_default_ood_shifts,
        description="shift name (folder name) -> partial simulate override",
    )

    @field_validator("shifts")
    @classmethod
    def _shift_names_and_fixed_keys(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Fixed here (not only when the OOD stage resolves the shifts), so `-S` typos fail early.
        fixed = {"lr_h": "camera geometry", "lr_w": "camera geometry", "hr_factor": "camera geometry",
                 "n_angles": "frame layout", "n_phases": "frame layout", "seed": "set by ood.seed",
                 "n_test": "set by ood.n_test", "n_samples": "only the test split is simulated",
                 "n_val": "only the test split is simulated"}
        for name, override in v.items():
            if not name or not name.isascii() or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"shift name {name!r} must be a folder name: letters, digits, _ or -")
            if bad := sorted(set(override) & set(fixed)):
                raise ValueError(
                    f"ood.shifts.{name}.{bad[0]} cannot be shifted ({fixed[bad[0]]}: a model trained "
                    "on the simulate section must run on every OOD split)")
        return v


class Params(_Strict):
    """The whole ``params.yaml``: one section per stage, plus the shared sections."""

    microscope: MicroscopeParams | None = None
    simulate: SimulateParams
    uq: UQParams = UQParams()
    model: ModelParams = ModelParams()
    train_selfsup: TrainParams = TrainParams()
    train_sup: TrainParams = TrainParams()
    export_debug: ExportDebugParams = ExportDebugParams()
    calibrate: CalibrateParams = CalibrateParams()
    predict: PredictParams = PredictParams()
    baseline: BaselineParams = BaselineParams()
    quality: QualityParams = QualityParams()
    finetune: FinetuneParams = FinetuneParams()
    epistemic: EpistemicParams = EpistemicParams()
    ood: OODParams = OODParams()


