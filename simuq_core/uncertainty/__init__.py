"""Uncertainty: how the predicted variances are carried, and what they miss.

- :mod:`.propagation`: aleatoric variance through the forward model and the camera noise model
  (Poisson-Gaussian ``a·rec + b``);
- :mod:`.logvar_bounds`: bounded log-variances of the variance heads and their bias init;
- :mod:`.monte_carlo`: the Monte-Carlo reference the propagation rules are checked against;
- :mod:`.frame_covariance`: the cross-frame covariance of the SIM residual (general light pattern,
  a prediction's covariance), built on :mod:`.frame_pairs` (frame-pair layout) and
  :mod:`.lr_convolution` (LR-sampled convolutions on one small FFT grid);
- :mod:`.parametric_covariance`: the same covariance for the parametric pattern, the training path;
- :mod:`.frame_likelihood`: the F-dimensional Gaussian NLL of the residual under that covariance;
- :mod:`.epistemic`: combining member predictions (MC dropout, ensembles), the OOD score.
"""
