"""Uncertainty: how the predicted variances are carried, and what they miss.

- :mod:`.propagation`: aleatoric variance through the forward model, the camera noise model
  (Poisson-Gaussian ``a·rec + b``), log-variance bounds;
- :mod:`.frame_covariance`: the cross-frame covariance of the SIM residual and its likelihood;
- :mod:`.epistemic`: combining member predictions (MC dropout, ensembles), the OOD score.
"""
