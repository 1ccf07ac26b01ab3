"""Classical (non-learned) SIM reconstructions that simuq's networks are compared with.

- :mod:`.wiener`: generalised Wiener SIM in NumPy, with its exact noise variance;
- :mod:`.wiener_jax`: the same reconstruction in JAX, the network's optional input.
"""

from simuq_core.baselines.wiener import (
    APODIZATIONS,
    DEFAULT_OPTIONS,
    OtfSpec,
    SimReconstruction,
    WienerOptions,
    equal_step_phases,
    estimate_modulation,
    ideal_otf,
    measured_otf,
    otf_values,
    reconstruct_stack,
    wiener_noise_variance,
    wiener_sim,
)

__all__ = [
    "APODIZATIONS",
    "DEFAULT_OPTIONS",
    "OtfSpec",
    "SimReconstruction",
    "WienerOptions",
    "equal_step_phases",
    "estimate_modulation",
    "ideal_otf",
    "measured_otf",
    "otf_values",
    "reconstruct_stack",
    "wiener_noise_variance",
    "wiener_sim",
]
