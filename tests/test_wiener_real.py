"""Classical Wiener SIM on the shipped real TIRF-SIM stack, with the blind pattern estimate."""

from pathlib import Path

import numpy as np

from simuq_core.baselines import WienerOptions, equal_step_phases, ideal_otf, wiener_sim
from simuq_core.evaluation.resolution import decorrelation_resolution
from simuq_core.evaluation.synthetic import widefield
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import estimate_pattern_blind
from simuq_core.realdata.reader import read_acquisition

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rdl_sim_microtubules" / "MT.mrc"
NA, EMISSION = 1.47, 525.0  # effective NA of the measured OTF (the stack's README)


def test_wiener_sim_resolves_the_real_stack_beyond_widefield():
    """The pattern sits at 99 % of the cut-off. With the blind estimate (periods within 1 % of
    2.887 px), the Wiener SIM image resolves finer than widefield by decorrelation analysis.
    Measured: 102–123 nm for w = 0.05–0.5 against 228 nm for the bilinear widefield (its
    analysis stopped at the camera Nyquist); the theoretical limits are 179 nm (λ/2NA) and about
    90 nm for SIM. Required: below 0.7 × widefield and no finer than the SIM limit."""
    acq = read_acquisition(EXAMPLE)
    x = acq.frames[0].astype(np.float64)
    x = (x - x.min()) / np.percentile(x - x.min(), 99.9)
    cutoff = otf_cutoff_cycles_per_px(NA, EMISSION, acq.pixel_nm)
    est = estimate_pattern_blind(x[None], 3, cutoff)
    assert np.all(np.abs(np.asarray(est.period_px) / 2.887 - 1) < 0.01), est.period_px
    k = np.asarray(est.estimate.k[0], np.float64)
    phases = equal_step_phases(np.asarray(est.estimate.phase[0]), 3)
    m = np.clip(np.asarray(est.modulation, np.float64), 0.3, 1.0)
    sim = wiener_sim(x, k, phases, m, ideal_otf(NA, EMISSION, acq.pixel_nm), 2,
                     WienerOptions(wiener_w=0.2, apodization="cosbell"))
    pixel = acq.pixel_nm / 2
    res_sim = decorrelation_resolution(sim, pixel).resolution_nm
    res_wf = decorrelation_resolution(widefield(x[None], 2)[0], pixel, 0.25).resolution_nm
    sim_limit = EMISSION / (2 * NA * (1 + np.linalg.norm(k, axis=-1).min() / cutoff))
    assert sim_limit * 0.9 < res_sim < 0.7 * res_wf, (res_sim, res_wf, sim_limit)
